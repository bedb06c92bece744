"""The broker protocol, free of I/O: every operation slotkeeper performs on Redis is defined here
ONCE — which script (or command) it runs, how its keys and arguments are built, and how the reply
becomes a typed result or an exception. A transport (:mod:`slotkeeper.broker.transport`: one on
redis-py, one on ``redis.asyncio``) only moves an :class:`Op` to Redis and its reply back.

Argument validation lives here too, so every path (SDK, CLI, daemon, benchmarks) shares one rule.
See ARCHITECTURE.md for the layers and the script contract.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from slotkeeper.broker import records as R
from slotkeeper.broker.codes import Status
from slotkeeper.broker.errors import (
    BrokerError,
    InvalidArgument,
    InvalidType,
    LimitExists,
    LimitHeld,
    LimitNotFound,
    NoRate,
    OccupyExceedsLimit,
    QueueFull,
)
from slotkeeper.broker.events import (
    DEFAULT_CAP,
    Event,
    check_cap,
    parse_entries,
    parse_xread,
)
from slotkeeper.broker.keys import (
    Keys,
    check_limit_name,
    check_name,
    is_template,
    printable,
    template_prefix,
)
from slotkeeper.broker.rates import Rate, parse_duration, parse_rate

T = TypeVar("T")

MAX_PRIORITY = 1000
DELETE_BATCH = 500
TEMPLATE_CACHE_S = 2.0  # how long a process trusts its copy of a namespace's template names


# -- validation (one rule each) ---------------------------------------------------------------


def check_int(v: object, what: str, lo: int, hi: int, *, low: str, high: str = "") -> int:
    """``v`` if it is an int (a bool is not) in ``lo..hi``: else InvalidType, or InvalidArgument
    saying "<what> must be " + ``low`` (below ``lo``; also above ``hi`` when no ``high`` is
    given) or ``high`` (above ``hi``), with ``{v}`` replaced by the value."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidType(f"{what} must be an int, not {type(v).__name__}")
    if not lo <= v <= hi:
        bound = high if v > hi and high else low
        raise InvalidArgument(f"{what} must be {bound.format(v=v)}")
    return v


def check_slots(slots: object) -> int:
    return check_int(slots, "slots", 0, 10**9, low=">= 0, got {v}", high="<= 1e9, got {v}")


def check_occupy(occupy: object) -> int:
    return check_int(occupy, "occupy", 1, 10_000, low=">= 1, got {v}", high="<= 10000, got {v}")


def check_ttl(ttl: object, what: str = "ttl") -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise InvalidType(f"{what} must be a number of seconds, not {type(ttl).__name__}")
    if not (ttl == ttl) or ttl < 0.05 or ttl > 86400 * 30:
        raise InvalidArgument(f"{what} must be between 0.05 s and 30 days, got {ttl}")
    return float(ttl)


