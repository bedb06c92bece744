"""The queue, expiry and wake-up rules, each checked on its own (tests/mutants/ breaks each rule on a
copy of the code and expects one of these to fail). Holders that must not renew are made through
the broker directly (no SDK heartbeat), so nothing but the rule under test decides the outcome.
Promises of a push (a grant after ``set --slots``, a re-check at the earliest expiry) are tested
with the SDK's fallback poll set far beyond the test's patience, so the poll cannot pass for them."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from slotkeeper import AcquireTimeout, Lease, Limiter
from slotkeeper.broker import protocol as P
from slotkeeper.broker.client import Broker
from slotkeeper.broker.codes import Status
from tests.support.push import PATIENCE, push_only
from tests.support.redisproc import RedisProc


@pytest.fixture
def slow_poll(monkeypatch: pytest.MonkeyPatch, limiter: Limiter) -> None:
    """No fallback re-check, slow-wait re-ask or heartbeat within PATIENCE (tests/support/push.py)."""
    push_only(monkeypatch, limiter)


@pytest.fixture
def broker(redis_server: RedisProc, namespace: str) -> Iterator[Broker]:
    b = Broker.from_url(redis_server.url, namespace)
    yield b
    b.close()


def in_thread(fn: object) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def wait_queued(b: Broker, name: str, n: int) -> None:
    deadline = time.monotonic() + 20
    while b.snapshot(name).n_waiters < n:
        assert time.monotonic() < deadline, "the waiter never queued"
        time.sleep(0.01)


def test_newcomer_never_jumps_the_queue(limiter: Limiter, broker: Broker) -> None:
    """A free slot is not for a newcomer while an earlier waiter (who needs more) is queued."""
    limiter.create("fifo", 2)
    holder = limiter.acquire("fifo")
    t, got = in_thread(lambda: limiter.acquire("fifo", occupy=2, timeout=60))
    wait_queued(broker, "fifo", 1)
    with pytest.raises(AcquireTimeout):  # 1 slot is free, but the head waiter came first
        limiter.acquire("fifo", timeout=0)
    holder.release()  # positive control: the head waiter gets both slots
    t.join(60)
    assert isinstance(got[0], Lease) and got[0].occupy == 2
    got[0].release()
    limiter.acquire("fifo", timeout=0).release()  # and a newcomer fits once the queue is empty


def test_acquire_purges_expired_holders_without_a_daemon(broker: Broker) -> None:
    broker.create_limit("purge", 1)
    r = broker.acquire(["purge"], "dead", ttl_ms=100, wait=False)
    assert r.status == Status.GRANTED
    time.sleep(0.3)  # its holder never renews (no heartbeat): expired
    assert broker.acquire(["purge"], "next", ttl_ms=5000, wait=False).status == Status.GRANTED
    snap = broker.snapshot("purge")
    assert snap.counters.expired == 1  # counted once, by the acquire's own purge
    assert broker.redis.hexists(broker.keys.leases, "dead") == 0  # and its record collected
    assert [h.lease_id for h in snap.holders] == ["next"]


@pytest.mark.usefixtures("slow_poll")
def test_raising_slots_grants_the_waiters_at_once(limiter: Limiter, broker: Broker) -> None:
    limiter.create("raise", 1)
    holder = limiter.acquire("raise", ttl=120)  # its expiry is no re-check hint within patience
    t, got = in_thread(lambda: limiter.acquire("raise", timeout=10 * PATIENCE))
    wait_queued(broker, "raise", 1)
    t0 = time.monotonic()
    limiter.set("raise", slots=2)
    t.join(PATIENCE)
    assert got and isinstance(got[0], Lease), "set --slots did not grant the waiter"
    assert time.monotonic() - t0 < PATIENCE
    got[0].release()
    holder.release()


@pytest.mark.usefixtures("slow_poll")
def test_waiter_rechecks_at_the_earliest_expiry_without_a_daemon(
    limiter: Limiter, broker: Broker
) -> None:
    """A holder that vanished (no release, no notification, no daemon): the waiter was told when
    the earliest holder expires and asks again then."""
    limiter.create("hint", 1)
    assert broker.acquire(["hint"], "ghost", ttl_ms=1000, wait=False).status == Status.GRANTED
    t, got = in_thread(lambda: limiter.acquire("hint", timeout=10 * PATIENCE))
    t.join(PATIENCE)
    assert got and isinstance(got[0], Lease), "the waiter did not re-check at the expiry"
    got[0].release()


@pytest.mark.parametrize("slots", [1, 3])
def test_slot_checks_are_exact(limiter: Limiter, broker: Broker, slots: int) -> None:
    """Exactly ``slots`` admitted; occupy == slots fits (at once and from the queue)."""
    name = f"exact{slots}"
    limiter.create(name, slots)
    held = [limiter.acquire(name, timeout=0) for _ in range(slots)]  # every slot, at once
    with pytest.raises(AcquireTimeout):
        limiter.acquire(name, timeout=0)
    t, got = in_thread(lambda: limiter.acquire(name, occupy=slots, timeout=60))
    wait_queued(broker, name, 1)
    for h in held[:-1]:
        h.release()  # each release runs the grant pass in its own script: done when it returns
    snap = broker.snapshot(name)
    assert (snap.used, snap.n_waiters) == (1, 1)  # one slot still held: the whole-limit request waits
    assert not got
    held[-1].release()  # now it fits exactly: granted from the queue
    t.join(60)
    assert isinstance(got[0], Lease) and got[0].occupy == slots
    got[0].release()
    limiter.acquire(name, occupy=slots, timeout=0).release()  # and at once


def test_renew_never_resurrects_an_expired_lease(broker: Broker) -> None:
    broker.create_limit("undead", 1)
    assert broker.acquire(["undead"], "L", ttl_ms=100, wait=False).status == Status.GRANTED
    time.sleep(0.3)  # expired; nothing purged it yet (no daemon, no other call)
    hb = broker.heartbeat([("L", ["undead"], 5000)], [])
    assert hb.lost_leases == ["L"]
    assert broker.snapshot("undead").used == 0
    ok = broker.acquire(["undead"], "M", ttl_ms=5000, wait=False)
    assert ok.status == Status.GRANTED  # positive control: the slot is free


def test_an_expired_ticket_is_never_renewed(broker: Broker) -> None:
    broker.create_limit("tix", 1)
    assert broker.acquire(["tix"], "H", ttl_ms=60_000, wait=False).status == Status.GRANTED
    r = broker.acquire(["tix"], "W", ttl_ms=150, wait=True)
    assert r.status == Status.QUEUED
    hb = broker.heartbeat([], [("W", ["tix"], 150)])
    assert hb.lost_tickets == []  # positive control: a live ticket is renewed
    time.sleep(0.6)  # the waiter's process stopped renewing: its ticket expired
    hb = broker.heartbeat([], [("W", ["tix"], 5000)])
    assert hb.lost_tickets == ["W"]


def test_a_re_ask_never_restarts_a_lost_request(broker: Broker) -> None:
    broker.create_limit("re", 1)
    assert broker.acquire(["re"], "H", ttl_ms=60_000, wait=False).status == Status.GRANTED
    # W's ticket is lost by expiry (its process stopped renewing), not withdrawn: a withdrawal
    # would also mark the id (see the late-ask test), and only the re-ask rule is checked here
    assert broker.acquire(["re"], "W", ttl_ms=150, wait=True).status == Status.QUEUED
    time.sleep(0.4)
    assert broker.heartbeat([], [("W", ["re"], 5000)]).lost_tickets == ["W"]
    assert broker.release(["re"], "H")  # the slot is free now
    assert broker.acquire(["re"], "W", ttl_ms=5000, wait=True, recheck=True).status == Status.LOST
    assert broker.redis.hget(broker.keys.leases, "W") is None
    # positive control: the same ask, not a re-ask, is served on the free slot
    assert broker.acquire(["re"], "X", ttl_ms=5000, wait=True).status == Status.GRANTED


@pytest.mark.parametrize("busy", [False, True])
def test_an_ask_arriving_after_its_withdrawal_is_refused(broker: Broker, busy: bool) -> None:
    """An ask abandoned at its deadline (or retried) travels on its own connection; the
    withdrawal, sent later on another, can reach Redis first. The late ask must then neither
    grant (a lease nobody holds, expiring by its TTL) nor queue (a ticket nobody waits for)."""
    broker.create_limit("late", 1)
    if busy:
        assert broker.acquire(["late"], "H", ttl_ms=60_000, wait=False).status == Status.GRANTED
    # positive control: the same ask under an id never withdrawn is served
    ok = broker.acquire(["late"], "C", ttl_ms=5000, wait=True)
    assert ok.status == (Status.QUEUED if busy else Status.GRANTED)
    assert broker.cancel(["late"], "C", timed_out=False).status in (Status.CANCELLED, Status.GRANTED)
    if not busy:
        assert broker.release(["late"], "C")
    # the withdrawal of W comes first and finds nothing; then W's ask arrives
    assert broker.cancel(["late"], "W", timed_out=True).status == Status.LOST
    assert broker.acquire(["late"], "W", ttl_ms=5000, wait=True).status == Status.LOST
    snap = broker.snapshot("late")
    assert snap.used == (1 if busy else 0) and snap.n_waiters == 0
    assert broker.redis.hget(broker.keys.leases, "W") is None
    assert broker.redis.hget(broker.keys.tickets, "W") is None


def test_a_late_copy_of_a_resent_ask_is_refused_after_the_release(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ask whose first try timed out is sent again under the same id; its first copy may
    still reach Redis -- even after the lease the second copy got was released. The release of
    such a lease marks the id, so the late copy is refused instead of granting a lease nobody
    holds (the transport notes the re-send; the release op carries the mark)."""
    broker.create_limit("dup", 1)
    run = broker.transport._execute
    failed: list[str] = []

    def first_try_lost(op: P.Op[Any]) -> Any:
        if op.script == "acquire" and not failed:
            failed.append(op.request_id)
            raise redis.ConnectionError("the reply never came (the request may still arrive)")
        return run(op)

    # positive control first: an ask sent once leaves no mark, a copy after release is served
    # (that copy is what the rule is about: it would be a lease nobody holds)
    assert broker.acquire(["dup"], "once", ttl_ms=60_000, wait=False).status == Status.GRANTED
    assert broker.release(["dup"], "once")
    assert broker.acquire(["dup"], "once", ttl_ms=60_000, wait=False).status == Status.GRANTED
    assert broker.release(["dup"], "once")
    # now an ask sent twice (its first try lost)
    monkeypatch.setattr(broker.transport, "_execute", first_try_lost)
    assert broker.acquire(["dup"], "twice", ttl_ms=60_000, wait=False).status == Status.GRANTED
    assert failed == ["twice"]
    assert broker.release(["dup"], "twice")
    late = broker.acquire(["dup"], "twice", ttl_ms=60_000, wait=False)  # the first copy, late
    assert late.status == Status.LOST
    snap = broker.snapshot("dup")
    assert snap.used == 0 and broker.redis.hget(broker.keys.leases, "twice") is None


