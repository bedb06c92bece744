"""The typed Broker clients: :class:`Broker` (blocking, redis-py) and :class:`AsyncBroker`
(``redis.asyncio``). Both are thin: each method builds a protocol op
(:mod:`slotkeeper.broker.protocol`, where arguments, replies and status codes are defined once)
and hands it to its transport (:mod:`slotkeeper.broker.transport`), which bounds it by a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from slotkeeper.broker import protocol as P
from slotkeeper.broker import records as R
from slotkeeper.broker.connection import connect, connect_async, redact
from slotkeeper.broker.errors import (
    BrokerError,
    InvalidArgument,
    InvalidType,
    SlotkeeperError,
)
from slotkeeper.broker.keys import Keys, check_limit_name, check_namespace, is_template
from slotkeeper.broker.protocol import check_slots
from slotkeeper.broker.rates import Rate
from slotkeeper.broker.transport import (
    DEFAULT_OP_TIMEOUT,
    AsyncTransport,
    SyncTransport,
)

RESET_BATCH = 1000


class Broker:
    """Typed, deadline-bounded access to one namespace of a Redis server (blocking)."""

    def __init__(self, client: Redis, namespace: str = "default", url: str | None = None,
                 op_timeout: float = DEFAULT_OP_TIMEOUT) -> None:
        self.namespace = check_namespace(namespace)
        self.keys = Keys(self.namespace)
        self.redis = client
        self.url_redacted = redact(url) if url else "(client)"
        self.transport = SyncTransport(client, self.url_redacted, op_timeout)

    @classmethod
    def from_url(cls, url: str, namespace: str = "default",
                 op_timeout: float = DEFAULT_OP_TIMEOUT, **kwargs: Any) -> Broker:
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))  # retries are the transport's
        return cls(connect(url, **kwargs), namespace, url, op_timeout)

    def close(self) -> None:
        self.transport.close()

    def run(self, op: P.Op[Any], deadline: float | None = None) -> Any:
        return self.transport.run(op, deadline)

    def templates(self, refresh: bool = False) -> tuple[str, ...]:
        """The namespace's template names, longest first (read again when older than
        TEMPLATE_CACHE_S). Scripts get the keys of those matching the names they are given."""
        if refresh or P.templates_stale(self.namespace):
            return self.transport.run(P.list_templates(self.keys))
        return P.known_templates(self.namespace)

    def _fresh(self) -> None:
        if P.templates_stale(self.namespace):
            self.templates(refresh=True)

    # -- plain reads ------------------------------------------------------------------------

    def limit_slots(self, name: str) -> int:
        return self.transport.run(P.limit_slots(self.keys, name))

    def ping(self, deadline: float | None = None) -> bool:
        return self.transport.run(P.ping(), deadline, retry=False)

    def wait_replicas(self, replicas: int, timeout_ms: int) -> int:
        """WAIT until ``replicas`` replicas acknowledged our writes; returns how many did."""
        return self.transport.run(P.wait_replicas(replicas, timeout_ms),
                                  time.monotonic() + self.transport.op_timeout + timeout_ms / 1000)

    def server_time_ms(self) -> int:
        return self.transport.run(P.server_time_ms())

    def probe_permissions(self) -> list[str]:
        """The commands the scripts use that this ACL user may not run (see ``slotkeeper
        doctor``). Raises PermissionDenied if scripts cannot run at all."""
        return self.transport.run(P.probe_permissions(self.keys), retry=False)

    def list_limits(self) -> list[str]:
        """Every limit's name, sorted, read in pages (each call bounded, see P.LIST_PAGE)."""
        names: set[str] = set()
        cursor = 0
        while True:
            cursor, page = self.transport.run(P.scan_limits(self.keys, cursor))
            names.update(page)
            if cursor == 0:
                return sorted(names)

    def lease_record(self, lease_id: str) -> R.Holder | None:
        return self.transport.run(P.lease_record(self.keys, lease_id))

    def snapshot(self, name: str, max_items: int = 1000) -> R.Snapshot:
        self._fresh()
        return self.transport.run(P.snapshot(self.keys, name, max_items))

    def template_keys(self, template: str, limit: int = 100_000) -> list[tuple[str, int]]:
        """(key, last activity ms) of the keys made from a template, most recent first."""
        return self.transport.run(P.template_keys(self.keys, template, limit))

    def recent_template_keys(self, template: str, within_ms: int, limit: int) -> list[str]:
        """Keys of a template active within the last ``within_ms``, most recent first."""
        since = self.server_time_ms() - within_ms
        return self.transport.run(P.recent_template_keys(self.keys, template, since, limit))

    def reap_idle(self, template: str, batch: int = 200) -> int:
        """Remove keys of a template idle for its --idle-ttl (bounded calls); returns how many."""
        idle_ms = int(self.snapshot(template, 1).config.idle_ttl_s * 1000)
        removed = 0
        while True:
            cutoff = self.server_time_ms() - idle_ms
            cands = self.transport.run(P.idle_candidates(self.keys, template, cutoff, batch))
            if not cands:
                return removed
            n = self.transport.run(P.reap_idle(self.keys, template, cands))
            removed += n
            if n == 0:
                return removed

    # -- limits -------------------------------------------------------------------------------

    def create_limit(self, name: str, slots: int | None = None, ttl: float | None = None,
                     enabled: bool = True, description: str = "", *,
                     rate: Rate | str | None = None, spread: bool = False,
                     max_waiters: int | None = None, total: int | None = None,
                     idle_ttl: float | str | None = None) -> None:
        """Create a limit (or a template: a name ending in '*'). It needs slots, a rate, or both."""
        name = check_limit_name(name)
        if slots is None and rate is None:
            raise InvalidType(f"limit {name!r}: slots must be an int (or give a rate: N/s, N/min)")
        if slots is not None:
            check_slots(slots)
        if spread and rate is None:
            raise InvalidArgument("--spread needs a rate")
        args = P.config_args(
            slots, ttl if ttl is not None else 0, enabled, description, rate=rate,
            spread=spread if rate is not None else None, max_waiters=max_waiters, total=total,
            idle_ttl=idle_ttl, name=name, unset=("slots",) if slots is None else ())
        self.transport.run(P.limit_config(self.keys, name, "create", args))
        if is_template(name):
            self.templates(refresh=True)

    def update_limit(self, name: str, *, slots: int | None = None, ttl: float | None = None,
                     enabled: bool | None = None, description: str | None = None,
                     create: bool = False, rate: Rate | str | None = None,
                     spread: bool | None = None, max_waiters: int | None = None,
                     total: int | None = None, idle_ttl: float | str | None = None,
                     unset: Sequence[str] = ()) -> tuple[bool, list[str]]:
        """Change some fields; returns (created, changed field names)."""
        name = check_limit_name(name)
        args = P.config_args(slots, ttl, enabled, description, rate=rate, spread=spread,
                             max_waiters=max_waiters, total=total, idle_ttl=idle_ttl, name=name,
                             unset=unset)
        if create and slots is None and rate is None:
            raise InvalidArgument("creating a limit needs slots or a rate")
        self._fresh()
        result: tuple[bool, list[str]] = self.transport.run(
            P.limit_config(self.keys, name, "upsert" if create else "update", args))
        if is_template(name):
            self.templates(refresh=True)
        return result

    def delete_limit(self, name: str) -> None:
        while not self.transport.run(P.limit_delete(self.keys, name)):
            pass  # each step is bounded; LimitNotFound / LimitHeld raise

    # -- leases -------------------------------------------------------------------------------

    def acquire(self, names: Sequence[str], lease_id: str, deadline: float | None = None,
                **kwargs: Any) -> R.AcquireResult:
        """Take slots or join the queues (see :func:`slotkeeper.broker.protocol.acquire`)."""
        self._fresh()
        return self.transport.run(P.acquire(self.keys, names, lease_id, **kwargs), deadline)

    def cancel(self, names: Sequence[str], ticket_id: str, timed_out: bool,
               deadline: float | None = None, units_only_occupy: int = 0) -> R.AcquireResult:
        return self.transport.run(
            P.cancel(self.keys, names, ticket_id, timed_out, units_only_occupy), deadline)

    def settle(self, names: Sequence[str], request_id: str, taken: int, true_units: int,
               deadline: float | None = None) -> bool:
        """Correct the units a granted request took (see :func:`protocol.settle`)."""
        return self.transport.run(
            P.settle(self.keys, names, request_id, taken, true_units), deadline)

    def release(self, names: Sequence[str], lease_id: str, revoke: bool = False,
                deadline: float | None = None) -> bool:
        """True if the lease was held and is now released; False if it was already lost."""
        return self.transport.run(P.release(self.keys, names, lease_id, revoke), deadline)

    def renew_and_wait(self, lease_id: str, names: Sequence[str], ttl_ms: int, replicas: int,
                       timeout_ms: int) -> tuple[bool, int]:
        """Renew one lease, then WAIT for ``replicas`` acknowledgements, on ONE connection.

        WAIT only covers the writes of the connection it runs on, and a queued lease was granted
        by whichever client released the slot. The renewal is a write of ours made after the
        grant; replication is ordered, so once it is acknowledged the grant is on the replicas.
        Returns (the lease is still held, how many replicas acknowledged)."""
        hb, acked = self.transport.run_then_wait(
            P.heartbeat(self.keys, [(lease_id, names, ttl_ms)], []), replicas, timeout_ms)
        return lease_id not in hb.lost_leases + hb.failed_leases, acked

    def revoke(self, lease_id: str) -> bool:
        """Revoke one lease by id (its holder learns at its next heartbeat)."""
        if not isinstance(lease_id, str) or not lease_id:
            raise InvalidArgument("lease id must be a non-empty string")
        rec = self.lease_record(lease_id)
        if rec is None or rec.garbage:
            return False
        return self.release(rec.names, lease_id, revoke=True)

    def reset(self, name: str) -> int:
        """Revoke every lease of a limit, in bounded batches until none is left; returns how
        many were revoked."""
        n = 0
        while True:
            snap = self.snapshot(name, max_items=RESET_BATCH)
            if not snap.holders:
                return n
            progressed = False
            for h in snap.holders:
                if h.garbage:
                    progressed |= bool(
                        self.transport.run(P.drop_holder_entry(self.keys, name, h.lease_id)))
                elif self.release(h.names, h.lease_id, revoke=True):
                    n += 1
                    progressed = True
            if not progressed:  # every one vanished under us (expired or released): look again
                if not self.snapshot(name, max_items=1).holders:
                    return n

    def heartbeat(self, leases: Sequence[tuple[str, Sequence[str], int]],
                  tickets: Sequence[tuple[str, Sequence[str], int]],
                  deadline: float | None = None, retry: bool = True) -> R.HeartbeatResult:
        """Renew (id, names, ttl_ms) leases and tickets in one round trip."""
        return self.transport.run(P.heartbeat(self.keys, leases, tickets), deadline, retry)

    def reclaim(self, name: str | None, batch: int = 500) -> R.ReclaimResult:
        self._fresh()
        return self.transport.run(P.reclaim(self.keys, name, batch))

    def reclaim_all(self, name: str | None, batch: int = 500) -> int:
        """Reclaim until nothing is left (each call bounded); returns expired holder entries."""
        total = 0
        while True:
            r = self.reclaim(name, batch)
            total += r.expired
            if not r.more:
                return total


