"""Typed views of what the scripts return and of the msgpack records they store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from slotkeeper.broker.codes import Status
from slotkeeper.broker.keys import WAIT_BUCKETS_MS, is_template
from slotkeeper.broker.rates import Rate

DEFAULT_IDLE_TTL = 3600.0  # s: keys made from a template go after this long idle

# Script status codes, re-exported from their one table (slotkeeper.broker.codes).
OK, GRANTED, QUEUED, BUSY, NOT_FOUND = Status.OK, Status.GRANTED, Status.QUEUED, Status.BUSY, \
    Status.NOT_FOUND
OCCUPY_EXCEEDS, LOST, CANCELLED, EXISTS = Status.OCCUPY_EXCEEDS, Status.LOST, Status.CANCELLED, \
    Status.EXISTS
HELD, REJECTED, NEED_KEYS, MORE = Status.HELD, Status.REJECTED, Status.NEED_KEYS, Status.MORE
QUEUE_FULL = Status.QUEUE_FULL


def pack_meta(host: str, pid: int, worker: str, label: str) -> bytes:
    packed: bytes = msgpack.packb({"h": host, "p": pid, "w": worker, "l": label})
    return packed


def _s(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return "" if v is None else str(v)


MAX_OCCUPY = 10_000  # mirrors check_occupy and lua/_lib.lua
MAX_MS = 10**15  # any time or duration in ms beyond this is garbage (lua/_lib.lua MAX_MS)


def number(v: Any, lo: float = -MAX_MS, hi: float = MAX_MS) -> int | None:
    """A stored number as an int, or None unless it is a finite number within [lo, hi].

    Accepts ints, floats and their text ("12", b"1.5e3"); never raises (not on "1e999", "inf",
    "nan", huge ints or bytes that are not UTF-8)."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        x = float(v) if isinstance(v, int | float) else float(_s(v).strip() or "nan")
    except (ValueError, OverflowError):
        return None
    if x != x or x < lo or x > hi:  # nan, inf, out of range
        return None
    return int(x)


def decode_record(raw: bytes | str | None) -> dict[str, Any] | None:
    """A lease or ticket record as a dict, or None if it is missing or garbage. Never unpickles.

    The same rules as the scripts' ``load()`` (lua/_lib.lua): names a non-empty list of strings,
    occupy in 1..MAX_OCCUPY, expiry and ttl finite numbers; other fields are defaulted."""
    if not raw:
        return None
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    try:
        rec = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception:
        return None
    if not isinstance(rec, dict):
        return None
    names = rec.get("n")
    if not isinstance(names, list) or not names or not all(isinstance(x, str) for x in names):
        return None
    if (
        number(rec.get("o"), 1, MAX_OCCUPY) is None
        or number(rec.get("e"), 0) is None
        or number(rec.get("l"), 1) is None
    ):
        return None  # what the scripts treat as absent
    return rec


def bad_fields(rec: dict[str, Any]) -> list[str]:
    """Fields of a readable record that are present but not usable numbers (the scripts default
    them; readers report them)."""
    return sorted(k for k in ("a", "r", "t", "p", "d", "k") if k in rec and number(rec[k]) is None)


@dataclass(frozen=True)
class AcquireResult:
    status: int
    token: int = 0
    expires_ms: int = 0
    ttl_ms: int = 0
    position: int = 0
    next_check_ms: int = 0
    name: str = ""
    slots: int = 0
    reason: str = ""
    due_ms: int = 0  # queued: ms until its rate units are due (0: not waiting for a rate)


@dataclass(frozen=True)
class HeartbeatResult:
    lost_leases: list[str]
    lost_tickets: list[str]
    granted_tickets: list[str]
    now_ms: int
    failed_leases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReclaimResult:
    expired: int
    gc_leases: int
    gc_tickets: int
    granted: int
    more: bool
    orphans: int = 0  # live holder entries with no lease record (written by someone else) removed


@dataclass(frozen=True)
class Holder:
    lease_id: str
    occupy: int
    names: list[str]
    host: str
    pid: int
    worker: str
    label: str
    acquired_ms: int
    renewed_ms: int
    expires_ms: int
    token: int
    garbage: bool = False


@dataclass(frozen=True)
class Waiter:
    ticket_id: str
    occupy: int
    names: list[str]
    priority: int
    host: str
    pid: int
    worker: str
    label: str
    arrived_ms: int
    expires_ms: int
    garbage: bool = False
    blocked_by: tuple[str, ...] = ()  # the limits that blocked it when the broker last looked
    due_ms: int = 0  # when its rate units are due (0: not waiting for a rate)
    units_only: bool = False  # a rate_limit() request (takes units, holds no slot)


@dataclass(frozen=True)
class LimitConfig:
    name: str
    slots: int | None  # None: no slot cap (a rate-only limit)
    ttl_s: float
    enabled: bool
    description: str
    created_ms: int
    updated_ms: int
    rate: Rate | None = None
    spread: bool = False
    max_waiters: int | None = None
    total: int | None = None  # templates: cap on the sum over their keys
    idle_ttl_s: float = DEFAULT_IDLE_TTL  # templates: keys go after this long idle
    template: str = ""  # a key made from a template: the template's name

    @property
    def is_template(self) -> bool:
        return is_template(self.name)