def check_seconds(value: object, what: str, *, allow_none: bool = True) -> float | None:
    """A non-negative number of seconds (``None`` allowed where it means 'no bound')."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidType(f"{what} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise InvalidArgument(f"{what} must be >= 0, got {value}")
    return float(value)


def check_priority(priority: object) -> int:
    return check_int(priority, "priority", -MAX_PRIORITY, MAX_PRIORITY,
                     low=f"between -{MAX_PRIORITY} and {MAX_PRIORITY}")


def check_max_waiters(v: object) -> int:
    return check_int(v, "max_waiters", 0, 10**9, low="between 0 and 1e9, got {v}")


def check_total(v: object) -> int:
    return check_int(v, "total", 1, 10**9, low="between 1 and 1e9, got {v}")


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


# -- operations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op(Generic[T]):
    """One round trip: a script (by name, with keys and args) or a plain command, and the parser
    that turns its reply into a result. Ops are plain data: any transport can run them."""

    parse: Callable[[Any], T]
    script: str = ""
    keys: tuple[str, ...] = ()
    args: tuple[Any, ...] = ()
    command: tuple[Any, ...] = ()
    request_id: str = ""  # an acquire's id (see note_resent)


# -- asks sent more than once ------------------------------------------------------------------
# A transport that sends an acquire again (its first try timed out or lost its connection) cannot
# know whether the first copy is still on its way. Two rules keep a late first copy harmless:
# - a re-sent ask that would queue goes as a re-check (mode 2): it finds the ticket or lease the
#   first copy made, or, finding nothing, marks the id withdrawn and answers LOST (the caller asks
#   anew under a new id): a first copy arriving after that is refused, never queued for nobody;
# - the ids of asks sent twice are remembered (per process, bounded), and the release of such a
#   lease asks Redis to refuse that id from then on, so a late copy cannot grant it anew.
# Both use the mark a withdrawal leaves (lua/cancel.lua, lua/release.lua, lua/acquire.lua).

MODE_TRY, MODE_ENQUEUE, MODE_RECHECK = 0, 1, 2  # acquire's ``wait`` argument
_ACQUIRE_MODE_AT = 5  # its place among acquire's arguments after the names

RESENT_MAX = 10_000
_RESENT: dict[str, None] = {}  # insertion order: the oldest goes first when full
_RESENT_LOCK = threading.Lock()  # transports of several threads (and the heartbeat) use it


def note_resent(op: Op[T]) -> Op[T]:
    """Called by a transport before it sends ``op`` a second time; returns what to send again."""
    if not op.request_id:
        return op
    with _RESENT_LOCK:
        if len(_RESENT) >= RESENT_MAX:
            del _RESENT[next(iter(_RESENT))]
        _RESENT[op.request_id] = None
    at = _mode_index(op)
    if at is not None and op.args[at] == MODE_ENQUEUE:
        return replace(op, args=(*op.args[:at], MODE_RECHECK, *op.args[at + 1:]))
    return op


def _mode_index(op: Op[Any]) -> int | None:
    """Where an acquire op's ``wait`` mode is among its args (None: not an acquire)."""
    return 1 + int(op.args[0]) + _ACQUIRE_MODE_AT if op.script == "acquire" else None


def acquire_mode(op: Op[Any]) -> int | None:
    """The ``wait`` mode an acquire op is sent with (None: not an acquire)."""
    at = _mode_index(op)
    return None if at is None else int(op.args[at])


def take_resent(request_id: str) -> bool:
    """Was the ask of this id sent more than once (and not yet released)? Forgets it."""
    with _RESENT_LOCK:
        if request_id not in _RESENT:
            return False
        del _RESENT[request_id]
        return True


def s(v: Any) -> str:
    return v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v)


# -- templates: a script names the keys of every template matching a name it is given ----------
# (scripts never build key names). The process keeps each namespace's template names for
# TEMPLATE_CACHE_S; a stale list only costs a retry: a script that needs a template the list did
# not name answers NEED_KEYS (or NOT_FOUND for a name no known template matches).

_TEMPLATES: dict[str, tuple[float, tuple[str, ...]]] = {}


def known_templates(namespace: str) -> tuple[str, ...]:
    return _TEMPLATES.get(namespace, (0.0, ()))[1]


def templates_stale(namespace: str, max_age: float = TEMPLATE_CACHE_S) -> bool:
    at = _TEMPLATES.get(namespace, (-1e18, ()))[0]
    return time.monotonic() - at > max_age


def remember_templates(namespace: str, names: Iterable[str], replace: bool = True) -> None:
    old = () if replace else known_templates(namespace)
    merged = sorted({*old, *names}, key=lambda n: (-len(n), n))
    at = time.monotonic() if replace else _TEMPLATES.get(namespace, (0.0, ()))[0]
    _TEMPLATES[namespace] = (at, tuple(merged))


def expand(namespace: str, names: Sequence[str]) -> list[str]:
    """``names`` followed by every known template whose prefix matches one of them."""
    out = list(names)
    for t in known_templates(namespace):
        if t not in out and any(
            not is_template(n) and n.startswith(template_prefix(t)) for n in names
        ):
            out.append(t)
    return out


