"""Fixtures: private redis-server processes (session-wide and per-test), unique namespaces."""

from __future__ import annotations

import os
import sys
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
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:10]


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
