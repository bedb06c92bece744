"""Redis Sentinel (one master, one replica, three sentinels, all local): clients given a
redis+sentinel:// URL follow a failover; ``durable=True`` returns only once a replica has the
grant; and what asynchronous replication can lose in a failover, shown on purpose."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from slotkeeper import BrokerUnavailable, Lease, Limiter, limit
from tests.support.proxy import TcpProxy
from tests.support.redisproc import RedisProc
from tests.support.sentinel import FAST_SYNC, SentinelSetup, wait_until


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelSetup]:
    with SentinelSetup(tmp_path / "sentinel") as s:
        yield s


def retrying(fn: Callable[[], Lease], seconds: float = 30.0) -> tuple[Lease, int]:
    """Call ``fn`` until it stops raising BrokerUnavailable (a failover in progress); returns the
    result and how many times Redis was reported unavailable meanwhile."""
    deadline = time.monotonic() + seconds
    unavailable = 0
    while True:
        try:
            return fn(), unavailable
        except BrokerUnavailable:
            unavailable += 1
            if time.monotonic() > deadline:
                raise


def test_client_follows_sentinel_failover(sentinel: SentinelSetup, namespace: str) -> None:
    """SENTINEL FAILOVER of a live master. Sentinel demotes the old master only some seconds after
    promoting the replica (about 10 s with Redis 7); clients still connected to the old master
    write there meanwhile, and those writes are discarded. A lease whose TTL outlasts that window
    survives it; a durable acquire inside the window fails loudly instead of diverging."""
    lim = Limiter(sentinel.url, namespace, ttl=30)
    lim.create("sf", 1)
    lim.create("sf-window", 1)
    old = sentinel.master_port()
    holder = lim.acquire("sf", durable=True)
    granted: list[Lease] = []

    def waiter() -> None:
        with limit("sf", limiter=lim, timeout=60) as lease:
            granted.append(lease)

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    try:
        wait_until(lambda: lim.broker.snapshot("sf").n_waiters == 1, what="waiter queued")

        new = sentinel.failover()
        assert new != old
        # two masters for a while: no replica acknowledges anything, so durable=True refuses
        with pytest.raises(BrokerUnavailable, match="no replica acknowledged"):
            lim.acquire("sf-window", durable=True)
        wait_until(
            lambda: sentinel.node(old).client().info("replication")["role"] == "slave",
            what="old master demoted",
        )

        assert holder.renew()  # now on the new master, where the (durable) lease lives
        assert not holder.lost
        snap = lim.broker.snapshot("sf")
        assert [h.lease_id for h in snap.holders] == [holder.id] and snap.n_waiters == 1
    finally:
        holder.release()
        t.join(60)
    assert not holder.lost and len(granted) == 1 and granted[0].token > holder.token
    with limit("sf", limiter=lim, timeout=10):
        pass
    c = lim.broker.snapshot("sf").counters
    assert (c.acquired, c.released, c.expired) == (3, 3, 0)
    assert sentinel.master_port() == new


def test_master_killed_unreplicated_grant_vanishes_durable_one_survives(
    tmp_path: Path, namespace: str
) -> None:
    with SentinelSetup(tmp_path / "s", replica_via_proxy=True) as s:
        assert s.link is not None and s.replica is not None
        lim = Limiter(s.url, namespace, ttl=6)
        lim.create("durable", 1)
        lim.create("async", 1)
        safe = lim.acquire("durable", durable=True)

        s.link.blackhole = True  # replication stalls: writes stay on the master only
        with pytest.raises(BrokerUnavailable, match="durable acquire: no replica acknowledged"):
            lim.acquire("async", durable=True)  # durable refuses, and gives the slot back
        lost: list[Lease] = []
        fragile = lim.acquire("async", on_lost=lost.append)  # granted, never replicated

        s.master.stop(signal.SIGKILL)
        wait_until(lambda: s.all_agree_master() == s.replica.port, what="replica promoted")

        # The new master never heard of `fragile`: a second holder is admitted while the first
        # still believes it holds -- until its next heartbeat tells it (on_lost, LeaseLost).
        second, unavailable = retrying(lambda: lim.acquire("async", timeout=5))
        assert wait_until(lambda: fragile.lost, what="fragile lease reported lost") is None
        wait_until(lambda: lost == [fragile], what="on_lost called (its own thread)")
        assert fragile.release() is False
        # Fencing tokens come from the same (replicated) counter, so a token handed out after
        # the failover can repeat one that was lost with it: resources must accept only tokens
        # strictly greater than the last they saw.
        assert second.token <= fragile.token
        # The durable lease was on the replica before acquire returned: it survived.
        assert safe.renew() and not safe.lost
        assert safe.release() and second.release()
        print(
            f"failover: BrokerUnavailable {unavailable}x while it ran; fragile token "
            f"{fragile.token}, post-failover token {second.token}"
        )


def test_durable_waits_for_a_replica_ack(namespace: str) -> None:
    with (
        RedisProc(args=FAST_SYNC) as master,
        RedisProc(args=["--replicaof", "127.0.0.1", str(master.port)]) as replica,
    ):
        wait_until(lambda: replica.client().info("replication")["master_link_status"] == "up")
        lim = Limiter(master.url, namespace, ttl=3)
        lim.create("dur", 1)
        keys = lim.broker.keys
        with limit("dur", limiter=lim, durable=True) as lease:
            # WAIT returned: the replica already holds the lease record, no polling needed
            assert replica.client().hexists(keys.leases, lease.id)

        async def async_durable() -> str:
            async with limit("dur", limiter=lim, durable=True) as lease:
                return lease.id

        lid = asyncio.run(async_durable())
        assert lim.broker.snapshot("dur").counters.released == 2 and lid

        replica.pause()  # alive for TCP, but never acknowledges
        try:
            with pytest.raises(BrokerUnavailable, match="no replica acknowledged"):
                lim.acquire("dur", durable=True)
        finally:
            replica.resume()
        snap = lim.broker.snapshot("dur")
        assert (
            snap.used == 0 and snap.counters.released == 3
        )  # the unconfirmed grant was given back


def test_durable_without_any_replica_refuses(redis_server: RedisProc, namespace: str) -> None:
    lim = Limiter(redis_server.url, namespace, ttl=3)
    lim.create("solo", 2)
    with pytest.raises(BrokerUnavailable, match="no replica acknowledged"):
        with limit("solo", limiter=lim, durable=True):
            pytest.fail("durable=True must not run the body without a replica")
    assert lim.broker.snapshot("solo").used == 0
    with limit("solo", limiter=lim) as lease:  # non-durable still works on a lone Redis
        assert lease.renew()


def test_durable_covers_a_grant_made_by_another_client(namespace: str) -> None:
    """A queued waiter is granted inside the releasing client's script. WAIT on the waiter's own
    connection would only cover the waiter's earlier writes (its enqueue, long replicated) and
    pass at once; durable=True must prove the grant itself reached the replica."""
    with (
        RedisProc(args=FAST_SYNC) as master,
        TcpProxy("127.0.0.1", master.port) as link,
        RedisProc(args=["--replicaof", "127.0.0.1", str(link.port)]) as replica,
    ):
        wait_until(lambda: replica.client().info("replication")["master_link_status"] == "up")
        releaser = Limiter(master.url, namespace, ttl=5)
        # another runtime (own connections), long TTL: no heartbeat writes while it waits
        waiter = Limiter(master.url + "?socket_timeout=5", namespace, ttl=30)
        releaser.create("dq", 1)
        holder = releaser.acquire("dq")
        out: list[BaseException | Lease] = []

        def wait_durably() -> None:
            try:
                out.append(waiter.acquire("dq", durable=True))
            except BaseException as exc:  # noqa: BLE001 - inspected below
                out.append(exc)

        t = threading.Thread(target=wait_durably)
        t.start()
        wait_until(lambda: releaser.broker.snapshot("dq").n_waiters == 1)
        leases = releaser.broker.keys.tickets
        # the enqueue has been replicated and acknowledged (replicas ack every second)
        wait_until(lambda: replica.client().hlen(leases) == 1)
        time.sleep(1.5)
        link.blackhole = True  # from now on nothing reaches the replica
        holder.release()  # grants the waiter, on the master only
        t.join(30)
        assert len(out) == 1 and isinstance(out[0], BrokerUnavailable), out
        assert releaser.broker.snapshot("dq").used == 0  # the unconfirmed grant was given back
        link.blackhole = False
