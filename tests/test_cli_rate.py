"""CLI for rates, templates and backpressure: create/set/show/ls/export/apply round trips, and bad
input (one line, exit status 2, nothing written)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from click.testing import CliRunner, Result

from slotkeeper.broker.client import Broker
from slotkeeper.cli.main import cli
from slotkeeper.limiter import Limiter
from tests.support.redisproc import RedisProc

Run = Callable[..., Result]


@pytest.fixture
def sk(redis_server: RedisProc, namespace: str) -> Run:
    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> Result:
        return runner.invoke(cli, ["--url", redis_server.url, "--namespace", namespace, *args],
                             input=input, catch_exceptions=False)

    return run


@pytest.fixture
def broker(redis_server: RedisProc, namespace: str) -> Broker:
    return Broker.from_url(redis_server.url, namespace)


def ok(r: Result) -> Result:
    assert r.exit_code == 0, r.output
    return r


def test_create_show_set_rate(sk: Run, broker: Broker) -> None:
    r = ok(sk("create", "api", "--rate", "600/min", "--max-waiters", "50"))
    assert "created limit 'api'" in r.stdout and "rate 600/min" in r.stdout
    show = json.loads(ok(sk("--json", "show", "api")).stdout)
    assert show["rate"] == "600/min" and show["slots"] is None and show["max_waiters"] == 50
    text = ok(sk("show", "api")).stdout
    assert "rate:" in text and "0/600/min" in text and "max waiters: 50" in text
    ok(sk("set", "api", "--rate", "5/s", "--spread", "--slots", "3"))
    c = broker.snapshot("api").config
    assert str(c.rate) == "5/s" and c.spread and c.slots == 3
    ok(sk("set", "api", "--rate", "none"))  # slots remain: the rate may go
    assert broker.snapshot("api").config.rate is None
    ok(sk("set", "api", "--max-waiters", "-1"))
    assert broker.snapshot("api").config.max_waiters is None
    ls = json.loads(ok(sk("--json", "ls")).stdout)
    assert [x["name"] for x in ls] == ["api"]


def test_templates_in_ls_and_show(sk: Run, broker: Broker, redis_server: RedisProc,
                                  namespace: str) -> None:
    ok(sk("create", "tenant:*", "--slots", "2", "--rate", "5/s", "--total", "20",
          "--idle-ttl", "30min"))
    lim = Limiter(redis_server.url, namespace)
    for t in ("acme", "globex"):
        lim.acquire(f"tenant:{t}").release()
    held = lim.acquire("tenant:globex")
    ls = json.loads(ok(sk("--json", "ls")).stdout)
    assert len(ls) == 1 and ls[0]["name"] == "tenant:*" and ls[0]["keys"] == 2
    assert ls[0]["busiest_keys"] == [{"name": "tenant:globex", "used": 1},
                                     {"name": "tenant:acme", "used": 0}]
    assert "template: 2 key(s), total 20; busiest: tenant:globex (1)" in ok(sk("ls")).stdout
    held.release()
    show = json.loads(ok(sk("--json", "show", "tenant:acme")).stdout)
    assert show["made_from"] == "tenant:*" and show["slots"] == 2 and show["rate"] == "5/s"
    assert "made from:   template 'tenant:*'" in ok(sk("show", "tenant:acme")).stdout
    tshow = json.loads(ok(sk("--json", "show", "tenant:*")).stdout)
    assert tshow["total"] == 20 and tshow["idle_ttl"] == "30min" and tshow["keys"] == 2


def test_export_apply_round_trip(sk: Run, broker: Broker) -> None:
    ok(sk("create", "api", "--rate", "100/5min", "--spread"))
    ok(sk("create", "db", "--slots", "4", "--rate", "10/s", "--max-waiters", "7"))
    ok(sk("create", "tenant:*", "--slots", "2", "--total", "9", "--idle-ttl", "2h"))
    ok(sk("create", "plain", "--slots", "1"))
    exported = ok(sk("export")).stdout
    assert "rate: 100/5min" in exported and "idle_ttl: 2h" in exported
    assert "total: 9" in exported and "max_waiters: 7" in exported
    plan = ok(sk("apply", "-f", "-", "--dry-run", input=exported)).stdout
    assert "no changes (4 limit(s) up to date)" in plan
    # into a second namespace and back out: identical
    changed = exported.replace("rate: 10/s", "rate: 20/s")
    out = ok(sk("apply", "-f", "-", input=changed)).stdout
    assert "~ update db" in out and str(broker.snapshot("db").config.rate) == "20/s"
    assert ok(sk("export")).stdout == changed
    # the file is the whole truth: dropping the rate removes it
    no_rate = changed.replace("  rate: 100/5min\n  spread: true\n", "  slots: 3\n")
    ok(sk("apply", "-f", "-", input=no_rate))
    c = broker.snapshot("api").config
    assert c.rate is None and c.slots == 3 and not c.spread


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["create", "x", "--rate", "0/s"], "at least 1"),
        (["create", "x", "--rate", "abc"], "bad rate 'abc'"),
        (["create", "x", "--rate", "5/fortnight"], "unknown unit 'fortnight'"),
        (["create", "a*b", "--slots", "1"], "'*' may only be the last"),
        (["create", "x"], "needs --slots N, --rate N/P, or both"),
        (["create", "x", "--slots", "1", "--total", "5"], "templates only"),
        (["create", "x", "--slots", "1", "--idle-ttl", "1h"], "templates only"),
        (["create", "t:*", "--slots", "1", "--idle-ttl", "soon"], "bad --idle-ttl"),
        (["create", "x", "--slots", "1", "--spread"], "--spread needs --rate"),
        (["create", "x", "--slots", "1", "--max-waiters", "-3"], "max_waiters"),
        (["set", "x", "--rate", "1/0s"], "period"),
        (["set", "x"], "nothing to change"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(sk: Run, broker: Broker, args: list[str],
                                                   needle: str) -> None:
    r = sk(*args)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert broker.list_limits() == []
    assert list(broker.redis.scan_iter(broker.keys.pattern())) == []


def test_removing_the_only_capacity_is_refused(sk: Run, broker: Broker) -> None:
    ok(sk("create", "api", "--rate", "5/s"))
    r = sk("set", "api", "--rate", "none")
    assert r.exit_code == 2 and "needs slots or a rate" in r.stderr
    assert str(broker.snapshot("api").config.rate) == "5/s"


def test_apply_rejects_bad_rate_before_writing(sk: Run, broker: Broker) -> None:
    r = sk("apply", "-f", "-", input="limits:\n  - {name: a, slots: 1}\n  - {name: b, rate: 3/week}\n")
    assert r.exit_code != 0 and "unknown unit 'week'" in r.stderr
    assert broker.list_limits() == []
