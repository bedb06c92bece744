"""dask.distributed's ``Semaphore`` as a benchmark implementation (see slotkeeper.bench.impls).

``url`` is the scheduler address (tcp://host:port); every process connects its own Client. The
slot count travels in a dask ``Variable`` so that other processes build the semaphore with the
same ``max_leases`` (dask rejects inconsistent ones).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from typing import Any


class DaskImpl:
    label = "dask"

    def __init__(self, url: str, namespace: str) -> None:
        from distributed import Client

        self.client = Client(url, set_as_default=True)
        self.ns = namespace

    def _name(self, name: str) -> str:
        return f"{self.ns}-{name}"

    def create(self, name: str, slots: int, ttl: float | None = None) -> None:
        from distributed import Variable

        Variable(self._name(name) + "-slots", client=self.client).set(slots)

    def hold(self, name: str, ttl: float | None = None) -> AbstractContextManager[Any]:
        from distributed import Semaphore, Variable

        slots = int(Variable(self._name(name) + "-slots", client=self.client).get(timeout=60))
        sem: AbstractContextManager[Any] = Semaphore(max_leases=slots, name=self._name(name))
        return sem

    def remaining_ms(self, name: str) -> int | None:
        return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


class DaskScheduler:
    """A dask scheduler in its own process on a free loopback port."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def __enter__(self) -> str:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-dashboard",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self.address
            time.sleep(0.1)
        raise RuntimeError("the dask scheduler did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