@dataclass(frozen=True)
class Counters:
    acquired: int = 0
    released: int = 0
    expired: int = 0
    revoked: int = 0
    timed_out: int = 0
    units: int = 0  # rate units granted (all time)
    rejected: int = 0  # requests refused by --max-waiters
    wait_sum_s: float = 0.0
    wait_buckets: tuple[int, ...] = ()  # non-cumulative counts per WAIT_BUCKETS_MS bound, then +Inf


@dataclass(frozen=True)
class Snapshot:
    config: LimitConfig
    counters: Counters
    used: int
    now_ms: int
    holders: list[Holder] = field(default_factory=list)
    waiters: list[Waiter] = field(default_factory=list)
    n_holder_entries: int = 0
    n_waiters: int = 0
    problems: list[str] = field(default_factory=list)
    config_problems: list[str] = field(default_factory=list)  # the subset about config fields
    rate_in_window: int = 0  # units granted within the current window
    rate_room_ms: int = 0  # ms until the window has room for one unit (0: now)
    n_keys: int = 0  # templates: keys made from it


def _int(v: Any, default: int = 0) -> int:
    n = number(v)
    return default if n is None else n


def parse_config(
    name: str, flat: dict[str, str], problems: list[str], template: str = "",
    template_flat: dict[str, str] | None = None,
) -> tuple[LimitConfig, Counters]:
    """Config and counters from a limit's hash. A key made from a template takes its config from
    the template's hash (``template_flat``) and its counters from its own."""

    def num(key: str, default: int = 0, src: dict[str, str] = flat) -> int:
        raw = src.get(key)
        if raw is None:
            return default
        n = number(raw)
        if n is None:
            problems.append(f"limit {name!r}: field {key!r} is not a number: {raw[:40]!r}")
            return default
        return n

    cf = template_flat if template_flat is not None else flat

    def opt(key: str) -> int | None:
        return num(key, src=cf) if cf.get(key, "") != "" else None

    rate = None
    rn, rp = opt("rate_n"), opt("rate_p")
    if rn and rp:
        try:
            rate = Rate(rn, rp)
        except ValueError:
            problems.append(f"limit {name!r}: rate {rn}/{rp} ms is out of range")
    slots = None if cf.get("slots") == "none" else num("slots", src=cf)
    conf = LimitConfig(
        name=name,
        slots=slots,
        ttl_s=num("ttl", src=cf) / 1000.0,
        enabled=cf.get("enabled", "1") != "0",
        description=cf.get("desc", "") if template_flat is None else "",
        created_ms=num("created"),
        updated_ms=num("updated", src=cf),
        rate=rate,
        spread=cf.get("spread") == "1",
        max_waiters=opt("maxw"),
        total=opt("total") if template_flat is None else None,
        idle_ttl_s=(opt("idle") or int(DEFAULT_IDLE_TTL * 1000)) / 1000.0,
        template=template,
    )
    buckets = tuple(num(f"w{i}") for i in range(1, len(WAIT_BUCKETS_MS) + 2))
    counters = Counters(
        acquired=num("c_acquired"),
        released=num("c_released"),
        expired=num("c_expired"),
        revoked=num("c_revoked"),
        timed_out=num("c_timed_out"),
        units=num("c_units"),
        rejected=num("c_rejected"),
        # w_sum_us: microseconds; w_sum: whole ms, as earlier versions wrote it (still counted)
        wait_sum_s=num("w_sum_us") / 1e6 + num("w_sum") / 1000.0,
        wait_buckets=buckets,
    )
    return conf, counters


def _common(rec: dict[str, Any]) -> dict[str, Any]:
    """The fields lease and ticket records share (holder metadata, names, occupy, expiry)."""
    m = rec.get("m") if isinstance(rec.get("m"), dict) else {}
    assert isinstance(m, dict)
    return {
        "occupy": _int(rec.get("o"), 1),
        "names": [_s(x) for x in rec.get("n", [])],
        "host": _s(m.get("h")),
        "pid": _int(m.get("p")),
        "worker": _s(m.get("w")),
        "label": _s(m.get("l")),
        "expires_ms": _int(rec.get("e")),
    }


def holder_from(lease_id: str, rec: dict[str, Any] | None) -> Holder:
    if rec is None:
        return Holder(lease_id, 0, [], "?", 0, "?", "", 0, 0, 0, 0, garbage=True)
    return Holder(
        lease_id=lease_id,
        acquired_ms=_int(rec.get("a")),
        renewed_ms=_int(rec.get("r")),
        token=_int(rec.get("t")),
        **_common(rec),
    )


def waiter_from(ticket_id: str, rec: dict[str, Any] | None) -> Waiter:
    if rec is None:
        return Waiter(ticket_id, 0, [], 0, "?", 0, "?", "", 0, 0, garbage=True)
    blocked = rec.get("w")
    return Waiter(
        ticket_id=ticket_id,
        priority=_int(rec.get("p")),
        arrived_ms=_int(rec.get("a")),
        blocked_by=tuple(_s(x) for x in blocked) if isinstance(blocked, list) else (),
        due_ms=_int(rec.get("d")),
        units_only=_int(rec.get("k")) == 1,
        **_common(rec),
    )
