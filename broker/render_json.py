"""JSON shapes of the read model: what ``slotkeeper ls/show/top --json`` print and what the
daemon's ``/api/v1/`` serves. One shape per thing, so scripts can move between them."""

from __future__ import annotations

import time
from typing import Any

from slotkeeper.broker.rates import duration_text
from slotkeeper.broker.readmodel import LimitStats, wait_quantile
from slotkeeper.broker.records import Holder, LimitConfig, Waiter
from slotkeeper.broker.waitreasons import WaitReason, waiter_reasons


def timestamp(ms: int) -> str:
    """Local time of a Redis ms timestamp ('-' for 0)."""
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def config_dict(c: LimitConfig) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": c.name,
        "slots": c.slots,
        "ttl": c.ttl_s,
        "enabled": c.enabled,
        "description": c.description,
        "rate": str(c.rate) if c.rate else None,
        "spread": c.spread,
        "max_waiters": c.max_waiters,
    }
    if c.is_template:
        out.update(template=True, total=c.total, idle_ttl=duration_text(c.idle_ttl_s))
    if c.template:
        out["made_from"] = c.template
    return out


def limit_summary(st: LimitStats) -> dict[str, Any]:
    """One row of ``ls``: config, use, counters in brief, problems."""
    out: dict[str, Any] = {"name": st.name}
    if st.snapshot is not None:
        snap = st.snapshot
        out.update(
            {
                "slots": snap.config.slots,
                "used": snap.used,
                "leases": st.leases,
                "waiters": st.waiters,
                "enabled": snap.config.enabled,
                "ttl": snap.config.ttl_s,
                "description": snap.config.description,
                "acquired": snap.counters.acquired,
                "expired": snap.counters.expired,
                "wait_p95_seconds": wait_quantile(snap.counters, 0.95),
                "rate": str(snap.config.rate) if snap.config.rate else None,
                "rate_in_window": snap.rate_in_window if snap.config.rate else None,
                "spread": snap.config.spread,
                "max_waiters": snap.config.max_waiters,
                "rejected": snap.counters.rejected,
            }
        )
        if snap.config.is_template:
            out.update(template=True, total=snap.config.total, keys=snap.n_keys)
    out["problems"] = st.messages()
    return out


def holder_dict(h: Holder, now_ms: int) -> dict[str, Any]:
    return {
        "lease_id": h.lease_id,
        "occupy": h.occupy,
        "names": h.names,
        "host": h.host,
        "pid": h.pid,
        "worker": h.worker,
        "label": h.label,
        "token": h.token,
        "age_seconds": (now_ms - h.acquired_ms) / 1000 if h.acquired_ms else None,
        "expires_in_seconds": (h.expires_ms - now_ms) / 1000 if h.expires_ms else None,
        "unreadable": h.garbage,
    }


def waiter_dict(
    pos: int, w: Waiter, now_ms: int, reason: WaitReason | None = None
) -> dict[str, Any]:
    out = {
        "position": pos,
        "ticket_id": w.ticket_id,
        "occupy": w.occupy,
        "names": w.names,
        "priority": w.priority,
        "host": w.host,
        "pid": w.pid,
        "worker": w.worker,
        "label": w.label,
        "waiting_seconds": (now_ms - w.arrived_ms) / 1000 if w.arrived_ms else None,
        "expired": (not w.garbage) and w.expires_ms <= now_ms,
        "unreadable": w.garbage,
    }
    if reason is not None:
        out["reason"] = reason.as_dict()
    return out


def limit_detail(st: LimitStats) -> dict[str, Any]:
    """Everything ``show NAME`` knows: config, counters, holders, the queue in order."""
    s = st.snapshot
    if s is None:
        return limit_summary(st)
    c = s.counters
    now = s.now_ms
    return {
        **config_dict(s.config),
        "created": timestamp(s.config.created_ms),
        "updated": timestamp(s.config.updated_ms),
        "used": s.used,
        "leases": st.leases,
        "waiters": st.waiters,
        "rate_in_window": s.rate_in_window,
        "keys": s.n_keys,
        "counters": {
            "acquired": c.acquired,
            "released": c.released,
            "expired": c.expired,
            "revoked": c.revoked,
            "timed_out": c.timed_out,
            "rate_units": c.units,
            "rejected": c.rejected,
            "wait_p50_seconds": wait_quantile(c, 0.5),
            "wait_p95_seconds": wait_quantile(c, 0.95),
            "wait_sum_seconds": c.wait_sum_s,
        },
        "holders": [holder_dict(h, now) for h in s.holders],
        "queue": [
            waiter_dict(i + 1, w, now, r)
            for i, (w, r) in enumerate(zip(s.waiters, waiter_reasons(s), strict=True))
        ],
        "problems": st.messages(),
    }
