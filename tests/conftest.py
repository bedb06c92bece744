"""Fixtures: private redis-server processes (session-wide and per-test), unique namespaces."""

from __future__ import annotations

import os
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redisproc import RedisProc

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProc]:
    """One private Redis for the session; tests isolate themselves with unique namespaces."""
    with RedisProc(tcp=True) as r:
        yield r


@pytest.fixture
def fresh_redis() -> Iterator[RedisProc]:
    """A private Redis for one test (restart / kill / pause it freely)."""
    with RedisProc(tcp=True) as r:
        yield r


@pytest.fixture
def namespace() -> Iterator[str]:
    """A unique namespace. Afterwards the runtimes a test left open in it are closed (their
    threads joined), in the background so the next test does not wait: otherwise the threads
    of some hundreds of tests pile up in the one pytest process and slow all that follow."""
    ns = "t" + uuid.uuid4().hex[:10]
    yield ns
    from slotkeeper.runtime import live_runtimes

    left = [rt for rt in live_runtimes() if rt.namespace == ns and rt.pid == os.getpid()]

    def close_all() -> None:
        for rt in left:
            try:
                rt.close(release=False)
            except Exception:  # noqa: BLE001 - a test's server may be gone already
                pass

    if left:
        threading.Thread(target=close_all, name=f"close-{ns}", daemon=True).start()


@pytest.fixture
def limiter(redis_server: RedisProc, namespace: str):  # type: ignore[no-untyped-def]
    from slotkeeper import Limiter

    return Limiter(redis_server.url, namespace, ttl=5.0)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches the user's embedded broker or inherits a SLOTKEEPER_URL by accident."""
    monkeypatch.setenv("SLOTKEEPER_HOME", str(tmp_path / "sk-home"))
    for var in ("SLOTKEEPER_URL", "SLOTKEEPER_NAMESPACE", "SLOTKEEPER_WORKER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


PY = sys.executable
