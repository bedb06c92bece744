"""Garbage written into slotkeeper's keys by another client: wrong key types, unreadable or
mis-shaped msgpack records, huge values, non-numeric config fields. The SDK raises a clear
SlotkeeperError (BrokerError) or treats the entry as absent: no crash, no hang, no over-admission.
Nothing is ever unpickled: the source never calls an unpickler."""

from __future__ import annotations

import ast
import threading
import time
from pathlib import Path

import msgpack
import pytest

from slotkeeper import BrokerError, Lease, LeaseLost, Limiter, LimitNotFound, limit
from tests.support.redisproc import RedisProc

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def lim(redis_server: RedisProc, namespace: str) -> Limiter:
    return Limiter(redis_server.url, namespace, ttl=1.5)


def raw(redis_server: RedisProc):  # type: ignore[no-untyped-def]
    return redis_server.client()


@pytest.mark.parametrize(
    "which",
    ["leases", "ticket_exp", "tickets", "limit", "holders", "queue", "withdrawn"],  # fence: restarts
)
def test_wrong_key_types_raise_broker_error(
    redis_server: RedisProc, lim: Limiter, which: str
) -> None:
    lim.create("wt", 1)
    keys = lim.broker.keys
    key = {
        "leases": keys.leases,
        "ticket_exp": keys.fixed()[3],
        "tickets": keys.tickets,
        "limit": keys.limit("wt")[0],
        "holders": keys.limit("wt")[1],
        "queue": keys.limit("wt")[2],
        "withdrawn": keys.withdrawn,
    }[which]
    r = raw(redis_server)
    r.delete(key)
    r.rpush(key, "garbage")  # a LIST where a hash/zset/string belongs
    started = time.monotonic()
    with pytest.raises(BrokerError, match="WRONGTYPE|not an integer|Redis error"):
        # one attempt (a Redis error reply is not retried), no hang
        holder = lim.acquire("wt", timeout=0)
        lim.acquire("wt", timeout=0.2)  # the queue / ticket paths
        holder.release()
    assert time.monotonic() - started < 30
    r.delete(key)  # repaired: everything works again
    if which == "limit":
        lim.create("wt", 1)
    with limit("wt", limiter=lim, timeout=5) as lease:
        assert lease.renew()


def test_list_limits_with_a_wrong_type_registry(redis_server: RedisProc, lim: Limiter) -> None:
    raw(redis_server).hset(lim.broker.keys.limits, "x", "y")
    with pytest.raises(BrokerError, match="WRONGTYPE"):
        lim.broker.list_limits()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xc1\xc1\xc1",  # not msgpack at all
        msgpack.packb([1, 2, 3]),  # msgpack, but not a map
        msgpack.packb({"n": "gpu", "e": 1, "o": 1}),  # names not a list
        msgpack.packb({"n": ["x"], "e": "soon", "o": 1}),  # expiry not a number
        msgpack.packb(12345),
        b"",
        b"\x80",  # an empty map
        b"\xdd\xff\xff\xff\xff",  # array header claiming 4G elements
    ],
)
def test_garbage_lease_record_is_treated_as_lost(
    redis_server: RedisProc, lim: Limiter, garbage: bytes
) -> None:
    lim.create("gl", 1)
    lost: list[Lease] = []
    with pytest.raises(LeaseLost):
        with limit("gl", limiter=lim, on_lost=lost.append) as lease:
            raw(redis_server).hset(lim.broker.keys.leases, lease.id, garbage)
            assert lease.renew() is False  # unreadable = absent: never "renewed"
    deadline = time.monotonic() + 5  # on_lost runs on a thread of its own
    while not lost and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lost == [lease]
    snap = lim.broker.snapshot("gl")
    # its holder entry still counts until its expiry (no over-admission), then frees itself
    assert snap.used == 1 and any(h.garbage for h in snap.holders)
    assert any("unreadable" in p for p in snap.problems)
    with limit("gl", limiter=lim, timeout=10) as again:
        assert again.renew()


def test_huge_values(redis_server: RedisProc, lim: Limiter) -> None:
    lim.create("huge", 2)
    r = raw(redis_server)
    big = b"\xc1" * (16 * 1024 * 1024)
    with pytest.raises(LeaseLost):
        with limit("huge", limiter=lim) as lease:
            r.hset(lim.broker.keys.leases, lease.id, big)
            assert lease.renew() is False
    r.hset(lim.broker.keys.limit("huge")[0], "desc", "d" * (8 * 1024 * 1024))
    snap = lim.broker.snapshot("huge")
    assert len(snap.config.description) == 8 * 1024 * 1024
    with limit("huge", limiter=lim, timeout=5) as lease:
        assert lease.renew()
    r.hset(lim.broker.keys.tickets, "bogus", big)
    r.zadd(lim.broker.keys.limit("huge")[2], {"bogus": -1e15})  # at the head of the queue
    with limit("huge", limiter=lim, timeout=5):
        pass


