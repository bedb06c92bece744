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
    NoRate,
    OccupyExceedsLimit,
    QueueFull,
    SlotkeeperError,
)
from slotkeeper.broker.keys import (
    Keys,
    check_limit_name,
    check_name,
    check_namespace,
    is_template,
    template_prefix,
)
from slotkeeper.broker.rates import Rate, parse_duration, parse_rate
from slotkeeper.broker.scripts import Scripts

T = TypeVar("T")

RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0)  # bounded: about 2.5 s before BrokerUnavailable
MAX_PRIORITY = 1000
DELETE_BATCH = 500
TEMPLATE_CACHE_S = 2.0  # how long a client trusts its copy of the namespace's template names
NEED_KEYS_RETRIES = 3


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


def check_max_waiters(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidType(f"max_waiters must be an int, not {type(v).__name__}")
    if not 0 <= v <= 10**9:
        raise InvalidArgument(f"max_waiters must be between 0 and 1e9, got {v}")
    return v


def check_total(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidType(f"total must be an int, not {type(v).__name__}")
    if not 1 <= v <= 10**9:
        raise InvalidArgument(f"total must be between 1 and 1e9, got {v}")
    return v


def check_names(names: Iterable[object]) -> tuple[str, ...]:
    names = list(names)
    for n in names:
        if isinstance(n, str) and is_template(n) and n != "*":
            raise InvalidArgument(
                f"{n!r} is a template: acquire a name made from it (e.g. {template_prefix(n)}acme)"
            )
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
        self._templates: tuple[float, tuple[str, ...]] = (-1e9, ())

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

    def templates(self, refresh: bool = False) -> tuple[str, ...]:
        """The namespace's template names, longest first (cached for TEMPLATE_CACHE_S)."""
        at, names = self._templates
        now = time.monotonic()
        if refresh or now - at > TEMPLATE_CACHE_S:
            raw = self._call(lambda: self.redis.smembers(self.keys.templates))
            names = tuple(sorted((_s(x) for x in raw), key=lambda n: (-len(n), n)))
            self._templates = (now, names)
        return names

    def expand(self, names: Sequence[str], refresh: bool = False) -> list[str]:
        """``names`` followed by every template whose prefix matches one of them: a script can
        then make a key from its template, or read the template's config, without building key
        names itself."""
        out = list(names)
        tpls = self.templates(refresh)
        if not tpls:
            return out
        for n in names:
            if is_template(n):
                continue
            for t in tpls:
                if n.startswith(template_prefix(t)) and t not in out:
                    out.append(t)
        return out

    def _run(self, script: str, names: Sequence[str], args: Sequence[Any],
             retries: Sequence[float] = RETRY_DELAYS,
             on_retry: Callable[[], None] | None = None) -> Any:
        """Run a script on ``names`` (plus their matching templates). A script that needed the keys
        of a template the cached list did not name (NEED_KEYS) is run again with them."""
        full = self.expand(names)
        for _ in range(NEED_KEYS_RETRIES):
            keys = self.keys.for_limits(full)
            argv: list[Any] = [len(full), *full, *args]
            reply = self._call(lambda k=keys, a=argv: self._scripts.run(script, k, a),  # type: ignore[misc]
                               retries, on_retry)
            if not (isinstance(reply, list) and reply and reply[0] == R.NEED_KEYS
                    and len(reply) > 1 and is_template(_s(reply[1]))):
                return reply
            extra = _s(reply[1])
            if extra in full:
                return reply
            full.append(extra)
        return reply

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
            if reason == "norate":
                raise NoRate(name)
            if reason == "invalid":
                raise InvalidArgument(
                    f"limit {name!r} needs slots or a rate (--slots N and/or --rate N/P)")
            raise OccupyExceedsLimit(name, occupy, self.limit_slots(name))
        if code == R.NEED_KEYS:
            raise BrokerError(f"internal: script needed the keys of limit {_s(reply[1])!r}")
        if code == R.QUEUE_FULL:
            raise QueueFull(_s(reply[1]), int(reply[2]))

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
        full = self.expand(names)
        keys = self.keys.for_limits(full)
        argv: list[Any] = [len(full), *full, 1, lease_id, ttl_ms, 0]
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
                     description: str | None, *, rate: Rate | str | None = None,
                     spread: bool | None = None, max_waiters: int | None = None,
                     total: int | None = None, idle_ttl: float | str | None = None,
                     name: str = "", unset: Sequence[str] = ()) -> list[Any]:
        """Field/value pairs for limit_config. ``unset`` names settings to remove: ``slots``
        (a rate-only limit), ``rate``, ``max_waiters``, ``total``."""
        args: list[Any] = []
        bad = set(unset) - {"slots", "rate", "max_waiters", "total"}
        if bad:
            raise InvalidArgument(f"cannot unset {', '.join(sorted(bad))}")
        if slots is not None:
            args += ["slots", check_slots(slots)]
        elif "slots" in unset:
            args += ["slots", "none"]
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
        if rate is not None:
            r = parse_rate(rate)
            args += ["rate_n", r.units, "rate_p", r.period_ms]
        elif "rate" in unset:
            args += ["rate_n", "", "rate_p", "", "spread", ""]
        if spread is not None:
            if not isinstance(spread, bool):
                raise InvalidType("spread must be a bool")
            args += ["spread", 1 if spread else 0]
        if max_waiters is not None:
            args += ["maxw", check_max_waiters(max_waiters)]
        elif "max_waiters" in unset:
            args += ["maxw", ""]
        template = is_template(name)
        if total is not None:
            if not template:
                raise InvalidArgument(
                    f"--total applies to templates only (names ending in '*'), not {name!r}")
            args += ["total", check_total(total)]
        elif "total" in unset:
            args += ["total", ""]
        if idle_ttl is not None:
            if not template:
                raise InvalidArgument(
                    f"--idle-ttl applies to templates only (names ending in '*'), not {name!r}")
            args += ["idle", int(parse_duration(idle_ttl, "idle-ttl") * 1000)]
        return args

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
        args = self._config_args(
            slots, ttl if ttl is not None else 0, enabled, description, rate=rate,
            spread=spread if rate is not None else None, max_waiters=max_waiters, total=total,
            idle_ttl=idle_ttl, name=name, unset=("slots",) if slots is None else ())
        reply = self._run("limit_config", [name], ["create", *args])
        self.raise_for(reply)
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
        args = self._config_args(slots, ttl, enabled, description, rate=rate, spread=spread,
                                 max_waiters=max_waiters, total=total, idle_ttl=idle_ttl,
                                 name=name, unset=unset)
        if create and slots is None and rate is None:
            raise InvalidArgument("creating a limit needs slots or a rate")
        reply = self._run("limit_config", [name], ["upsert" if create else "update", *args])
        self.raise_for(reply)
        if is_template(name):
            self.templates(refresh=True)
        return bool(int(reply[1])), [_s(x) for x in reply[2:]]

    def delete_limit(self, name: str) -> None:
        name = check_limit_name(name)
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
        return sorted(_s(x) for x in raw)

    def snapshot(self, name: str, max_items: int = 1000) -> R.Snapshot:
        name = check_limit_name(name)
        reply = self._run("snapshot", [name], [max_items])
        if int(reply[0]) == R.NOT_FOUND:
            raise LimitNotFound(name, self.namespace)
        _, conf_flat, used, now, holders, waiters, n_h, n_w, tname, tflat_raw = reply[:10]
        in_window, room, n_keys = (int(x) for x in reply[10:13])
        flat = {_s(conf_flat[i]): _s(conf_flat[i + 1]) for i in range(0, len(conf_flat), 2)}
        tflat = {_s(tflat_raw[i]): _s(tflat_raw[i + 1]) for i in range(0, len(tflat_raw), 2)}
        problems: list[str] = []
        if _s(tname) and not tflat:
            problems.append(f"limit {name!r}: its template {_s(tname)!r} is gone")
        conf, counters = R.parse_config(name, flat, problems, _s(tname),
                                        tflat if _s(tname) else None)
        hs = []
        for i in range(0, len(holders), 2):
            h = R.holder_from(_s(holders[i]), R.decode_record(holders[i + 1]))
            if h.garbage:
                problems.append(f"limit {name!r}: lease {h.lease_id} has an unreadable record")
            hs.append(h)
        ws = []
        for i in range(0, len(waiters), 3):
            w = R.waiter_from(_s(waiters[i]), R.decode_record(waiters[i + 1]))
            if w.garbage:
                problems.append(f"limit {name!r}: ticket {w.ticket_id} has an unreadable record")
            ws.append(w)
        return R.Snapshot(conf, counters, int(used), int(now), hs, ws, int(n_h), int(n_w), problems,
                          in_window, room, n_keys)

    def template_keys(self, template: str, limit: int = 100_000) -> list[tuple[str, int]]:
        """(key, last activity ms) of the keys made from a template, most recent first."""
        raw = self._call(lambda: self.redis.zrange(
            self.keys.template_keys(template), 0, limit - 1, desc=True, withscores=True))
        return [(_s(item[0]), int(item[1])) for item in raw]

    def reap_idle(self, template: str, batch: int = 200) -> int:
        """Remove keys of a template idle for its --idle-ttl (bounded calls); returns how many."""
        idle_ms = int(self.snapshot(template, 1).config.idle_ttl_s * 1000)
        removed = 0
        while True:
            cutoff = self.server_time_ms() - idle_ms
            cands = [_s(x) for x in self._call(lambda c=cutoff: self.redis.zrange(  # type: ignore[misc]
                self.keys.template_keys(template), "-inf", c, byscore=True, offset=0, num=batch))]
            if not cands:
                return removed
            r = self._call(lambda c=cands: self._scripts.run(  # type: ignore[misc]
                "reap_idle", self.keys.for_limits([template, *c]), [1 + len(c), template, *c]))
            removed += int(r[0])
            if int(r[0]) == 0:
                return removed

    # -- leases -------------------------------------------------------------------------------

    def acquire(self, names: Sequence[str], lease_id: str, *, occupy: int = 1, ttl_ms: int = 0,
                default_ttl_ms: int = 30000, priority: int = 0, wait: bool = True,
                channel: str = "", meta: bytes = b"\x80", default_slots: int | None = None,
                recheck: bool = False, units_only: bool = False) -> R.AcquireResult:
        """Take slots or join the queues. Raises LimitNotFound / OccupyExceedsLimit.

        ``recheck=True`` re-asks about an id already sent: LOST if its ticket and lease are gone
        (the caller then asks with a new id), never a fresh start under the old id.
        ``units_only=True`` (rate_limit) takes rate units only: no lease (token 0).
        Raises QueueFull when the request would exceed a limit's --max-waiters."""
        ds = -1 if default_slots is None else check_slots(default_slots)
        mode = (2 if recheck else 1) if wait else 0
        args = [lease_id, occupy, ttl_ms, default_ttl_ms, priority, mode, channel, meta, ds,
                1 if units_only else 0]
        reply = self._run("acquire", names, args)
        if int(reply[0]) == R.NOT_FOUND and self.expand(names) != self.expand(names, True):
            reply = self._run("acquire", names, args)  # a template made since our cached list
        return self._acquire_result(reply, occupy)

    def _acquire_result(self, reply: list[Any], occupy: int) -> R.AcquireResult:
        code = int(reply[0])
        if code == R.GRANTED:
            return R.AcquireResult(code, token=int(reply[1]), expires_ms=int(reply[2]),
                                   ttl_ms=int(reply[3]) if len(reply) > 3 else 0)
        if code == R.QUEUED:
            return R.AcquireResult(code, position=int(reply[1]), next_check_ms=int(reply[2]),
                                   due_ms=int(reply[3]) if len(reply) > 3 else 0)
        if code in (R.BUSY, R.LOST, R.CANCELLED, R.OK):
            return R.AcquireResult(code)
        self.raise_for(reply, occupy)
        raise BrokerError(f"unexpected reply {reply!r}")

    def cancel(self, names: Sequence[str], ticket_id: str, timed_out: bool,
               units_only_occupy: int = 0) -> R.AcquireResult:
        """Withdraw a ticket. GRANTED if it was granted meanwhile (for a units-only request, pass
        its occupy so a grant of its units is found)."""
        reply = self._run("cancel", names, [ticket_id, 1 if timed_out else 0, units_only_occupy])
        return self._acquire_result(reply, 0)

    def settle(self, names: Sequence[str], request_id: str, taken: int, true_units: int) -> bool:
        """Correct the units a granted request took from its limits' rate windows (``taken`` ->
        ``true_units``). False if no window holds its batch any more (too late to settle)."""
        if isinstance(true_units, bool) or not isinstance(true_units, int):
            raise InvalidType("units must be an int")
        if not 0 <= true_units <= 10**9:
            raise InvalidArgument(f"units must be between 0 and 1e9, got {true_units}")
        reply = self._run("settle", names, [request_id, taken, true_units])
        return int(reply[0]) == R.OK

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
        return R.ReclaimResult(int(r[0]), int(r[1]), int(r[2]), int(r[3]), bool(int(r[4])))

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