def list_templates(keys: Keys) -> Op[tuple[str, ...]]:
    """Read (and remember) the namespace's template names."""

    def parse(raw: Any) -> tuple[str, ...]:
        remember_templates(keys.namespace, (s(x) for x in raw))
        return known_templates(keys.namespace)

    return Op(parse, command=("SMEMBERS", keys.templates))


_KEYS_CACHE: dict[tuple[Keys, tuple[str, ...]], tuple[str, ...]] = {}
_KEYS_CACHE_MAX = 4096


def _limit_keys(keys: Keys, full: tuple[str, ...]) -> tuple[str, ...]:
    """The KEYS of a script call on ``full`` (built once per namespace and names; bounded)."""
    hit = _KEYS_CACHE.get((keys, full))
    if hit is None:
        if len(_KEYS_CACHE) >= _KEYS_CACHE_MAX:
            _KEYS_CACHE.clear()
        hit = _KEYS_CACHE[(keys, full)] = tuple(keys.for_limits(full))
    return hit


def _script(keys: Keys, name: str, names: Sequence[str], args: Sequence[Any],
            parse: Callable[[Any], T], exact: bool = False, request_id: str = "") -> Op[T]:
    full = tuple(names) if exact else tuple(expand(keys.namespace, names))
    return Op(parse, script=name, keys=_limit_keys(keys, full),
              args=(len(full), *full, *args), request_id=request_id)


def _need_template(namespace: str, reply: Any) -> bool:
    """A NEED_KEYS reply naming a template: remember it, so the retry names its keys."""
    if (isinstance(reply, list) and reply and int(reply[0]) == Status.NEED_KEYS
            and len(reply) > 1 and is_template(s(reply[1]))):
        remember_templates(namespace, [s(reply[1])], replace=False)
        return True
    return False


def raise_for(reply: list[Any], namespace: str, occupy: int = 0) -> None:
    """Map a script's error status to the exception it means (the one place that does)."""
    code = int(reply[0])
    if code == Status.NOT_FOUND:
        raise LimitNotFound(s(reply[1]) if len(reply) > 1 else "?", namespace)
    if code == Status.OCCUPY_EXCEEDS:
        raise OccupyExceedsLimit(s(reply[1]), occupy, int(reply[2]))
    if code == Status.EXISTS:
        raise LimitExists(s(reply[1]))
    if code == Status.REJECTED:
        raise rejection(s(reply[1]), s(reply[2]), int(reply[3]) if len(reply) > 3 else 0,
                        namespace, occupy)
    if code == Status.NEED_KEYS:
        _need_template(namespace, reply)
        raise BrokerError(f"internal: script needed the keys of limit {s(reply[1])!r}")
    if code == Status.QUEUE_FULL:
        raise QueueFull(s(reply[1]), int(reply[2]))


def rejection(reason: str, name: str, slots: int, namespace: str, occupy: int) -> Exception:
    """A request the broker rejected (limit deleted, its slots or rate lowered below occupy, a
    rate_limit on a limit without a rate, a config that would have neither slots nor rate)."""
    if reason == "missing":
        return LimitNotFound(name, namespace)
    if reason == "norate":
        return NoRate(name)
    if reason == "invalid":
        return InvalidArgument(
            f"limit {name!r} needs slots or a rate (--slots N and/or --rate N/P)")
    return OccupyExceedsLimit(name, occupy, slots)


def parse_grant_message(msg: str) -> R.AcquireResult | None:
    """A pushed notification ``g <token> <expiry_ms> <ttl_ms>``; None if it is not one (or is
    malformed: then it is only a nudge to re-check)."""
    parts = msg.split()
    if len(parts) != 4 or parts[0] != "g":
        return None
    try:
        token, exp, ttl = int(parts[1]), int(parts[2]), int(parts[3])
    except ValueError:
        return None
    return R.AcquireResult(Status.GRANTED, token=token, expires_ms=exp, ttl_ms=ttl)


