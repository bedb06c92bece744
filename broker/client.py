"""The typed Broker client: one method per Lua script, status codes turned into exceptions in one
place (:func:`raise_for`), Redis errors wrapped at this boundary, bounded retries with backoff.

Every mutating script is idempotent on its client-made id, so re-sending after a lost reply is safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import redis
from redis import Redis

from slotkeeper.broker import records as R
from slotkeeper.broker.connection import connect, redact
from slotkeeper.broker.errors import (
    BrokerError,
    BrokerUnavailable,
    InvalidArgument,
    InvalidType,
    LimitExists,
    LimitHeld,
    LimitNotFound,
    OccupyExceedsLimit,
    SlotkeeperError,
)
from slotkeeper.broker.keys import Keys, check_name, check_namespace, printable
from slotkeeper.broker.scripts import Scripts

T = TypeVar("T")

RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0)  # bounded: about 2.5 s before BrokerUnavailable
MAX_PRIORITY = 1000
DELETE_BATCH = 500


def _s(v: Any) -> str:
    return v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v)


def check_slots(slots: object) -> int:
    if isinstance(slots, bool) or not isinstance(slots, int):
        raise InvalidType(f"slots must be an int, not {type(slots).__name__}")
    if slots < 0:
        raise InvalidArgument(f"slots must be >= 0, got {slots}")
    if slots > 10**9:
        raise InvalidArgument(f"slots must be <= 1e9, got {slots}")
    return slots


def check_occupy(occupy: object) -> int:
    if isinstance(occupy, bool) or not isinstance(occupy, int):
        raise InvalidType(f"occupy must be an int, not {type(occupy).__name__}")
    if occupy < 1:
        raise InvalidArgument(f"occupy must be >= 1, got {occupy}")
    if occupy > 10_000:
        raise InvalidArgument(f"occupy must be <= 10000, got {occupy}")
    return occupy


def check_ttl(ttl: object, what: str = "ttl") -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise InvalidType(f"{what} must be a number of seconds, not {type(ttl).__name__}")
    if not (ttl == ttl) or ttl < 0.05 or ttl > 86400 * 30:
        raise InvalidArgument(f"{what} must be between 0.05 s and 30 days, got {ttl}")
    return float(ttl)


def check_priority(priority: object) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidType(f"priority must be an int, not {type(priority).__name__}")
    if abs(priority) > MAX_PRIORITY:
        raise InvalidArgument(f"priority must be between -{MAX_PRIORITY} and {MAX_PRIORITY}")
    return priority


def check_names(names: Iterable[object]) -> tuple[str, ...]:
    out = tuple(check_name(n) for n in names)
    if not out:
        raise InvalidArgument("at least one limit name is required")
    if len(set(out)) != len(out):
        raise InvalidArgument(f"limit names repeat: {', '.join(out)}")
    return out


class Broker:
    """Typed access to one namespace of a Redis server."""

    def __init__(self, client: Redis, namespace: str = "default", url: str | None = None) -> None:
        self.namespace = check_namespace(namespace)
        self.keys = Keys(self.namespace)
        self.redis = client
        self.url_redacted = redact(url) if url else "(client)"
        self._scripts = Scripts(client)

    @classmethod
    def from_url(cls, url: str, namespace: str = "default", **kwargs: Any) -> Broker:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        return cls(connect(url, **kwargs), namespace, url)

    def close(self) -> None:
        self.redis.close()

    # -- plumbing -----------------------------------------------------------------------------

    def _call(self, fn: Callable[[], T], retries: Sequence[float] = RETRY_DELAYS,
              on_retry: Callable[[], None] | None = None) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError) as exc:
                if attempt >= len(retries):
                    raise BrokerUnavailable(
                        f"Redis at {self.url_redacted} unreachable after {attempt + 1} tries: "
                        f"{type(exc).__name__}: {redact(str(exc))[:300]}"
                    ) from exc
                time.sleep(retries[attempt])
                attempt += 1
                if on_retry is not None:
                    on_retry()
            except redis.ResponseError as exc:
                raise BrokerError(f"Redis error: {redact(str(exc))}") from exc
            except redis.RedisError as exc:
                raise BrokerError(f"Redis client error: {redact(str(exc))}") from exc

    def _run(self, script: str, names: Sequence[str], args: Sequence[Any],
             retries: Sequence[float] = RETRY_DELAYS,
             on_retry: Callable[[], None] | None = None) -> Any:
        keys = self.keys.for_limits(list(names))
        argv: list[Any] = [len(names), *names, *args]
        return self._call(lambda: self._scripts.run(script, keys, argv), retries, on_retry)

    def raise_for(self, reply: list[Any], occupy: int = 0) -> None:
        """Map a script's error status to the exception it means (the one place that does)."""
        code = int(reply[0])
        if code == R.NOT_FOUND:
            raise LimitNotFound(_s(reply[1]) if len(reply) > 1 else "?", self.namespace)
        if code == R.OCCUPY_EXCEEDS:
            raise OccupyExceedsLimit(_s(reply[1]), occupy, int(reply[2]))
        if code == R.EXISTS:
            raise LimitExists(_s(reply[1]))
        if code == R.REJECTED:
            reason, name = _s(reply[1]), _s(reply[2])
            if reason == "missing":
                raise LimitNotFound(name, self.namespace)
            raise OccupyExceedsLimit(name, occupy, self.limit_slots(name))
        if code == R.NEED_KEYS:
            raise BrokerError(f"internal: script needed the keys of limit {_s(reply[1])!r}")

    def limit_slots(self, name: str) -> int:
        raw = self._call(lambda: self.redis.hget(self.keys.limit(name)[0], "slots"))
        try:
            return int(raw) if raw is not None else 0
        except ValueError:
            return 0

    def ping(self) -> bool:
        return bool(self._call(lambda: self.redis.ping(), retries=()))

    def wait_replicas(self, replicas: int, timeout_ms: int) -> int:
        """WAIT until ``replicas`` replicas acknowledged our writes; returns how many did."""
        return int(self._call(lambda: self.redis.execute_command(  # type: ignore[no-untyped-call]
            "WAIT", replicas, timeout_ms)))

    def renew_and_wait(self, lease_id: str, names: Sequence[str], ttl_ms: int, replicas: int,
                       timeout_ms: int) -> tuple[bool, int]:
        """Renew one lease, then WAIT for ``replicas`` acknowledgements, on ONE connection.

        WAIT only covers the writes of the connection it runs on, and a queued lease was granted
        by whichever client released the slot. The renewal is a write of ours made after the
        grant; replication is ordered, so once it is acknowledged the grant is on the replicas.
        Returns (the lease is still held, how many replicas acknowledged)."""
        keys = self.keys.for_limits(list(names))
        argv: list[Any] = [len(names), *names, 1, lease_id, ttl_ms, 0]
        target: Any = self.redis
        if hasattr(target, "get_node_from_key"):  # Redis Cluster: the namespace's node
            target = target.get_redis_connection(target.get_node_from_key(keys[0]))

        def go() -> tuple[list[Any], int]:
            for _ in range(2):
                pipe = target.pipeline(transaction=False)
                pipe.execute_command("EVALSHA", self._scripts.sha("heartbeat"), len(keys), *keys,
                                     *argv)
                pipe.execute_command("WAIT", replicas, timeout_ms)
                hb, acked = pipe.execute(raise_on_error=False)
                if isinstance(hb, redis.exceptions.NoScriptError):
                    self._scripts.run("heartbeat", keys, argv)  # loads the script (and renews)
                    continue
                for res in (hb, acked):
                    if isinstance(res, Exception):
                        raise res
                return hb, int(acked)
            raise BrokerError("internal: the heartbeat script could not be loaded")

        hb, acked = self._call(go)
        return lease_id not in {_s(x) for x in hb[0]}, acked

    def server_time_ms(self) -> int:
        sec, usec = self._call(lambda: self.redis.time())
        return int(sec) * 1000 + int(usec) // 1000

    # -- limits -------------------------------------------------------------------------------

    def _config_args(self, slots: int | None, ttl: float | None, enabled: bool | None,
                     description: str | None) -> list[Any]:
        args: list[Any] = []
        if slots is not None:
            args += ["slots", check_slots(slots)]
        if ttl is not None:
            args += ["ttl", 0 if ttl == 0 else int(check_ttl(ttl) * 1000)]
        if enabled is not None:
            if not isinstance(enabled, bool):
                raise InvalidType("enabled must be a bool")
            args += ["enabled", 1 if enabled else 0]
        if description is not None:
            if not isinstance(description, str):
                raise InvalidType("description must be a str")
            if len(description) > 1000:
                raise InvalidArgument("description is longer than 1000 characters")
            args += ["desc", description]
        return args

    def create_limit(self, name: str, slots: int, ttl: float | None = None,
                     enabled: bool = True, description: str = "") -> None:
        name = check_name(name)
        check_slots(slots)  # required here (None would mean "unchanged" to _config_args)
        args = self._config_args(slots, ttl if ttl is not None else 0, enabled, description)
        reply = self._run("limit_config", [name], ["create", *args])
        self.raise_for(reply)

    def update_limit(self, name: str, *, slots: int | None = None, ttl: float | None = None,
                     enabled: bool | None = None, description: str | None = None,
                     create: bool = False) -> tuple[bool, list[str]]:
        """Change some fields; returns (created, changed field names)."""
        name = check_name(name)
        args = self._config_args(slots, ttl, enabled, description)
        if create and slots is None:
            raise InvalidArgument("creating a limit needs slots")
        reply = self._run("limit_config", [name], ["upsert" if create else "update", *args])
        self.raise_for(reply)
        return bool(int(reply[1])), [_s(x) for x in reply[2:]]

    def delete_limit(self, name: str) -> None:
        name = check_name(name)
        while True:
            reply = self._run("limit_delete", [name], [DELETE_BATCH])
            code = int(reply[0])
            if code == R.NOT_FOUND:
                raise LimitNotFound(name, self.namespace)
            if code == R.HELD:
                raise LimitHeld(name, int(reply[1]))
            if code == R.OK:
                return

    def list_limits(self) -> list[str]:
        raw = self._call(lambda: self.redis.smembers(self.keys.limits))
        return sorted(printable(_s(x)) for x in raw)  # bytes that are not UTF-8: U+FFFD

    def snapshot(self, name: str, max_items: int = 1000) -> R.Snapshot:
        name = check_name(name)
        reply = self._run("snapshot", [name], [max_items])
        if int(reply[0]) == R.NOT_FOUND:
            raise LimitNotFound(name, self.namespace)
        _, conf_flat, used, now, holders, waiters, n_h, n_w = reply
        flat = {_s(conf_flat[i]): _s(conf_flat[i + 1]) for i in range(0, len(conf_flat), 2)}
        problems: list[str] = []
        conf, counters = R.parse_config(name, flat, problems)
        config_problems = list(problems)
        hs = []
        for i in range(0, len(holders), 2):
            rec = R.decode_record(holders[i + 1])
            h = R.holder_from(_s(holders[i]), rec)
            if h.garbage:
                problems.append(f"limit {name!r}: lease {h.lease_id} has an unreadable record")
            elif rec is not None and R.bad_fields(rec):
                problems.append(f"limit {name!r}: lease {h.lease_id} has unreadable fields "
                                f"{', '.join(R.bad_fields(rec))}")
            hs.append(h)
        ws = []
        for i in range(0, len(waiters), 3):
            rec = R.decode_record(waiters[i + 1])
            w = R.waiter_from(_s(waiters[i]), rec)
            if w.garbage:
                problems.append(f"limit {name!r}: ticket {w.ticket_id} has an unreadable record")
            elif rec is not None and R.bad_fields(rec):
                problems.append(f"limit {name!r}: ticket {w.ticket_id} has unreadable fields "
                                f"{', '.join(R.bad_fields(rec))}")
            ws.append(w)
        return R.Snapshot(conf, counters, int(used), int(now), hs, ws, int(n_h), int(n_w), problems,
                          config_problems)

    # -- leases -------------------------------------------------------------------------------

    def acquire(self, names: Sequence[str], lease_id: str, *, occupy: int = 1, ttl_ms: int = 0,
                default_ttl_ms: int = 30000, priority: int = 0, wait: bool = True,
                channel: str = "", meta: bytes = b"\x80", default_slots: int | None = None,
                recheck: bool = False) -> R.AcquireResult:
        """Take slots or join the queues. Raises LimitNotFound / OccupyExceedsLimit.

        ``recheck=True`` re-asks about an id already sent: LOST if its ticket and lease are gone
        (the caller then asks with a new id), never a fresh start under the old id."""
        ds = -1 if default_slots is None else check_slots(default_slots)
        mode = (2 if recheck else 1) if wait else 0
        reply = self._run("acquire", names, [
            lease_id, occupy, ttl_ms, default_ttl_ms, priority, mode, channel, meta, ds,
        ])
        return self._acquire_result(reply, occupy)

    def _acquire_result(self, reply: list[Any], occupy: int) -> R.AcquireResult:
        code = int(reply[0])
        if code == R.GRANTED:
            return R.AcquireResult(code, token=int(reply[1]), expires_ms=int(reply[2]),
                                   ttl_ms=int(reply[3]) if len(reply) > 3 else 0)
        if code == R.QUEUED:
            return R.AcquireResult(code, position=int(reply[1]), next_check_ms=int(reply[2]))
        if code in (R.BUSY, R.LOST, R.CANCELLED, R.OK):
            return R.AcquireResult(code)
        self.raise_for(reply, occupy)
        raise BrokerError(f"unexpected reply {reply!r}")

    def cancel(self, names: Sequence[str], ticket_id: str, timed_out: bool) -> R.AcquireResult:
        reply = self._run("cancel", names, [ticket_id, 1 if timed_out else 0])
        return self._acquire_result(reply, 0)

    def release(self, names: Sequence[str], lease_id: str, revoke: bool = False) -> bool:
        """True if the lease was held and is now released; False if it was already lost.

        A retry after a lost reply may find the lease gone because the first try released it:
        that counts as released."""
        retried: list[bool] = []
        reply = self._run("release", names, [lease_id, "revoke" if revoke else "release"],
                          on_retry=lambda: retried.append(True))
        code = int(reply[0])
        if code == R.NEED_KEYS:
            self.raise_for(reply)
        return code == R.OK or (code == R.LOST and bool(retried))

    def lease_record(self, lease_id: str) -> R.Holder | None:
        raw = self._call(lambda: self.redis.hget(self.keys.leases, lease_id))
        if raw is None:
            return None
        return R.holder_from(lease_id, R.decode_record(raw))

    def revoke(self, lease_id: str) -> bool:
        """Revoke one lease by id (its holder learns at its next heartbeat)."""
        if not isinstance(lease_id, str) or not lease_id:
            raise InvalidArgument("lease id must be a non-empty string")
        rec = self.lease_record(lease_id)
        if rec is None or rec.garbage:
            return False
        return self.release(rec.names, lease_id, revoke=True)

    def reset(self, name: str) -> int:
        """Revoke every lease of a limit; returns how many were revoked."""
        n = 0
        snap = self.snapshot(name, max_items=100_000)
        for h in snap.holders:
            if h.garbage:
                self._call(lambda h=h: self.redis.zrem(self.keys.limit(name)[1], h.lease_id))  # type: ignore[misc]
                continue
            if self.release(h.names, h.lease_id, revoke=True):
                n += 1
        return n

    def heartbeat(self, leases: Sequence[tuple[str, Sequence[str], int]],
                  tickets: Sequence[tuple[str, Sequence[str], int]]) -> R.HeartbeatResult:
        """Renew (id, names, ttl_ms) leases and tickets in one round trip."""
        names: list[str] = []
        seen: set[str] = set()
        for _, ns, _ in [*leases, *tickets]:
            for n in ns:
                if n not in seen:
                    seen.add(n)
                    names.append(n)
        args: list[Any] = [len(leases)]
        for lid, _, ttl in leases:
            args += [lid, ttl]
        args.append(len(tickets))
        for tid, _, ttl in tickets:
            args += [tid, ttl]
        lost, lost_t, granted, now = self._run("heartbeat", names, args, retries=RETRY_DELAYS[:3])
        return R.HeartbeatResult(
            [_s(x) for x in lost], [_s(x) for x in lost_t], [_s(x) for x in granted], int(now)
        )

    def reclaim(self, name: str | None, batch: int = 500) -> R.ReclaimResult:
        names = [name] if name is not None else []
        r = self._run("reclaim", names, [batch])
        return R.ReclaimResult(int(r[0]), int(r[1]), int(r[2]), int(r[3]), bool(int(r[4])),
                               int(r[5]) if len(r) > 5 else 0)

    def reclaim_all(self, name: str | None, batch: int = 500, max_calls: int = 10_000) -> int:
        """Reclaim until nothing is left (each call bounded); returns expired holder entries."""
        total = 0
        for _ in range(max_calls):
            r = self.reclaim(name, batch)
            total += r.expired
            if not r.more:
                break
        return total


def ensure_error(exc: BaseException) -> SlotkeeperError:
    return exc if isinstance(exc, SlotkeeperError) else BrokerError(str(exc))
