"""``slotkeeper doctor``: the Redis settings that silently break a limiter, and how to fix each.

Reads only what a restricted ACL user may read (``INFO``, never ``CONFIG``), plus a permission probe
that runs every command the scripts use on one key of the namespace (lua/doctor_probe.lua). Each
check ends at a :class:`Level`; DANGER means slotkeeper's promises do not hold with this server
(over-admission, failed acquires), WARN means something is lost or slow when things go wrong.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

import redis

from slotkeeper.broker import functions as F
from slotkeeper.broker.client import Broker
from slotkeeper.broker.connection import redact
from slotkeeper.broker.errors import (
    BrokerError,
    BrokerUnavailable,
    FunctionLibraryMismatch,
    FunctionLibraryMissing,
    PermissionDenied,
)
from slotkeeper.broker.scripts import source

T = TypeVar("T")

MIN_VERSION = (6, 2, 0)  # ZRANGE BYSCORE LIMIT, and what the scripts were tested on
LATENCY_PINGS = 20
LATENCY_WARN_MS = 10.0
CLOCK_SAMPLES = 4
CLOCK_SPACING = 0.2  # s between TIME samples
CLOCK_WARN_MS = 50.0
CLOCK_DANGER_MS = 500.0
HEADROOM_WARN = 0.25
HEADROOM_DANGER = 0.10

# Commands the client sends itself (the scripts' own are probed by lua/doctor_probe.lua).
CLIENT_COMMANDS = ("ping", "time", "info", "smembers", "sscan", "wait", "script|load",
                   "evalsha", "subscribe", "xrevrange", "xread")  # fmt: skip


class Level(str, Enum):
    OK = "ok"
    NOTE = "note"  # worth knowing, nothing breaks
    WARN = "warn"
    DANGER = "danger"
    UNKNOWN = "unknown"  # could not be checked (e.g. INFO refused)

    @property
    def gauge(self) -> float:
        """The value exported as ``slotkeeper_doctor_check``: 0 fine, 1 warn, 2 danger, -1 ?."""
        return {"ok": 0.0, "note": 0.0, "warn": 1.0, "danger": 2.0, "unknown": -1.0}[self.value]


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    summary: str
    fix: str = ""
    value: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "level": self.level.value,
            "summary": self.summary,
            "fix": self.fix,
            "value": self.value,
        }


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def dangerous(self) -> bool:
        return any(c.level is Level.DANGER for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"dangerous": self.dangerous, "checks": [c.as_dict() for c in self.checks]}


def _call(broker: Broker, fn: Callable[[], T]) -> T:
    """A direct read, with redis errors turned into slotkeeper's (PermissionDenied for NOPERM)."""
    try:
        return fn()
    except redis.exceptions.NoPermissionError as exc:
        raise PermissionDenied(f"Redis ACL: {redact(str(exc))}") from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BrokerUnavailable(f"Redis at {broker.url_redacted}: {redact(str(exc))}") from exc
    except redis.RedisError as exc:
        raise BrokerError(f"Redis error: {redact(str(exc))}") from exc