def parse_due_message(msg: str) -> int | None:
    """A pushed notification ``d <ms>``: the waiter's rate units are due in that many ms (ask
    again then); None if it is not one."""
    parts = msg.split()
    if len(parts) != 2 or parts[0] != "d":
        return None
    try:
        return max(1, int(parts[1]))
    except ValueError:
        return None


def parse_reject_message(msg: str) -> tuple[str, int, str] | None:
    """A pushed notification ``x <reason> <slots> <name>`` (reason, slots, name); None if it is
    not one or is malformed."""
    parts = msg.split(" ", 3)
    if len(parts) != 4 or parts[0] != "x":
        return None
    try:
        return parts[1], int(parts[2]), parts[3]
    except ValueError:
        return None


def _acquire_result(namespace: str, occupy: int) -> Callable[[Any], R.AcquireResult]:
    def parse(reply: list[Any]) -> R.AcquireResult:
        code = int(reply[0])
        if code == Status.GRANTED:
            return R.AcquireResult(code, token=int(reply[1]), expires_ms=int(reply[2]),
                                   ttl_ms=int(reply[3]) if len(reply) > 3 else 0)
        if code == Status.QUEUED:
            return R.AcquireResult(code, position=int(reply[1]), next_check_ms=int(reply[2]),
                                   due_ms=int(reply[3]) if len(reply) > 3 else 0)
        if code in (Status.BUSY, Status.LOST, Status.CANCELLED, Status.OK):
            return R.AcquireResult(code)
        if _need_template(namespace, reply):
            return R.AcquireResult(Status.LOST)  # ask again (a new id), naming the template
        raise_for(reply, namespace, occupy)
        raise BrokerError(f"unexpected reply {reply!r}")

    return parse


def acquire(keys: Keys, names: Sequence[str], lease_id: str, *, occupy: int = 1,
            ttl_ms: int = 0, default_ttl_ms: int = 30000, priority: int = 0, wait: bool = True,
            channel: str = "", meta: bytes = b"\x80", default_slots: int | None = None,
            recheck: bool = False, units_only: bool = False) -> Op[R.AcquireResult]:
    """Take slots (and rate units) or join the queues (see lua/acquire.lua). ``recheck=True``
    re-asks about an id already sent: LOST if its ticket and lease are gone, never a fresh start
    under the old id. ``units_only=True`` (rate_limit) takes rate units only: no lease, token 0.
    Raises QueueFull when the request would exceed a limit's --max-waiters."""
    ds = -1 if default_slots is None else check_slots(default_slots)
    mode = (MODE_RECHECK if recheck else MODE_ENQUEUE) if wait else MODE_TRY
    return _script(keys, "acquire", names,
                   [lease_id, occupy, ttl_ms, default_ttl_ms, priority, mode, channel, meta, ds,
                    1 if units_only else 0],
                   _acquire_result(keys.namespace, occupy), request_id=lease_id)


def cancel(keys: Keys, names: Sequence[str], ticket_id: str, timed_out: bool,
           units_only_occupy: int = 0) -> Op[R.AcquireResult]:
    """Withdraw a ticket. GRANTED if it was granted meanwhile (for a units-only request, pass its
    occupy so a grant of its units is found: token 0)."""
    return _script(keys, "cancel", names, [ticket_id, 1 if timed_out else 0, units_only_occupy],
                   _acquire_result(keys.namespace, 0))


def settle(keys: Keys, names: Sequence[str], request_id: str, taken: int,
           true_units: int) -> Op[bool]:
    """Correct the units a granted request took from its limits' rate windows (``taken`` ->
    ``true_units``). False if no window holds its batch any more (too late to settle)."""
    if isinstance(true_units, bool) or not isinstance(true_units, int):
        raise InvalidType("units must be an int")
    if not 0 <= true_units <= 10**9:
        raise InvalidArgument(f"units must be between 0 and 1e9, got {true_units}")
    return _script(keys, "settle", names, [request_id, taken, true_units],
                   lambda reply: int(reply[0]) == Status.OK)


