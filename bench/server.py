"""A private redis-server for one benchmark run: a free loopback port, no persistence."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from slotkeeper.broker import embedded
from slotkeeper.broker.errors import BrokerUnavailable


def redis_server_binary() -> str:
    """``redis-server`` on PATH, else the one the ``embedded`` extra ships."""
    return shutil.which("redis-server") or embedded.find_binary()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """``with PrivateRedis() as url:`` runs a throw-away redis-server on 127.0.0.1:<free port>."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or redis_server_binary()
        self.dir = Path(tempfile.mkdtemp(prefix="sk-bench-"))
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> str:
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(self.dir / "redis.log"),
            "--slowlog-max-len",
            "100000",
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerUnavailable(
                    f"redis-server ({self.binary}) exited at start; see {self.dir / 'redis.log'}"
                )
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
            try:
                client.ping()
                return self.url
            except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                time.sleep(0.01)
            finally:
                client.close()
        self.stop()
        raise BrokerUnavailable("the private redis-server did not answer PING in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