class AsyncBroker:
    """The asyncio twin of :class:`Broker` for the SDK's async path (same ops, same rules)."""

    def __init__(self, url: str, namespace: str = "default",
                 op_timeout: float = DEFAULT_OP_TIMEOUT, **kwargs: Any) -> None:
        from redis.asyncio.retry import Retry as AsyncRetry

        self.namespace = check_namespace(namespace)
        self.keys = Keys(self.namespace)
        self.url_redacted = redact(url)
        kwargs.setdefault("retry", AsyncRetry(NoBackoff(), 0))
        self.transport = AsyncTransport(connect_async(url, **kwargs), self.url_redacted,
                                        op_timeout)

    async def acquire(self, names: Sequence[str], lease_id: str, deadline: float | None = None,
                      **kwargs: Any) -> R.AcquireResult:
        return await self.transport.run(P.acquire(self.keys, names, lease_id, **kwargs), deadline)

    async def cancel(self, names: Sequence[str], ticket_id: str, timed_out: bool,
                     deadline: float | None = None, units_only_occupy: int = 0) -> R.AcquireResult:
        return await self.transport.run(
            P.cancel(self.keys, names, ticket_id, timed_out, units_only_occupy), deadline)

    async def settle(self, names: Sequence[str], request_id: str, taken: int, true_units: int,
                     deadline: float | None = None) -> bool:
        return await self.transport.run(
            P.settle(self.keys, names, request_id, taken, true_units), deadline)

    async def release(self, names: Sequence[str], lease_id: str, revoke: bool = False,
                      deadline: float | None = None) -> bool:
        return await self.transport.run(P.release(self.keys, names, lease_id, revoke), deadline)

    async def renew_and_wait(self, lease_id: str, names: Sequence[str], ttl_ms: int,
                             replicas: int, timeout_ms: int) -> tuple[bool, int]:
        hb, acked = await self.transport.run_then_wait(
            P.heartbeat(self.keys, [(lease_id, names, ttl_ms)], []), replicas, timeout_ms)
        return lease_id not in hb.lost_leases + hb.failed_leases, acked

    async def aclose(self) -> None:
        await self.transport.aclose()


def ensure_error(exc: BaseException) -> SlotkeeperError:
    return exc if isinstance(exc, SlotkeeperError) else BrokerError(str(exc))
