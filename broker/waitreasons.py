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

from slotkeeper.broker.records import Holder, Snapshot, Waiter

MAX_HOLDERS_NAMED = 3


class Cause(str, Enum):
    """What blocks a waiter (the ``kind`` of a :class:`WaitReason`)."""

    SLOTS = "slots"  # at the head, but the slots are held by others
    AHEAD = "ahead"  # requests of equal priority arrived first
    PRIORITY_AHEAD = "priority_ahead"  # requests of higher priority are ahead
    BIGGER_AHEAD = "bigger_ahead"  # it would fit, but a bigger request at the head does not yet
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
    who = f"{h.host} pid {h.pid}"
    if h.worker and h.worker != h.host:
        who += f" worker {h.worker}"
    if h.label:
        who += f" {h.label!r}"
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


def reason_for(snap: Snapshot, index: int) -> WaitReason:
    """The reason of ``snap.waiters[index]`` on this limit."""
    w = snap.waiters[index]
    name, now = snap.config.name, snap.now_ms
    if w.garbage:
        return WaitReason(Cause.UNREADABLE, name, "its ticket record is unreadable")
    if w.expires_ms <= now:
        return WaitReason(
            Cause.EXPIRED, name, "its ticket expired (its process stopped renewing it)"
        )
    cfg = snap.config
    free = max(0, cfg.slots - snap.used) if cfg.enabled else w.occupy
    ahead = [x for x in snap.waiters[:index] if _live(x, now)]
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
        return WaitReason(
            Cause.AHEAD,
            name,
            f"{len(ahead)} request(s) ahead; {snap.used}/{cfg.slots} slot(s) in use"
            + (f" by {who}" if who else ""),
            holders=held,
            ahead=len(ahead),
        )
    if w.occupy > free:
        held, who = _held_by(snap)
        return WaitReason(
            Cause.SLOTS,
            name,
            f"needs {w.occupy} slot(s), {free} of {cfg.slots} free"
            + (f"; held by {who}" if who else ""),
            holders=held,
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
                live_ahead = sum(1 for x in snap.waiters[:i] if _live(x, snap.now_ms))
                found.append((live_ahead + 1, reason_for(snap, i)))
                break
    if not found:
        return None
    for pos, r in found:
        if r.cause not in (Cause.OTHER_LIMIT, Cause.GRANTING):
            return pos, r
    return found[0]
