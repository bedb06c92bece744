"""Errors: one line on stderr, exit 1 (usage 2), never a traceback, never a password."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from slotkeeper.broker.client import Broker
from tests.support.redisproc import RedisProc

CLI = [sys.executable, "-m", "slotkeeper.cli"]
SECRET = "s3cr3t-pw"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize(
    "args", [["ls"], ["show", "x"], ["create", "x", "--slots", "1"], ["top", "--once"], ["export"]]
)
def test_unreachable_redis_one_line_no_password(args: list[str]) -> None:
    url = f"redis://admin:{SECRET}@127.0.0.1:{closed_port()}/0"
    p = run("--url", url, *args)
    assert p.returncode == 1
    assert SECRET not in p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "unreachable" in lines[0]
    assert "***" in lines[0]


def test_password_from_env_is_not_printed(redis_server: RedisProc, namespace: str) -> None:
    env = dict(
        os.environ,
        SLOTKEEPER_URL=f"redis://:{SECRET}@127.0.0.1:{closed_port()}/0",
        SLOTKEEPER_NAMESPACE=namespace,
    )
    p = run("ls", env=env)
    assert p.returncode == 1 and SECRET not in p.stderr + p.stdout


def test_env_configuration(redis_server: RedisProc, namespace: str) -> None:
    Broker.from_url(redis_server.url, namespace).create_limit("from-env", 1)
    env = dict(os.environ, SLOTKEEPER_URL=redis_server.url, SLOTKEEPER_NAMESPACE=namespace)
    p = run("ls", env=env)
    assert p.returncode == 0 and "from-env" in p.stdout


def test_bad_options_and_urls() -> None:
    p = run("--url", "http://example.com", "ls")
    assert p.returncode == 1 and "unsupported URL scheme" in p.stderr
    p = run("--namespace", "bad ns!", "ls")
    assert p.returncode == 1 and "bad namespace" in p.stderr and "Traceback" not in p.stderr
    p = run("create", "x", "--slots", "many")
    assert p.returncode == 2
    p = run("--version")
    assert p.returncode == 0 and "slotkeeper" in p.stdout
    p = run("--help")
    assert p.returncode == 0 and "daemon" in p.stdout and "demo" in p.stdout


def test_console_script_entry_point(redis_server: RedisProc, namespace: str) -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "slotkeeper")
    if not os.path.exists(exe):
        pytest.fail(f"console script missing at {exe}: reinstall with pip install -e .")
    p = subprocess.run(
        [exe, "--url", redis_server.url, "-n", namespace, "ls", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0 and p.stdout.strip() == "[]"
