"""create / set / ls / show / rm / reset / revoke through click's CliRunner, against a real Redis."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner, Result

from slotkeeper.broker.client import Broker
from slotkeeper.broker.records import QUEUED
from slotkeeper.cli.main import cli
from slotkeeper.limiter import Limiter
from tests.support.redisproc import RedisProc

Run = Callable[..., Result]


@pytest.fixture
def sk(redis_server: RedisProc, namespace: str) -> Run:
    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> Result:
        return runner.invoke(
            cli,
            ["--url", redis_server.url, "--namespace", namespace, *args],
            input=input,
            catch_exceptions=False,
        )

    return run


@pytest.fixture
def broker(redis_server: RedisProc, namespace: str) -> Broker:
    return Broker.from_url(redis_server.url, namespace)


def js(r: Result) -> Any:
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def one_line_error(r: Result, code: int = 1) -> str:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    err = r.stderr.strip()
    assert err, r.output
    return err


def test_create_ls_show_json(sk: Run, broker: Broker) -> None:
    r = sk("create", "gpu:gpu-1", "--slots", "2", "--ttl", "30", "-d", "two cards")
    assert r.exit_code == 0 and "created limit 'gpu:gpu-1'" in r.stdout
    assert sk("create", "group A", "--slots", "5", "--disabled").exit_code == 0
    rows = js(sk("--json", "ls"))
    assert [x["name"] for x in rows] == ["gpu:gpu-1", "group A"]
    g = rows[0]
    assert (g["slots"], g["ttl"], g["enabled"], g["description"], g["used"]) == (
        2,
        30.0,
        True,
        "two cards",
        0,
    )
    assert rows[1]["enabled"] is False
    # per-command --json is the same as the global flag
    assert js(sk("ls", "--json")) == rows
    text = sk("ls").stdout
    assert "gpu:gpu-1" in text and "group A" in text and "two cards" in text
    cfg = js(sk("show", "gpu:gpu-1", "--json"))
    assert cfg["slots"] == 2 and cfg["holders"] == [] and cfg["queue"] == []


def test_show_lists_holders_and_waiters_in_order(
    sk: Run, broker: Broker, redis_server: RedisProc, namespace: str
) -> None:
    sk("create", "db", "--slots", "3")
    lim = Limiter(redis_server.url, namespace, ttl=10)
    a = lim.acquire("db", occupy=2, label="job-a")
    b = lim.acquire("db", label="job-b")
    assert broker.acquire(["db"], "t-low", ttl_ms=30_000, wait=True).status == QUEUED
    assert broker.acquire(["db"], "t-high", ttl_ms=30_000, priority=5, wait=True).status == QUEUED
    d = js(sk("show", "db", "--json"))
    assert d["used"] == 3 and d["leases"] == 2
    holders = {h["lease_id"]: h for h in d["holders"]}
    assert set(holders) == {a.id, b.id}
    assert holders[a.id]["occupy"] == 2 and holders[a.id]["label"] == "job-a"
    assert holders[a.id]["pid"] > 0 and holders[a.id]["host"]
    assert 0 < holders[a.id]["expires_in_seconds"] <= 10
    assert holders[a.id]["age_seconds"] >= 0
    assert [w["ticket_id"] for w in d["queue"]] == ["t-high", "t-low"]  # priority first
    assert [w["position"] for w in d["queue"]] == [1, 2]
    text = sk("show", "db").stdout
    assert a.id in text and "job-a" in text and "t-high" in text
    assert text.index("t-high") < text.index("t-low")
    a.release()
    b.release()


def test_set_changes_fields(sk: Run, broker: Broker) -> None:
    sk("create", "x", "--slots", "1")
    r = sk("--json", "set", "x", "--slots", "4", "--disable", "--ttl", "2.5", "-d", "hi")
    d = js(r)
    assert sorted(d["changed"]) == ["description", "enabled", "slots", "ttl"]
    snap = broker.snapshot("x")
    assert (snap.config.slots, snap.config.enabled, snap.config.ttl_s, snap.config.description) == (
        4,
        False,
        2.5,
        "hi",
    )
    assert "unchanged" in sk("set", "x", "--slots", "4").stdout
    assert sk("set", "x", "--enable").exit_code == 0 and broker.snapshot("x").config.enabled
    assert one_line_error(sk("set", "x"), 2)  # nothing to change: usage error
    err = one_line_error(sk("set", "nope", "--slots", "1"))
    assert "--create" in err
    assert sk("set", "nope", "--slots", "1", "--create").exit_code == 0
    assert broker.snapshot("nope").config.slots == 1


def test_errors_are_one_line_with_exit_codes(sk: Run) -> None:
    sk("create", "dup", "--slots", "1")
    err = one_line_error(sk("create", "dup", "--slots", "1"))
    assert err.startswith("error:") and "already exists" in err and "\n" not in err
    assert "does not exist" in one_line_error(sk("show", "missing"))
    assert one_line_error(sk("create", "neg", "--slots", "-1"), 2)
    assert one_line_error(sk("create", "nos"), 2)  # --slots is required
    assert one_line_error(sk("create", " padded", "--slots", "1"), 2)  # bad input: exit 2
    assert one_line_error(sk("bogus-command"), 2)


def test_rm_refuses_while_held_and_force_needs_confirmation(
    sk: Run, redis_server: RedisProc, namespace: str, broker: Broker
) -> None:
    sk("create", "held", "--slots", "1")
    lease = Limiter(redis_server.url, namespace, ttl=10).acquire("held")
    err = one_line_error(sk("rm", "held"))
    assert "in use" in err and "--force" in err
    # no terminal, no --yes: refuse
    assert "--yes" in one_line_error(sk("rm", "held", "--force"), 2)
    assert broker.list_limits() == ["held"]
    r = sk("rm", "held", "--force", "--yes")
    assert r.exit_code == 0 and "revoked 1 lease" in r.stdout
    assert broker.list_limits() == []
    assert lease.release() is False  # the holder finds its lease gone
    sk("create", "free", "--slots", "1")
    assert sk("rm", "free").exit_code == 0 and broker.list_limits() == []


def test_reset_and_revoke(sk: Run, redis_server: RedisProc, namespace: str, broker: Broker) -> None:
    sk("create", "r", "--slots", "3")
    lim = Limiter(redis_server.url, namespace, ttl=10)
    leases = [lim.acquire("r") for _ in range(3)]
    assert one_line_error(sk("reset", "r"), 2)  # needs confirmation
    r = sk("revoke", leases[0].id, "--yes")
    assert r.exit_code == 0 and leases[0].id in r.stdout
    assert broker.snapshot("r").used == 2
    assert "not held" in one_line_error(sk("revoke", leases[0].id, "--yes"))
    assert js(sk("--json", "reset", "r", "--force"))["revoked"] == 2
    snap = broker.snapshot("r")
    assert snap.used == 0 and snap.counters.revoked == 3
    for x in leases:
        assert x.renew() is False  # every holder learns it lost its lease


def test_garbage_is_reported_and_others_listed(
    sk: Run, broker: Broker, redis_server: RedisProc
) -> None:
    r = redis_server.client()
    sk("create", "ok", "--slots", "2")
    sk("create", "badslots", "--slots", "1")
    r.hset(broker.keys.limit("badslots")[0], "slots", "abc")
    sk("create", "wrongtype", "--slots", "1")
    r.set(broker.keys.limit("wrongtype")[1], "x")
    sk("create", "rec", "--slots", "2")
    broker.acquire(["rec"], "garbage-lease", ttl_ms=30_000, wait=False)
    r.hset(broker.keys.leases, "garbage-lease", b"\xff\x00junk")
    res = sk("ls")
    assert res.exit_code == 0, res.output
    for name in ("ok", "badslots", "wrongtype", "rec"):
        assert name in res.stdout
    assert "field 'slots' is not a number" in res.stderr
    assert "'wrongtype'" in res.stderr and "WRONGTYPE" in res.stderr
    assert "garbage-lease has an unreadable record" in res.stderr
    assert "Traceback" not in res.output
    rows = {x["name"]: x for x in js(sk("--json", "ls"))}
    assert rows["ok"]["problems"] == [] and rows["ok"]["slots"] == 2
    assert rows["badslots"]["problems"] and rows["wrongtype"]["problems"]
    assert "slots" not in rows["wrongtype"]
    shown = sk("show", "rec")
    assert shown.exit_code == 0 and "UNREADABLE" in shown.stdout
    assert "garbage-lease" in shown.stderr
    assert one_line_error(sk("show", "wrongtype"))
    # repair by set works, and a limit whose config is garbage can be deleted outright
    assert sk("set", "badslots", "--slots", "3", "--create").exit_code == 0
    assert broker.snapshot("badslots").config.slots == 3
    assert not broker.snapshot("badslots").problems
    r.hset(broker.keys.limit("badslots")[0], "slots", "zzz")
    assert sk("rm", "badslots").exit_code == 0 and "badslots" not in broker.list_limits()