def reap_idle(keys: Keys, template: str, candidates: Sequence[str]) -> Op[int]:
    """Remove the candidate keys of a template that are idle (checked again in the script)."""
    return _script(keys, "reap_idle", [template, *candidates], [], lambda r: int(r[0]),
                   exact=True)


def idle_candidates(keys: Keys, template: str, cutoff_ms: int, batch: int) -> Op[list[str]]:
    return Op(lambda raw: [s(x) for x in raw],
              command=("ZRANGE", keys.template_keys(template), "-inf", cutoff_ms, "BYSCORE",
                       "LIMIT", 0, batch))


def recent_template_keys(keys: Keys, template: str, since_ms: int, limit: int) -> Op[list[str]]:
    """Keys of a template active since ``since_ms`` (server clock), most recent first."""
    return Op(lambda raw: [s(x) for x in raw],
              command=("ZRANGE", keys.template_keys(template), "+inf", since_ms, "BYSCORE", "REV",
                       "LIMIT", 0, limit))


def template_keys(keys: Keys, template: str, limit: int) -> Op[list[tuple[str, int]]]:
    """(key, last activity ms) of the keys made from a template, most recent first."""

    def parse(raw: Any) -> list[tuple[str, int]]:
        if raw and isinstance(raw[0], list | tuple):  # a client that pairs WITHSCORES replies
            raw = [x for pair in raw for x in pair]
        return [(s(raw[i]), int(float(s(raw[i + 1])))) for i in range(0, len(raw), 2)]

    return Op(parse, command=("ZRANGE", keys.template_keys(template), 0, limit - 1, "REV",
                              "WITHSCORES"))


def release(keys: Keys, names: Sequence[str], lease_id: str, revoke: bool = False) -> Op[bool]:
    """True if the lease was held and is now released; False if it was lost (expired, revoked or
    unknown — also when a retry after a lost reply finds it gone: the holder cannot tell that its
    first try released it, so it reports the lease lost, never wrongly held)."""

    def parse(reply: list[Any]) -> bool:
        if int(reply[0]) == Status.NEED_KEYS:
            raise_for(reply, keys.namespace)
        return int(reply[0]) == Status.OK

    mark = 1 if take_resent(lease_id) else 0  # its ask went twice: refuse a late copy of it
    return _script(keys, "release", names,
                   [lease_id, "revoke" if revoke else "release", mark], parse)


def _unique_names(entries: Iterable[tuple[str, Sequence[str], int]]) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    for _, ns, _ in entries:
        for n in ns:
            if n not in seen:
                seen.add(n)
                names.append(n)
    return names


def heartbeat(keys: Keys, leases: Sequence[tuple[str, Sequence[str], int]],
              tickets: Sequence[tuple[str, Sequence[str], int]]) -> Op[R.HeartbeatResult]:
    """Renew (id, names, ttl_ms) leases and tickets in one round trip."""
    args: list[Any] = [len(leases)]
    for lid, _, ttl in leases:
        args += [lid, ttl]
    args.append(len(tickets))
    for tid, _, ttl in tickets:
        args += [tid, ttl]

    def parse(reply: list[Any]) -> R.HeartbeatResult:
        lost, lost_t, granted, now = reply[:4]
        failed = reply[4] if len(reply) > 4 else []
        return R.HeartbeatResult([s(x) for x in lost], [s(x) for x in lost_t],
                                 [s(x) for x in granted], int(now), [s(x) for x in failed])

    return _script(keys, "heartbeat", _unique_names([*leases, *tickets]), args, parse)