def test_the_async_transport_notes_a_resent_ask_too(
    redis_server: RedisProc, namespace: str, broker: Broker
) -> None:
    """Same rule on ``redis.asyncio``: an ask re-sent after its first try failed is noted, and
    its release marks the id (checked in Redis), so a late first copy is refused."""
    import asyncio

    from slotkeeper.broker.client import AsyncBroker

    broker.create_limit("adup", 1)

    async def scenario() -> list[Any]:
        ab = AsyncBroker(redis_server.url, namespace)
        run = ab.transport._execute
        failed: list[str] = []

        async def first_try_lost(op: P.Op[Any]) -> Any:
            if op.script == "acquire" and not failed:
                failed.append(op.request_id)
                raise redis.ConnectionError("the reply never came")
            return await run(op)

        ab.transport._execute = first_try_lost  # type: ignore[method-assign]
        got = await ab.acquire(["adup"], "a-twice", ttl_ms=60_000, wait=False)
        held = await ab.release(["adup"], "a-twice")
        await ab.transport.client.aclose()
        return [got.status, held, failed]

    status, held, failed = asyncio.run(scenario())
    assert status == Status.GRANTED and held and failed == ["a-twice"]
    late = broker.acquire(["adup"], "a-twice", ttl_ms=60_000, wait=False)
    assert late.status == Status.LOST
    assert broker.snapshot("adup").used == 0


