"""``server start|stop|status`` and the CLI on the embedded broker (no URL configured)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

CLI = [sys.executable, "-m", "slotkeeper.cli"]


def sk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def embedded_cleanup() -> Iterator[None]:
    yield
    sk("server", "stop")


def test_server_lifecycle_and_embedded_use(embedded_cleanup: None) -> None:
    st = json.loads(sk("--json", "server", "status").stdout)
    assert st["running"] is False
    started = sk("server", "start")
    assert started.returncode == 0 and "running" in started.stdout
    st = json.loads(sk("server", "status", "--json").stdout)
    assert st["running"] is True and st["pid"] and st["url"].startswith("unix://")
    # no URL: every command uses the embedded broker
    assert sk("create", "local", "--slots", "2").returncode == 0
    assert [x["name"] for x in json.loads(sk("--json", "ls").stdout)] == ["local"]
    assert sk("run", "local", "--", sys.executable, "-c", "raise SystemExit(4)").returncode == 4
    stopped = sk("server", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert json.loads(sk("--json", "server", "status").stdout)["running"] is False
    assert "not running" in sk("server", "stop").stdout
    # limits survive a restart (AOF); first use starts it again
    assert [x["name"] for x in json.loads(sk("--json", "ls").stdout)] == ["local"]


def test_server_status_notes_a_configured_url(embedded_cleanup: None) -> None:
    p = subprocess.run(
        [*CLI, "--url", "redis://127.0.0.1:1/0", "server", "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0 and "URL is configured" in p.stderr