def test_garbage_tickets_at_the_queue_head_are_skipped(
    redis_server: RedisProc, lim: Limiter
) -> None:
    lim.create("gq", 1)
    r = raw(redis_server)
    queue = lim.broker.keys.limit("gq")[2]
    holder = lim.acquire("gq")
    got: list[Lease] = []

    def waiter() -> None:
        with limit("gq", limiter=lim, timeout=30) as lease:
            got.append(lease)

    t = threading.Thread(target=waiter)
    t.start()
    deadline = time.monotonic() + 10
    while lim.broker.snapshot("gq").n_waiters == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    # 150 entries ahead of the real waiter: missing records, garbage records, wrong shapes
    for i in range(150):
        tid = f"junk{i}"
        r.zadd(queue, {tid: -1e15 - i})
        if i % 3 == 1:
            r.hset(lim.broker.keys.tickets, tid, b"\xc1")
        elif i % 3 == 2:
            r.hset(lim.broker.keys.tickets, tid, msgpack.packb({"n": ["gq"], "o": 1}))
    assert holder.release()
    t.join(30)
    assert len(got) == 1  # the real waiter was granted; the junk was dropped, in bounded steps
    assert lim.broker.snapshot("gq").n_waiters == 0


@pytest.mark.parametrize(
    "field,value",
    [
        ("slots", "abc"),
        ("slots", ""),
        ("slots", "nan"),
        ("slots", "inf"),
        ("slots", "-inf"),
        ("slots", "1e400"),
        ("slots", "-1"),
        ("slots", "2.5"),
        ("slots", "0x10"),
    ],
)
def test_non_numeric_slots_never_admit_more(
    redis_server: RedisProc, lim: Limiter, field: str, value: str
) -> None:
    """A config field that is not a valid slot count: the limit is treated as absent
    (LimitNotFound) or admits at most what a sane reading allows -- never unlimited."""
    lim.create("cfg", 1)
    raw(redis_server).hset(lim.broker.keys.limit("cfg")[0], field, value)
    snap = lim.broker.snapshot("cfg")  # readable, with the problem reported
    assert snap.config.name == "cfg"
    held: list[Lease] = []
    try:
        for _ in range(5):
            try:
                held.append(lim.acquire("cfg", timeout=0))
            except LimitNotFound:
                break
            except Exception as exc:  # noqa: BLE001 - AcquireTimeout / OccupyExceedsLimit
                from slotkeeper import SlotkeeperError

                assert isinstance(exc, SlotkeeperError), repr(exc)
                break
        assert len(held) <= 2, f"slots={value!r} admitted {len(held)} holders"
    finally:
        for lease in held:
            lease.release()


@pytest.mark.parametrize(
    "field,value",
    [
        ("ttl", "soon"),
        ("ttl", "-5"),
        ("enabled", "perhaps"),
        ("c_acquired", "many"),
        ("w3", "x"),
        ("created", ""),
    ],
)
def test_other_garbage_config_fields(
    redis_server: RedisProc, lim: Limiter, field: str, value: str
) -> None:
    lim.create("cfg2", 1)
    raw(redis_server).hset(lim.broker.keys.limit("cfg2")[0], field, value)
    snap = lim.broker.snapshot("cfg2")
    assert snap.config.name == "cfg2"
    with limit("cfg2", limiter=lim, timeout=5) as lease:
        assert lease.renew()
        with pytest.raises(Exception) as second:
            lim.acquire("cfg2", timeout=0)  # still one slot
        assert type(second.value).__name__ == "AcquireTimeout"


def test_nothing_is_ever_unpickled() -> None:
    """No unpickler anywhere in the package source (records are msgpack, config is YAML/JSON)."""
    banned_attrs = {
        ("pickle", "loads"),
        ("pickle", "load"),
        ("pickle", "Unpickler"),
        ("cPickle", "loads"),
        ("marshal", "loads"),
        ("marshal", "load"),
        ("dill", "loads"),
        ("cloudpickle", "loads"),
        ("shelve", "open"),
        ("yaml", "unsafe_load"),
        ("yaml", "full_load"),
        ("jsonpickle", "decode"),
    }
    offenders: list[str] = []
    files = [p for d in ("sdk", "broker", "cli") for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 10
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "marshal", "dill"):
                names = {a.name for a in node.names}
                if names & {"loads", "load", "Unpickler"}:
                    offenders.append(f"{path}:{node.lineno} from {node.module} import {names}")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if (node.value.id, node.attr) in banned_attrs:
                    offenders.append(f"{path}:{node.lineno} {node.value.id}.{node.attr}")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "yaml"
                and node.func.attr == "load"
            ):
                loader = [k for k in node.keywords if k.arg == "Loader"]
                if not loader or "Safe" not in ast.unparse(loader[0].value):
                    offenders.append(f"{path}:{node.lineno} yaml.load without a safe Loader")
    assert offenders == []