def test_a_re_check_that_finds_nothing_marks_the_id(broker: Broker) -> None:
    """A re-check (mode 2) of an id Redis never saw answers LOST and marks the id, so the first
    copy of that ask, arriving later, is refused rather than queued for nobody."""
    broker.create_limit("rc", 1)
    assert broker.acquire(["rc"], "H", ttl_ms=60_000, wait=False).status == Status.GRANTED
    # positive control: an id neither re-checked nor withdrawn queues
    assert broker.acquire(["rc"], "C", ttl_ms=5000, wait=True).status == Status.QUEUED
    assert broker.acquire(["rc"], "R", ttl_ms=5000, wait=True, recheck=True).status == Status.LOST
    assert broker.acquire(["rc"], "R", ttl_ms=5000, wait=True).status == Status.LOST
    assert broker.redis.hget(broker.keys.tickets, "R") is None
    assert broker.snapshot("rc").n_waiters == 1


def test_a_resent_ask_never_starts_its_id_anew(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ask that would queue, sent again because its first try got no reply, goes as a
    re-check: if the first copy never arrived, the id is refused from then on (the caller asks
    anew under a new id), so a first copy still on its way cannot queue a ticket nobody waits
    for. If it did arrive, the re-check finds its ticket."""
    broker.create_limit("rs", 1)
    assert broker.acquire(["rs"], "H", ttl_ms=60_000, wait=False).status == Status.GRANTED
    run = broker.transport._execute
    sent: list[tuple[str, int | None]] = []

    def lose_first(deliver: bool) -> Any:
        def execute(op: P.Op[Any]) -> Any:
            sent.append((op.request_id, P.acquire_mode(op)))
            if len(sent) == 1:
                if deliver:
                    run(op)  # it arrived; only its reply was lost
                raise redis.ConnectionError("the reply never came (the request may still arrive)")
            return run(op)
        return execute

    # the first copy arrived: the re-check finds its ticket (positive control)
    monkeypatch.setattr(broker.transport, "_execute", lose_first(deliver=True))
    assert broker.acquire(["rs"], "came", ttl_ms=5000, wait=True).status == Status.QUEUED
    assert sent == [("came", P.MODE_ENQUEUE), ("came", P.MODE_RECHECK)]
    # the first copy is still on its way: the re-sent ask is refused, and so is the late copy
    sent.clear()
    monkeypatch.setattr(broker.transport, "_execute", lose_first(deliver=False))
    assert broker.acquire(["rs"], "late", ttl_ms=5000, wait=True).status == Status.LOST
    monkeypatch.setattr(broker.transport, "_execute", run)
    assert broker.acquire(["rs"], "late", ttl_ms=5000, wait=True).status == Status.LOST
    assert broker.redis.hget(broker.keys.tickets, "late") is None
    assert broker.snapshot("rs").n_waiters == 1  # only "came" waits


def test_a_holder_stops_trusting_its_lease_when_redis_goes_silent(
    fresh_redis: RedisProc, namespace: str
) -> None:
    """Client-side expiry: with no answer from Redis, the holder's own clock ends its trust one
    TTL after the last renewal it sent."""
    lim = Limiter(fresh_redis.url, namespace, ttl=1.0)
    lim.create("silent", 1)
    lease = lim.acquire("silent")
    time.sleep(1.5)
    assert not lease.lost  # positive control: renewed past its first TTL
    assert fresh_redis.proc is not None
    fresh_redis.proc.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + PATIENCE
        while not lease.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lease.lost and time.monotonic() >= lease.valid_until
    finally:
        fresh_redis.proc.send_signal(signal.SIGCONT)
    lim.runtime.close()


def test_a_revoked_holder_learns_at_its_next_heartbeat(limiter: Limiter, broker: Broker) -> None:
    """The heartbeat's lost report ends a revoked lease at once, long before its TTL would (a
    short-TTL lease in the same process makes the heartbeat beat every 0.1 s)."""
    lim = Limiter(limiter.url, limiter.namespace, ttl=60.0)
    lim.create("rev", 1)
    lim.create("tick", 1)
    ticker = lim.acquire("tick", ttl=0.3)
    lease = lim.acquire("rev")
    time.sleep(0.5)
    assert not lease.lost and not ticker.lost  # positive control: both renewed
    assert broker.revoke(lease.id)
    deadline = time.monotonic() + PATIENCE
    while not lease.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lease.lost and time.monotonic() < lease.valid_until  # told; its TTL had not run out
    ticker.release()
