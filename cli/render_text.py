"""Terminal rendering of the read model: the tables of ``ls``, ``show`` and ``top``.

Pure functions from read-model objects to text; the commands (cli/limits.py, cli/top.py) decide
what to read and where to print."""

from __future__ import annotations

from typing import Any

from slotkeeper.broker.rates import duration_text
from slotkeeper.broker.readmodel import LimitStats, wait_quantile
from slotkeeper.broker.records import Snapshot
from slotkeeper.broker.render_json import timestamp
from slotkeeper.broker.waitreasons import waiter_reasons
from slotkeeper.cli.output import duration, table, ttl_text

BAR = 12


def bar(used: int, slots: int, width: int = BAR) -> str:
    if slots <= 0:
        return "!" * width if used else "." * width
    full = min(width, round(width * used / slots))
    return "#" * full + "." * (width - full)


def problem_lines(stats: list[LimitStats]) -> list[str]:
    """One warning per problem, with the repair command where one exists."""
    out = []
    for st in stats:
        for m in st.messages():
            if st.config_damaged and m in st.problems:
                m += f" (repair: slotkeeper set {st.name!r} --slots N --create)"
            out.append(m)
    return out


def capacity(snap: Snapshot) -> str:
    c = snap.config
    parts = []
    if c.slots is not None:
        parts.append(f"{c.slots} slot(s)")
    if c.rate is not None:
        parts.append(f"rate {c.rate}" + (" spread" if c.spread else ""))
    return ", ".join(parts) or "-"


def limits_table(
    namespace: str,
    stats: list[LimitStats],
    busiest: dict[str, list[tuple[str, int]]] | None = None,
) -> str:
    """``ls``: one row per limit; ``busiest`` names each template's busiest keys (slots used)."""
    if not stats:
        return (
            f"no limits in namespace {namespace!r} (create one: slotkeeper create NAME --slots N)"
        )
    rows: list[list[Any]] = []
    for st in stats:
        s = st.snapshot
        if s is None:
            rows.append([st.name, "?", "?", "?", "?", "?", "UNREADABLE", "", ""])
            continue
        state = "yes" if s.config.enabled else "no"
        if st.problems:
            state += " (!)"
        c = s.config
        rate = "-"
        if c.rate is not None:
            rate = f"{s.rate_in_window}/{c.rate}" + (" spread" if c.spread else "")
        desc = c.description
        if c.is_template:
            keys = ", ".join(f"{k} ({u})" for k, u in (busiest or {}).get(st.name, []))
            desc = (
                f"template: {s.n_keys} key(s)"
                + (f", total {c.total}" if c.total else "")
                + (f"; busiest: {keys}" if keys else "")
                + (f"; {desc}" if desc else "")
            )
        rows.append(
            [
                st.name,
                s.used,
                "-" if c.slots is None else c.slots,
                rate,
                st.leases,
                st.waiters,
                state,
                ttl_text(c.ttl_s),
                desc,
            ]
        )
    return table(
        ["NAME", "USED", "SLOTS", "RATE", "LEASES", "WAITERS", "ENABLED", "TTL", "DESCRIPTION"],
        rows,
        right=(1, 2, 4, 5),
    )


