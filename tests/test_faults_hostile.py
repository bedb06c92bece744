"""Hostile records: well-typed keys holding values another client crafted (numbers as strings,
overflowing numbers, nan, malformed wake-up messages). Every reader type-checks what it reads: a bad
record is reported and skipped or removed, never crashes a script halfway, the daemon, the CLI or
an acquire, and never blocks a limit."""

from __future__ import annotations

import json
import threading
import time

import msgpack
import pytest
from click.testing import CliRunner

from slotkeeper import AcquireTimeout, Limiter, limit
from slotkeeper.broker import protocol as P
from slotkeeper.broker.daemon import Daemon
from slotkeeper.broker.readmodel import read_limit
from slotkeeper.broker.records import decode_record, number
from slotkeeper.cli.main import cli
from tests.support.redisproc import RedisProc


@pytest.fixture
def lim(redis_server: RedisProc, namespace: str) -> Limiter:
    return Limiter(redis_server.url, namespace, ttl=2.0)


def _record(**fields: object) -> bytes:
    rec: dict[str, object] = {
        "n": ["h"],
        "o": 1,
        "m": {},
        "a": 1,
        "r": 1,
        "e": 1,
        "t": 1,
        "l": 1000,
    }
    rec.update(fields)
    packed: bytes = msgpack.packb(rec)
    return packed


@pytest.mark.parametrize(
    "raw", ["1e999", "-1e999", "inf", "nan", "", " ", "0x", b"\xff\xfe", 10**400, float("inf")]
)
def test_number_never_raises(raw: object) -> None:
    assert number(raw) is None


def test_number_accepts_numbers_and_their_text() -> None:
    assert number("12") == 12
    assert number(b"1.5e3") == 1500
    assert number(7.9) == 7
    assert number(True) is None
    assert number("5", 1, 4) is None


def test_decode_record_rules() -> None:
    assert decode_record(_record()) is not None
    assert decode_record(_record(o="1")) is not None  # text numbers are numbers
    for bad in (
        {"o": 0},
        {"o": 10_001},
        {"o": "1e999"},
        {"e": "nan"},
        {"l": None},
        {"n": []},
        {"n": [1]},
        {"n": "h"},
    ):
        assert decode_record(_record(**bad)) is None, bad


@pytest.mark.parametrize(
    "msg",
    ["g", "g 1 2", "g a b c", "g 1 2 3 4", "x", "x missing", "x missing q h", "", "zzz", "\ufffd"],
)
def test_malformed_wakeups_are_nudges(msg: str) -> None:
    assert P.parse_grant_message(msg) is None and P.parse_reject_message(msg) is None


def test_ticket_with_text_occupy_never_breaks_release(
    redis_server: RedisProc, lim: Limiter
) -> None:
    """The issue's case: a queued ticket whose ``o`` is the string "1". It is read as 1 (a waiter
    like any other): releases and grants keep working, and the waiter behind it is granted."""
    lim.create("q", 1)
    r = redis_server.client()
    k = lim.broker.keys
    first = lim.acquire("q", timeout=0)
    now = int(time.time() * 1000)
    r.hset(k.tickets, "evil", _record(n=["q"], o="1", e=now + 60_000, l="300", a="x", p="nan"))
    r.zadd(k.fixed()[3], {"evil": now + 60_000})
    r.zadd(k.limit("q")[2], {"evil": -1e15})  # at the head of the queue
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(lim.acquire("q", timeout=30)))
    t.start()
    deadline = time.monotonic() + 10
    while r.zcard(k.limit("q")[2]) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.release()  # grants the crafted ticket (300 ms lease), then the real waiter
    t.join(40)
    assert len(got) == 1
    lease = got[0]
    assert lease.release()  # type: ignore[attr-defined]
    assert (
        read_limit(lim.broker, "q").problems == ()
    )  # the crafted ticket became a lease and expired