def snapshot(keys: Keys, name: str, max_items: int = 1000) -> Op[R.Snapshot]:
    def parse(reply: list[Any]) -> R.Snapshot:
        if int(reply[0]) == Status.NOT_FOUND:
            raise LimitNotFound(name, keys.namespace)
        _, conf_flat, used, now, holders, waiters, n_h, n_w, tname, tflat_raw = reply[:10]
        in_window, room, n_keys = (int(x) for x in reply[10:13])
        flat = {s(conf_flat[i]): s(conf_flat[i + 1]) for i in range(0, len(conf_flat), 2)}
        tflat = {s(tflat_raw[i]): s(tflat_raw[i + 1]) for i in range(0, len(tflat_raw), 2)}
        problems: list[str] = []
        if s(tname) and not tflat:
            problems.append(f"limit {name!r}: its template {s(tname)!r} is gone")
        conf, counters = R.parse_config(name, flat, problems, s(tname),
                                        tflat if s(tname) else None)
        config_problems = list(problems)
        hs = []
        for i in range(0, len(holders), 2):
            rec = R.decode_record(holders[i + 1])
            h = R.holder_from(s(holders[i]), rec)
            if h.garbage:
                problems.append(f"limit {name!r}: lease {h.lease_id} has an unreadable record")
            elif rec is not None and R.bad_fields(rec):
                problems.append(f"limit {name!r}: lease {h.lease_id} has unreadable fields "
                                f"{', '.join(R.bad_fields(rec))}")
            hs.append(h)
        ws = []
        for i in range(0, len(waiters), 3):
            rec = R.decode_record(waiters[i + 1])
            w = R.waiter_from(s(waiters[i]), rec)
            if w.garbage:
                problems.append(f"limit {name!r}: ticket {w.ticket_id} has an unreadable record")
            elif rec is not None and R.bad_fields(rec):
                problems.append(f"limit {name!r}: ticket {w.ticket_id} has unreadable fields "
                                f"{', '.join(R.bad_fields(rec))}")
            ws.append(w)
        return R.Snapshot(conf, counters, int(used), int(now), hs, ws, int(n_h), int(n_w),
                          problems, config_problems=config_problems,
                          rate_in_window=in_window, rate_room_ms=room, n_keys=n_keys)

    return _script(keys, "snapshot", [check_limit_name(name)], [max_items], parse)


def config_args(slots: int | None, ttl: float | None, enabled: bool | None,
                description: str | None, *, rate: Rate | str | None = None,
                spread: bool | None = None, max_waiters: int | None = None,
                total: int | None = None, idle_ttl: float | str | None = None,
                name: str = "", unset: Sequence[str] = ()) -> list[Any]:
    """Field/value pairs for limit_config. ``unset`` names settings to remove: ``slots`` (a
    rate-only limit), ``rate``, ``max_waiters``, ``total``."""
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


def limit_config(keys: Keys, name: str, mode: str,
                 args: Sequence[Any]) -> Op[tuple[bool, list[str]]]:
    """Create / update / upsert a limit: (created, changed field names)."""

    def parse(reply: list[Any]) -> tuple[bool, list[str]]:
        raise_for(reply, keys.namespace)
        return bool(int(reply[1])), [s(x) for x in reply[2:]]

    return _script(keys, "limit_config", [check_limit_name(name)], [mode, *args], parse)


def limit_delete(keys: Keys, name: str, batch: int = DELETE_BATCH) -> Op[bool]:
    """One bounded step of deleting a limit: True when done, False when another step is needed."""

    def parse(reply: list[Any]) -> bool:
        code = int(reply[0])
        if code == Status.NOT_FOUND:
            raise LimitNotFound(name, keys.namespace)
        if code == Status.HELD:
            raise LimitHeld(name, int(reply[1]))
        return code == Status.OK

    return _script(keys, "limit_delete", [check_limit_name(name)], [batch], parse)


def probe_permissions(keys: Keys) -> Op[list[str]]:
    """The commands the scripts use that this ACL user may not run (lua/doctor_probe.lua: writes
    and deletes the key ``sk:{ns}:doctor``, publishes once on a channel nobody listens to)."""
    return Op(lambda reply: [s(x) for x in reply], script="doctor_probe",
              keys=(*keys.fixed(), keys.doctor_probe), args=(0, keys.wake_channel("doctor")))


