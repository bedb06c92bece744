"""Why a waiting request waits: one reason per waiter of a limit, derived from a snapshot.

The queue is ordered by (priority desc, arrival) and only a head that fits is granted, so what
blocks a waiter is always one of: requests ahead of it (of higher priority, or a bigger one at the
head that does not fit yet), the slots held by others, or another of its limits. Pure functions of
a :class:`~slotkeeper.broker.records.Snapshot`: the CLI, the status page, the JSON API and the
SDK's waiting handle all explain a wait the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from slotkeeper.broker.formatting import duration
from slotkeeper.broker.records import Holder, Snapshot, Waiter

MAX_HOLDERS_NAMED = 3


class Cause(str, Enum):
    """What blocks a waiter (the ``kind`` of a :class:`WaitReason`)."""

    SLOTS = "slots"  # at the head, but the slots are held by others
    AHEAD = "ahead"  # requests of equal priority arrived first
    PRIORITY_AHEAD = "priority_ahead"  # requests of higher priority are ahead
    BIGGER_AHEAD = "bigger_ahead"  # it would fit, but a bigger request at the head does not yet
    RATE = "rate"  # its rate units are due later
    TOTAL = "total"  # a template's --total is reached over all its keys
    OTHER_LIMIT = "other_limit"  # fits here; another of its limits blocks it
    GRANTING = "granting"  # fits everywhere this snapshot shows: a grant is under way
    EXPIRED = "expired"  # its ticket expired (its process stopped renewing): collected soon
    UNREADABLE = "unreadable"  # its record is garbage


@dataclass(frozen=True)
class WaitReason:
    cause: Cause
    limit: str
    text: str
    holders: tuple[str, ...] = ()  # who holds what it waits for ("host pid 123 'label'")
    ahead: int = 0  # live requests ahead of it in this limit's queue

    def as_dict(self) -> dict[str, Any]:
        return {
            "cause": self.cause.value,
            "limit": self.limit,
            "text": self.text,
            "holders": list(self.holders),
            "ahead": self.ahead,
        }


def holder_brief(h: Holder) -> str:
    """'host pid 123 worker w "label" (2 slots)' -- who a holder is, in one phrase."""
    if h.garbage:
        return f"lease {h.lease_id} (unreadable record)"
    parts = [h.host] if h.host else []
    if h.pid:
        parts.append(f"pid {h.pid}")
    if h.worker and h.worker != h.host:
        parts.append(f"worker {h.worker}")
    if h.label:
        parts.append(repr(h.label))
    who = " ".join(parts) or f"lease {h.lease_id}"
    if h.occupy > 1:
        who += f" ({h.occupy} slots)"
    return who


def _held_by(snap: Snapshot) -> tuple[tuple[str, ...], str]:
    named = tuple(holder_brief(h) for h in snap.holders[:MAX_HOLDERS_NAMED])
    more = max(0, len(snap.holders) - MAX_HOLDERS_NAMED)
    text = "; ".join(named) + (f" and {more} more" if more else "")
    return named, text


def _live(w: Waiter, now_ms: int) -> bool:
    return not w.garbage and w.expires_ms > now_ms


def stands_aside(w: Waiter, name: str, template: bool, now_ms: int) -> bool:
    """Does this waiter hold no place in ``name``'s queue? (lua/_lib.lua ``deferred``: a request
    blocked only by rate units stands aside in its other limits' queues until they are due; in a
    template's queue, unless the template's total is what blocks it.)"""
    if w.due_ms > now_ms and name not in w.blocked_by:
        return True
    return template and bool(w.blocked_by) and name not in w.blocked_by


def _in(seconds_ms: int) -> str:
    return duration(seconds_ms / 1000)


def reason_for(snap: Snapshot, index: int) -> WaitReason:
    """The reason of ``snap.waiters[index]`` on this limit."""
    w = snap.waiters[index]
    cfg = snap.config
    name, now = cfg.name, snap.now_ms
    template = cfg.is_template
    if w.garbage:
        return WaitReason(Cause.UNREADABLE, name, "its ticket record is unreadable")
    if w.expires_ms <= now:
        return WaitReason(
            Cause.EXPIRED, name, "its ticket expired (its process stopped renewing it)"
        )
    if stands_aside(w, name, template, now):
        on = ", ".join(w.blocked_by) or "another limit"
        due = f" (due in {_in(w.due_ms - now)})" if w.due_ms > now else ""
        return WaitReason(
            Cause.OTHER_LIMIT,
            name,
            f"holds no place here while it waits for {on}{due}",
        )
    if w.due_ms > now and name in w.blocked_by and cfg.rate is not None:
        return WaitReason(
            Cause.RATE,
            name,
            f"waits for {w.occupy} unit(s) of rate {cfg.rate}: due in {_in(w.due_ms - now)} "
            f"({snap.rate_in_window} used in the window)",
        )
    cap = cfg.total if template else cfg.slots
    free = w.occupy if (not cfg.enabled or cap is None) else max(0, cap - snap.used)
    ahead = [
        x
        for x in snap.waiters[:index]
        if _live(x, now) and not stands_aside(x, name, template, now)
    ]
    if ahead:
        higher = [x for x in ahead if x.priority > w.priority]
        if higher:
            top = max(x.priority for x in higher)
            return WaitReason(
                Cause.PRIORITY_AHEAD,
                name,
                f"{len(higher)} request(s) of higher priority ahead (up to {top}; "
                f"this one has {w.priority})",
                ahead=len(ahead),
            )
        head = ahead[0]
        if head.occupy > free and w.occupy <= free:
            return WaitReason(
                Cause.BIGGER_AHEAD,
                name,
                f"a bigger request is ahead: it needs {head.occupy} slot(s), {free} free "
                "(big requests are not overtaken)",
                ahead=len(ahead),
            )
        held, who = _held_by(snap)
        in_use = f"{snap.used}/{cap} slot(s) in use" if cap is not None else ""
        return WaitReason(
            Cause.AHEAD,
            name,
            f"{len(ahead)} request(s) ahead"
            + (f"; {in_use}" if in_use else "")
            + (f" by {who}" if who and in_use else ""),
            holders=held,
            ahead=len(ahead),
        )
    if w.occupy > free and not w.units_only:
        held, who = _held_by(snap)
        if template:
            return WaitReason(
                Cause.TOTAL,
                name,
                f"the template's total is reached: {snap.used}/{cap} slot(s) held over its "
                f"keys, needs {w.occupy}" + (f"; held by {who}" if who else ""),
                holders=held,
            )
        return WaitReason(
            Cause.SLOTS,
            name,
            f"needs {w.occupy} slot(s), {free} of {cap} free" + (f"; held by {who}" if who else ""),
            holders=held,
        )
    if cfg.rate is not None and snap.rate_room_ms > 0:
        return WaitReason(
            Cause.RATE,
            name,
            f"waits for rate {cfg.rate}: next unit free in {_in(snap.rate_room_ms)} "
            f"({snap.rate_in_window} used in the window)",
        )
    others = [n for n in w.names if n != name]
    if others:
        return WaitReason(
            Cause.OTHER_LIMIT,
            name,
            f"fits here; waiting for its other limit(s): {', '.join(others)}",
        )
    return WaitReason(Cause.GRANTING, name, "fits now: being granted")


def waiter_reasons(snap: Snapshot) -> list[WaitReason]:
    """One reason per waiter, aligned with ``snap.waiters``."""
    return [reason_for(snap, i) for i in range(len(snap.waiters))]


def blocking_reason(snaps: list[Snapshot], ticket_id: str) -> tuple[int, WaitReason] | None:
    """(position, reason) of one request across the snapshots of all its limits: the first limit
    that really blocks it (not 'other limit' / 'granting'); None if no snapshot lists it."""
    found: list[tuple[int, WaitReason]] = []
    for snap in snaps:
        for i, w in enumerate(snap.waiters):
            if w.ticket_id == ticket_id:
                live_ahead = sum(
                    1
                    for x in snap.waiters[:i]
                    if _live(x, snap.now_ms)
                    and not stands_aside(x, snap.config.name, snap.config.is_template, snap.now_ms)
                )
                found.append((live_ahead + 1, reason_for(snap, i)))
                break
    if not found:
        return None
    for pos, r in found:
        if r.cause not in (Cause.OTHER_LIMIT, Cause.GRANTING):  # the one that really blocks
            return pos, r
    return found[0]
