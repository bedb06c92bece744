"""Prefect 3 global concurrency limits as a benchmark implementation, and a runner for them.

Prefect pins its own dependency set, so it runs in a separate virtualenv (created on first use under
``~/.cache/slotkeeper-bench/prefect-venv`` with ``prefect==3.8.8 fastapi==0.154.0`` and this
repository installed editable). ``python -m tests.benchmarks.peer_prefect --out FILE`` (inside that
venv) starts Prefect's own API server on loopback with SQLite in a temporary PREFECT_HOME, runs
the workloads through ``prefect.concurrency.sync.concurrency`` and writes their numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

PREFECT_REQUIREMENTS = ["prefect==3.8.8", "fastapi==0.154.0"]
VENV = Path.home() / ".cache" / "slotkeeper-bench" / "prefect-venv"
ROOT = Path(__file__).resolve().parents[2]


def _quiet_env() -> None:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


class _Hold:
    """A reusable ``with`` around Prefect's one-shot ``concurrency()`` context manager."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._stack: list[Any] = []

    def __enter__(self) -> None:
        from prefect.concurrency.sync import concurrency

        cm = concurrency(self.name, occupy=1)
        cm.__enter__()
        self._stack.append(cm)

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.pop().__exit__(et, ev, tb)


class PrefectImpl:
    label = "prefect"

    def __init__(self, url: str, namespace: str) -> None:
        os.environ["PREFECT_API_URL"] = url
        _quiet_env()
        self.ns = namespace

    def _name(self, name: str) -> str:
        return f"{self.ns}-{name}"

    def create(self, name: str, slots: int, ttl: float | None = None) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

        with get_client(sync_client=True) as client:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=self._name(name), limit=slots)
            )

    def hold(self, name: str, ttl: float | None = None) -> _Hold:
        return _Hold(self._name(name))

    def remaining_ms(self, name: str) -> int | None:
        return None

    def close(self) -> None:
        pass


class PrefectServer:
    """``prefect server start`` on a free loopback port, SQLite in a temporary PREFECT_HOME."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="sk-prefect-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def __enter__(self) -> str:
        env = dict(os.environ)
        env.update(
            {
                "PREFECT_HOME": str(self.home),
                "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.home}/prefect.db",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_UI_ENABLED": "false",
                "PREFECT_LOGGING_LEVEL": "WARNING",
            }
        )
        env.pop("PREFECT_API_URL", None)
        log = open(self.home / "server.log", "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    "prefect server exited: " + (self.home / "server.log").read_text()[-2000:]
                )
            try:
                with urllib.request.urlopen(self.api_url + "/health", timeout=2) as r:
                    if r.status == 200:
                        os.environ["PREFECT_HOME"] = str(self.home)
                        return self.api_url
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError("prefect server did not answer /api/health within 180 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def ensure_venv() -> Path:
    """The Prefect virtualenv's python (created and filled on first use)."""
    py = VENV / "bin" / "python"
    ok = (
        py.exists()
        and subprocess.run(
            [str(py), "-c", "import prefect, slotkeeper.bench"], capture_output=True
        ).returncode
        == 0
    )
    if not ok:
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", *PREFECT_REQUIREMENTS, "-e", str(ROOT)],
            check=True,
        )
    return py


def main() -> None:
    from slotkeeper.bench.workloads import w1_uncontended, w2_contended, w3_handoff

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--w1-cycles", type=int, default=100)
    ap.add_argument("--w2-duration", type=float, default=0.0, help="0 = skip W2")
    ap.add_argument("--w3-rounds", type=int, default=30)
    a = ap.parse_args()
    spec = "tests.benchmarks.peer_prefect:PrefectImpl"
    out: dict[str, Any] = {"version": __import__("prefect").__version__}
    _quiet_env()
    with PrefectServer() as api:
        os.environ["PREFECT_API_URL"] = api
        ns = f"skb{os.getpid()}"
        out["W1"] = w1_uncontended(spec, api, ns + "w1", a.w1_cycles, warmup=5)
        if a.w2_duration > 0:
            out["W2"] = {
                f"hold_{h:g}ms": w2_contended(spec, api, ns + "w2", h, a.w2_duration)
                for h in (0.0, 5.0)
            }
        # the waiter's first request is an HTTP round trip: give it time to be waiting
        out["W3"] = w3_handoff(spec, api, ns + "w3", a.w3_rounds, settle_s=0.5)
    Path(a.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