def test_overflowing_lease_fields_are_reported_everywhere(
    redis_server: RedisProc, lim: Limiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease record with ``"a": "1e999"``: ls, show, the daemon and revoke carry on and say so."""
    lim.create("ov", 2)
    lease = lim.acquire("ov", timeout=0)
    r = redis_server.client()
    k = lim.broker.keys
    rec = msgpack.unpackb(r.hget(k.leases, lease.id))
    rec.update(a="1e999", r=float("nan"), t="inf")
    r.hset(k.leases, lease.id, msgpack.packb(rec))
    st = read_limit(lim.broker, "ov")
    assert st.ok and st.snapshot is not None and st.snapshot.used == 1
    assert any("unreadable fields a, r, t" in p for p in st.problems)
    d = Daemon(lim.broker, interval=0.05, audit_every=0)
    d.run(once=True)
    assert d.stats.passes == 1 and d.stats.errors == 0
    monkeypatch.setenv("SLOTKEEPER_URL", redis_server.url)
    monkeypatch.setenv("SLOTKEEPER_NAMESPACE", lim.namespace)
    runner = CliRunner()
    out = runner.invoke(cli, ["ls", "--json"])
    assert out.exit_code == 0, out.output
    assert "unreadable fields" in out.output
    out = runner.invoke(cli, ["show", "ov", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["problems"]
    assert lease.renew()  # the scripts default the bad fields; the holder keeps its lease
    out = runner.invoke(cli, ["revoke", lease.id, "--yes"])
    assert out.exit_code == 0, out.output
    assert not lease.renew()


def test_crafted_holder_entries_are_swept(redis_server: RedisProc, lim: Limiter) -> None:
    """Holder entries no lease record backs (here with a score far in the future) would hold slots
    forever; the daemon's reclaim removes them, and the limit admits again."""
    lim.create("orph", 3)
    r = redis_server.client()
    holders = lim.broker.keys.limit("orph")[1]
    r.zadd(holders, {"ghost": 1e15, "ghost#2": 1e15})
    real = lim.acquire("orph", timeout=0, ttl=30)
    pytest.raises(AcquireTimeout, lambda: lim.acquire("orph", timeout=0))  # positive control: full
    assert lim.broker.reclaim("orph").orphans == 2
    assert r.zcard(holders) == 1  # the real lease stays
    with limit("orph", limiter=lim, timeout=0, occupy=2):
        pass
    real.release()
    # a live, legitimate lease is never swept
    held = lim.acquire("orph", timeout=0, ttl=30)
    assert lim.broker.reclaim("orph").orphans == 0
    assert held.renew() and held.release()


def test_garbage_fence_restarts(redis_server: RedisProc, lim: Limiter) -> None:
    lim.create("f", 1)
    redis_server.client().set(lim.broker.keys.fixed()[4], "not-a-number")
    lease = lim.acquire("f", timeout=0)
    assert lease.token >= 1 and lease.release()


def test_malformed_wakeups_on_the_channel_do_not_break_a_waiter(
    redis_server: RedisProc, lim: Limiter
) -> None:
    lim.create("w", 1)
    r = redis_server.client()
    first = lim.acquire("w", timeout=0)
    got: list[object] = []
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            got.append(lim.acquire("w", timeout=60))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    q = lim.broker.keys.limit("w")[2]
    deadline = time.monotonic() + 10
    while not r.zrange(q, 0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    tid = r.zrange(q, 0, 0)[0].decode()
    channels = [c.decode() for c in r.pubsub_channels()]
    assert channels, "the waiter listens on a channel"
    for ch in channels:
        for junk in ("g", "g a b c", "x", "x missing", "g 1 2 3 4", "\xff"):
            r.publish(ch, f"{tid} {junk}")
        r.publish(ch, b"\xff\xfe " + tid.encode())
    time.sleep(0.3)
    assert t.is_alive() and not errors  # still waiting: junk is only a nudge to re-check
    assert first.release()  # positive control: the real grant still arrives
    t.join(30)
    assert not errors and len(got) == 1
    assert got[0].release()  # type: ignore[attr-defined]


def test_names_that_are_not_utf8_never_break_the_cli(
    redis_server: RedisProc, lim: Limiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    lim.create("fine", 1)
    redis_server.client().sadd(lim.broker.keys.limits, b"\xff\xfebad", "nocfg")
    monkeypatch.setenv("SLOTKEEPER_URL", redis_server.url)
    monkeypatch.setenv("SLOTKEEPER_NAMESPACE", lim.namespace)
    for args in (["ls"], ["ls", "--json"], ["top", "--once"]):
        out = CliRunner().invoke(cli, args)
        assert out.exit_code == 0, (args, out.output)
        assert "fine" in out.output and "\ufffd\ufffdbad" in out.output