def limit_text(st: LimitStats) -> str:
    """``show NAME``: config, counters, holders, the queue in order."""
    s = st.snapshot
    assert s is not None
    cfg, c, now = s.config, s.counters, s.now_ms
    slots = "no slot cap" if cfg.slots is None else f"{s.used}/{cfg.slots} in use"
    lines = [
        f"limit:       {cfg.name}",
        f"slots:       {slots} by {st.leases} lease(s)"
        + ("" if cfg.enabled else "  [DISABLED: admits everyone]"),
        f"ttl:         {ttl_text(cfg.ttl_s)}",
    ]
    if cfg.rate is not None:
        room = "now" if not s.rate_room_ms else f"in {duration(s.rate_room_ms / 1000)}"
        lines.append(
            f"rate:        {s.rate_in_window}/{cfg.rate} used in the window"
            + (" (spread)" if cfg.spread else "")
            + f"; next unit free {room}"
        )
    if cfg.max_waiters is not None:
        lines.append(f"max waiters: {cfg.max_waiters} ({c.rejected} request(s) rejected so far)")
    if cfg.is_template:
        lines.append(
            f"template:    {s.n_keys} key(s) made from it"
            + (f", total {cfg.total} slot(s)" if cfg.total else "")
            + f", idle keys go after {duration_text(cfg.idle_ttl_s)}"
        )
    if cfg.template:
        lines.append(f"made from:   template {cfg.template!r}")
    if cfg.description:
        lines.append(f"description: {cfg.description}")
    lines += [
        f"created:     {timestamp(cfg.created_ms)}   updated: {timestamp(cfg.updated_ms)}",
        f"counters:    acquired {c.acquired}, released {c.released}, expired "
        f"{c.expired}, revoked {c.revoked}, timed out {c.timed_out}",
        f"wait:        p50 {duration(wait_quantile(c, 0.5))}, "
        f"p95 {duration(wait_quantile(c, 0.95))}",
        "",
    ]
    if s.holders:
        hrows: list[list[Any]] = [
            [
                h.lease_id,
                h.occupy,
                h.host,
                h.pid or "",
                h.worker,
                h.label,
                duration((now - h.acquired_ms) / 1000) if h.acquired_ms else "?",
                duration((h.expires_ms - now) / 1000) if h.expires_ms else "?",
                h.token,
            ]
            if not h.garbage
            else [h.lease_id, "?", "UNREADABLE RECORD", "", "", "", "", "", ""]
            for h in s.holders
        ]
        lines.append(f"holders ({len(s.holders)}):")
        lines.append(
            table(
                ["LEASE", "OCCUPY", "HOST", "PID", "WORKER", "LABEL", "AGE", "EXPIRES IN", "TOKEN"],
                hrows,
                right=(1, 3, 8),
                indent="  ",
            )
        )
    else:
        lines.append("holders: none")
    if s.waiters:
        rows: list[list[Any]] = []
        for i, (w, r) in enumerate(zip(s.waiters, waiter_reasons(s), strict=True)):
            if w.garbage:
                rows.append([i + 1, w.ticket_id, "?", "", "UNREADABLE RECORD", "", "", "", "", ""])
                continue
            waited = duration((now - w.arrived_ms) / 1000) if w.arrived_ms else "?"
            rows.append(
                [i + 1, w.ticket_id, w.occupy, w.priority, w.host, w.pid or "", w.worker, w.label]
                + [waited, r.text]
            )
        lines.append(f"queue ({s.n_waiters}):")
        lines.append(
            table(
                ["#", "TICKET", "OCCUPY", "PRIO", "HOST", "PID", "WORKER", "LABEL", "WAITING"]
                + ["WHY"],
                rows,
                right=(0, 2, 3, 5),
                indent="  ",
            )
        )
    else:
        lines.append("queue: empty")
    more_h = st.leases - len(s.holders)
    if more_h > 0:
        lines.append(f"({more_h} more holder(s) not shown; --max)")
    return "\n".join(lines)


def _rate(r: float | None) -> str:
    return "-" if r is None else f"{r:.1f}"


def top_table(
    head: str,
    stats: list[LimitStats],
    rates: dict[str, tuple[float | None, float | None]],
) -> str:
    """One frame of ``top``: ``rates`` maps a limit to (acquired/s, expired/s)."""
    if not stats:
        return head + "\n\nno limits (create one: slotkeeper create NAME --slots N)"
    rows: list[list[Any]] = []
    notes = []
    for st in stats:
        s = st.snapshot
        if s is None:
            rows.append([st.name, "?", "", "", "", "", "", "", "", "UNREADABLE"])
            notes += st.messages()
            continue
        acq, exp = rates.get(st.name, (None, None))
        flags = []
        if not s.config.enabled:
            flags.append("disabled")
        if s.config.rate is not None:
            flags.append(f"rate {s.rate_in_window}/{s.config.rate}")
        if s.config.is_template:
            flags.append(f"template: {s.n_keys} key(s)")
        if st.problems:
            flags.append(f"{len(st.problems)} problem(s)")
            notes += st.messages()
        rows.append(
            [
                st.name,
                f"{s.used}/{'-' if s.config.slots is None else s.config.slots}",
                bar(s.used, s.config.slots or 0),
                st.leases,
                st.waiters,
                duration(wait_quantile(s.counters, 0.95)),
                _rate(acq),
                s.counters.expired,
                _rate(exp),
                " ".join(flags),
            ]
        )
    out = (
        head
        + "\n\n"
        + table(
            ["LIMIT", "USED", "", "LEASES", "WAITERS", "WAIT p95", "ACQ/s", "EXPIRED", "EXP/s", ""],
            rows,
            right=(1, 3, 4, 5, 6, 7, 8),
        )
    )
    if notes:
        out += "\n\n" + "\n".join(f"! {n}" for n in notes[:10])
    return out
