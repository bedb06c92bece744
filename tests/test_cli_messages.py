"""What the CLI says: one line per error with advice a shell user can follow, contradicting flags
refused, no live-view hints on a single view, JSON without float noise, and how `run` passes the
limit names to its command."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from slotkeeper.broker.client import Broker
from slotkeeper.broker.errors import LimitNotFound
from slotkeeper.cli.main import cli
from tests.support.redisproc import RedisProc

Run = Callable[..., Result]
SLOTKEEPER = str(Path(sys.executable).parent / "slotkeeper")


@pytest.fixture
def sk(redis_server: RedisProc, namespace: str) -> Run:
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(
            cli,
            ["--url", redis_server.url, "--namespace", namespace, *args],
            catch_exceptions=False,
        )

    return run


@pytest.fixture
def broker(redis_server: RedisProc, namespace: str) -> Broker:
    return Broker.from_url(redis_server.url, namespace)


def stderr_line(r: Result, code: int = 1) -> str:
    """The one line an error prints (exit ``code``), asserting it is exactly one."""
    assert r.exit_code == code, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {r.stderr!r}"
    return lines[0]


@pytest.mark.parametrize(
    "args", [("show", "nope"), ("rm", "nope"), ("reset", "nope", "--yes")], ids=lambda a: a[0]
)
def test_a_missing_limit_gets_cli_advice_not_sdk_advice(
    sk: Run, namespace: str, args: tuple[str, ...]
) -> None:
    line = stderr_line(sk(*args))
    assert line.startswith("error: limit 'nope' does not exist")
    assert f"`slotkeeper --namespace {namespace} create nope --slots N`" in line
    assert "default_slots" not in line and "strict=False" not in line


def test_set_on_a_missing_limit_names_set_create(sk: Run, namespace: str) -> None:
    line = stderr_line(sk("set", "nope", "--slots", "2"))
    assert f"`slotkeeper --namespace {namespace} set nope --slots N --create`" in line


def test_the_sdk_keeps_its_advice_and_the_type(broker: Broker) -> None:
    with pytest.raises(LimitNotFound) as info:
        broker.delete_limit("nope")
    assert "default_slots=N" in str(info.value) and info.value.name == "nope"


def test_show_of_a_template_name_is_one_error_line(sk: Run) -> None:
    line = stderr_line(sk("show", "gpu:{worker}"))
    assert line.startswith("error: limit name 'gpu:{worker}'") and "template" in line


def test_show_of_an_unreadable_limit_is_one_error_line(
    sk: Run, broker: Broker, redis_server: RedisProc
) -> None:
    sk("create", "wrongtype", "--slots", "1")
    redis_server.client().set(broker.keys.limit("wrongtype")[1], "x")
    line = stderr_line(sk("show", "wrongtype"))
    assert "'wrongtype'" in line and "WRONGTYPE" in line


def test_enable_and_disable_together_is_a_usage_error(sk: Run, broker: Broker) -> None:
    sk("create", "x", "--slots", "1")
    for flags in (("--enable", "--disable"), ("--disable", "--enable")):
        r = sk("set", "x", *flags)
        assert r.exit_code == 2 and "--enable and --disable" in r.stderr, r.output
    assert broker.snapshot("x").config.enabled  # untouched
    assert sk("set", "x", "--disable").exit_code == 0
    assert not broker.snapshot("x").config.enabled
    assert sk("set", "x", "--enable").exit_code == 0 and broker.snapshot("x").config.enabled


def test_top_once_has_no_ctrl_c_hint_but_the_live_view_does(sk: Run) -> None:
    sk("create", "x", "--slots", "1")
    once = sk("top", "--once")
    assert once.exit_code == 0 and "x" in once.stdout
    assert "Ctrl-C" not in once.stdout
    live = sk("top", "--iterations", "2", "--interval", "0.1")
    assert live.exit_code == 0 and "Ctrl-C quits" in live.stdout


def test_json_floats_are_rounded(sk: Run, broker: Broker, redis_server: RedisProc) -> None:
    sk("create", "x", "--slots", "1")
    # a wait histogram (1 wait in 1-5 ms, 2 in 5-10 ms) whose p95 is 0.009624999999999998 in
    # binary floating point: written as counters, as the scripts would have
    redis_server.client().hset(broker.keys.limit("x")[0], mapping={"w2": 1, "w3": 2})
    outputs = [
        sk("--json", "show", "x").stdout,
        sk("--json", "ls").stdout,
        sk("top", "--once", "--json").stdout,
    ]
    for out in outputs:
        assert "0.009625" in out, out
        assert "99999" not in out, out
    assert json.loads(outputs[0])["counters"]["wait_p95_seconds"] == 0.009625


def test_run_passes_limit_names_one_per_line(redis_server: RedisProc, namespace: str) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    b.create_limit("a,b", 1)  # commas are allowed in names: a comma-joined list would be ambiguous
    b.create_limit("c", 1)
    p = subprocess.run(
        [
            SLOTKEEPER,
            "--url",
            redis_server.url,
            "--namespace",
            namespace,
            "run",
            "a,b",
            "c",
            "--",
            sys.executable,
            "-c",
            "import os; print(repr(os.environ['SLOTKEEPER_LEASE_NAMES']))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == repr("a,b\nc")