def reclaim(keys: Keys, name: str | None, batch: int = 500) -> Op[R.ReclaimResult]:
    def parse(r: list[Any]) -> R.ReclaimResult:
        return R.ReclaimResult(int(r[0]), int(r[1]), int(r[2]), int(r[3]), bool(int(r[4])),
                               int(r[5]) if len(r) > 5 else 0)

    return _script(keys, "reclaim", [name] if name is not None else [], [batch], parse)


# -- plain commands ---------------------------------------------------------------------------


def _int_or_zero(raw: Any) -> int:
    try:
        return int(raw) if raw is not None else 0
    except (ValueError, OverflowError):
        return 0


def limit_slots(keys: Keys, name: str) -> Op[int]:
    return Op(_int_or_zero, command=("HGET", keys.limit(name)[0], "slots"))


LIST_PAGE = 1000  # names per SSCAN call: one call stays short however many limits there are


def scan_limits(keys: Keys, cursor: int, count: int = LIST_PAGE) -> Op[tuple[int, list[str]]]:
    """One page of the namespace's limit names (SSCAN: a name may come twice; loop until the
    cursor is 0). Bytes that are not UTF-8 (written by someone else) become U+FFFD."""
    def parse(raw: Any) -> tuple[int, list[str]]:
        return int(raw[0]), [printable(s(x)) for x in raw[1]]
    return Op(parse, command=("SSCAN", keys.limits, cursor, "COUNT", count))


def lease_record(keys: Keys, lease_id: str) -> Op[R.Holder | None]:
    def parse(raw: Any) -> R.Holder | None:
        return None if raw is None else R.holder_from(lease_id, R.decode_record(raw))

    return Op(parse, command=("HGET", keys.leases, lease_id))


def ping() -> Op[bool]:
    return Op(bool, command=("PING",))


def server_time_ms() -> Op[int]:
    return Op(lambda r: int(r[0]) * 1000 + int(r[1]) // 1000, command=("TIME",))


def wait_replicas(replicas: int, timeout_ms: int) -> Op[int]:
    return Op(int, command=("WAIT", replicas, timeout_ms))


def drop_holder_entry(keys: Keys, name: str, lease_id: str) -> Op[int]:
    return Op(int, command=("ZREM", keys.limit(name)[1], lease_id))


# -- audit events (broker/events.py) ----------------------------------------------------------


def events_range(keys: Keys, newest: str = "+", oldest: str = "-",
                 count: int = 1000) -> Op[list[Event]]:
    """Up to ``count`` events between two stream ids, newest first (XREVRANGE)."""
    return Op(parse_entries, command=("XREVRANGE", keys.events, newest, oldest, "COUNT", count))


def events_after(keys: Keys, after_id: str, block_ms: int = 0,
                 count: int = 1000) -> Op[list[Event]]:
    """Events added after ``after_id``, oldest first; waits up to ``block_ms`` for one."""
    cmd: tuple[Any, ...] = ("XREAD", "COUNT", count)
    if block_ms > 0:
        cmd += ("BLOCK", block_ms)
    return Op(parse_xread, command=(*cmd, "STREAMS", keys.events, after_id))


def event_settings(keys: Keys) -> Op[tuple[bool, int]]:
    """(recording on, cap) of the namespace (defaults: on, DEFAULT_CAP)."""

    def parse(raw: list[Any]) -> tuple[bool, int]:
        on = raw[0] is None or s(raw[0]) != "0"
        cap = _int_or_zero(raw[1]) or DEFAULT_CAP
        return on, cap

    return Op(parse, command=("HMGET", keys.settings, "events", "events_cap"))


def set_event_settings(keys: Keys, enabled: bool | None, cap: int | None) -> Op[int]:
    args: list[Any] = []
    if enabled is not None:
        args += ["events", 1 if enabled else 0]
    if cap is not None:
        args += ["events_cap", check_cap(cap)]
    if not args:
        raise InvalidArgument("nothing to change: give enabled and/or cap")
    return Op(int, command=("HSET", keys.settings, *args))