def _version(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def _int(info: dict[str, Any], key: str) -> int:
    try:
        return int(info.get(key, 0))
    except (TypeError, ValueError):
        return 0


def check_eviction(info: dict[str, Any]) -> Check:
    policy = str(info.get("maxmemory_policy", "?"))
    if policy == "noeviction":
        return Check("eviction", Level.OK, "maxmemory-policy noeviction", value=policy)
    return Check(
        "eviction",
        Level.DANGER,
        f"maxmemory-policy is {policy}: under memory pressure Redis may evict lease records "
        "and holder sets, and a limit then admits more holders than its slots",
        "set `maxmemory-policy noeviction` in redis.conf (see deploy/redis/redis.conf)",
        policy,
    )


def check_persistence(info: dict[str, Any]) -> Check:
    if _int(info, "aof_enabled"):
        return Check("persistence", Level.OK, "AOF is on", value="aof")
    return Check(
        "persistence",
        Level.WARN,
        "AOF is off: a restart loses the limits created since the last RDB snapshot (or all "
        "of them without one), and acquires then fail with LimitNotFound",
        "set `appendonly yes` (and `appendfsync everysec`) in redis.conf",
        "off",
    )


def check_version(info: dict[str, Any]) -> Check:
    text = str(info.get("redis_version", "0"))
    v = _version(text)
    if v < MIN_VERSION:
        return Check(
            "version",
            Level.DANGER,
            f"Redis {text} is older than 6.2: the scripts use commands it does not have",
            "upgrade to Redis 6.2 or newer (7.x recommended)",
            text,
        )
    return Check("version", Level.OK, f"Redis {text}", value=text)


def check_replicas(info: dict[str, Any]) -> Check:
    role = str(info.get("role", "?"))
    if role != "master":
        return Check(
            "replicas",
            Level.DANGER,
            f"connected to a {role}: every acquire and release is a write and fails there",
            "point SLOTKEEPER_URL at the primary (or use redis+sentinel://)",
            role,
        )
    n = _int(info, "connected_slaves")
    if n == 0:
        return Check(
            "replicas",
            Level.NOTE,
            "no replica: durable=True acquires fail, and a lost server loses every lease",
            "add a replica (and Sentinel) if durable=True or failover matters",
            0,
        )
    return Check("replicas", Level.OK, f"{n} replica(s) connected", value=n)


def check_memory(info: dict[str, Any]) -> Check:
    used, limit = _int(info, "used_memory"), _int(info, "maxmemory")
    if limit <= 0:
        return Check(
            "memory",
            Level.NOTE,
            f"no maxmemory set ({used / 2**20:.1f} MiB used): Redis grows until the machine "
            "runs out",
            "set maxmemory (with maxmemory-policy noeviction) to fail writes cleanly instead",
            None,
        )
    headroom = 1.0 - used / limit
    summary = (
        f"{used / 2**20:.1f} of {limit / 2**20:.1f} MiB used ({headroom:.0%} headroom); "
        "at the limit every acquire fails (OOM)"
    )
    fix = "raise maxmemory or free memory in this Redis"
    if headroom < HEADROOM_DANGER:
        return Check("memory", Level.DANGER, summary, fix, round(headroom, 4))
    if headroom < HEADROOM_WARN:
        return Check("memory", Level.WARN, summary, fix, round(headroom, 4))
    return Check("memory", Level.OK, summary.split(";")[0], value=round(headroom, 4))


def check_latency(broker: Broker, pings: int = LATENCY_PINGS) -> Check:
    samples = []
    for _ in range(pings):
        t0 = time.perf_counter()
        _call(broker, broker.redis.ping)
        samples.append((time.perf_counter() - t0) * 1000)
    p50, worst = statistics.median(samples), max(samples)
    summary = f"round trip p50 {p50:.2f} ms, max {worst:.2f} ms over {pings} PINGs"
    if p50 > LATENCY_WARN_MS:
        return Check(
            "latency",
            Level.WARN,
            summary + ": every acquire, release and heartbeat pays it",
            "run the clients closer to Redis, or check the network/TLS proxy",
            round(p50, 3),
        )
    return Check("latency", Level.OK, summary, value=round(p50, 3))


def _server_ms(broker: Broker) -> int:
    sec, usec = _call(broker, broker.redis.time)
    return int(sec) * 1000 + int(usec) // 1000


def check_clock(
    broker: Broker,
    samples: int = CLOCK_SAMPLES,
    spacing: float = CLOCK_SPACING,
    server_ms: Callable[[], int] | None = None,
) -> Check:
    """Redis's clock against this machine's monotonic clock over a few TIME calls: the server's
    advance must lie within the local window (before/after each call) up to a small slack.
    ``server_ms`` reads the server clock (default: Redis TIME through ``broker``)."""
    read = server_ms or (lambda: _server_ms(broker))
    b0 = time.monotonic()
    s0 = read()
    a0 = time.monotonic()
    worst = 0.0
    for _ in range(samples - 1):
        time.sleep(spacing)
        b = time.monotonic()
        s = read()
        a = time.monotonic()
        lo, hi = (b - a0) * 1000, (a - b0) * 1000
        moved = s - s0
        off = lo - moved if moved < lo else (moved - hi if moved > hi else 0.0)
        worst = max(worst, off)
    summary = f"Redis's clock moved with this machine's within {worst:.0f} ms"
    if worst >= CLOCK_WARN_MS:
        level = Level.DANGER if worst >= CLOCK_DANGER_MS else Level.WARN
        return Check(
            "clock",
            level,
            f"Redis's clock jumped {worst:.0f} ms between calls: leases expire early "
            "(over-admission) or late",
            "run NTP with slewing (chrony/ntpd), never step the clock of the Redis host",
            round(worst, 1),
        )
    return Check("clock", Level.OK, summary, value=round(worst, 1))


def _probe_client(broker: Broker) -> list[str]:
    """Commands the client sends itself that the user may not run."""
    r = broker.redis
    keys = broker.keys
    probes: dict[str, Callable[[], object]] = {
        "ping": r.ping,
        "time": r.time,
        "info": lambda: r.info("server"),
        "smembers": lambda: r.smembers(keys.templates),
        "sscan": lambda: r.sscan(keys.limits, 0, count=1),
        "wait": lambda: r.execute_command("WAIT", 0, 0),  # type: ignore[no-untyped-call]
        "xrevrange": lambda: r.xrevrange(keys.events, count=1),
        "xread": lambda: r.xread({keys.events: "0-0"}, count=1),
    }
    refused = []
    for name, fn in probes.items():
        try:
            _call(broker, fn)
        except PermissionDenied:
            refused.append(name)
    if _script_path(broker) != F.FUNCTIONS:  # the library (FCALL) needs no EVALSHA nor SCRIPT
        try:
            _call(broker, lambda: r.evalsha("0" * 40, 0))
        except PermissionDenied:
            refused.append("evalsha")
        except BrokerError:  # NOSCRIPT: allowed
            pass
        try:
            _call(broker, lambda: r.script_load(source("doctor_probe")))  # EVALSHA finds it next
        except PermissionDenied:
            refused.append("script|load")
    pubsub = r.pubsub()  # type: ignore[no-untyped-call]
    try:
        _call(broker, lambda: pubsub.subscribe(keys.wake_channel("doctor")))
        _call(broker, lambda: pubsub.get_message(timeout=1.0))
    except PermissionDenied:
        refused.append("subscribe")
    finally:
        pubsub.close()
    return refused


def _script_path(broker: Broker) -> str:
    """The transport's script path; a library it cannot use (missing, other version) counts as
    the EVALSHA path here (check_permissions then names the fix)."""
    try:
        return broker.transport.script_path()
    except (FunctionLibraryMissing, FunctionLibraryMismatch):
        return F.EVALSHA_UNLOADED


def check_permissions(broker: Broker) -> Check:
    refused = _probe_client(broker)
    if not {"evalsha", "script|load"} & set(refused):
        refused += broker.probe_permissions()
    if refused:
        grants = " ".join(f"+{c}" for c in refused)
        fix = f"grant `{grants}` (deploy/redis/users.acl is the complete line)"
        if {"evalsha", "script|load"} & set(refused) and _script_path(broker) == F.EVALSHA_UNLOADED:
            fix += f", or (Redis >= 7) run `{F.LOAD_COMMAND}` as an admin once"
        return Check(
            "permissions",
            Level.DANGER,
            f"the ACL user may not run: {', '.join(refused)}; calls that need them fail",
            fix,
            refused,
        )
    return Check("permissions", Level.OK, "every command slotkeeper uses is permitted", value=[])


INFO_CHECKS: Sequence[Callable[[dict[str, Any]], Check]] = (
    check_eviction,
    check_persistence,
    check_version,
    check_replicas,
    check_memory,
)
INFO_CHECK_NAMES = ("eviction", "persistence", "version", "replicas", "memory")


def run(broker: Broker, clock_samples: int = CLOCK_SAMPLES) -> Report:
    """Every check. Raises BrokerUnavailable when Redis cannot be reached at all."""
    report = Report()
    try:
        info: dict[str, Any] | None = _call(broker, broker.redis.info)
    except PermissionDenied:
        info = None
    if info is None:
        report.checks += [
            Check(n, Level.UNKNOWN, "INFO is refused to this ACL user", "grant `+info`")
            for n in INFO_CHECK_NAMES
        ]
    else:
        report.checks += [check(info) for check in INFO_CHECKS]
    report.checks.append(check_permissions(broker))
    report.checks.append(check_latency(broker))
    report.checks.append(check_clock(broker, clock_samples))
    return report
