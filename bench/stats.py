"""Small statistics helpers: percentiles, Jain's fairness index, overlap of [start, end] stamps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# How a script call shows in INFO commandstats and the SLOWLOG: EVALSHA (or EVAL) on Redis 6.2
# and where the function library cannot be used, FCALL / FCALL_RO (Redis >= 7, the library).
SCRIPT_COMMANDS = ("evalsha", "eval", "fcall", "fcall_ro")


def script_calls(commandstats: Mapping[str, Any]) -> tuple[int, int]:
    """(script calls, their total µs) from an INFO commandstats reply."""
    calls = usec = 0
    for name in SCRIPT_COMMANDS:
        st = commandstats.get(f"cmdstat_{name}", {})
        calls += int(st.get("calls", 0))
        usec += int(st.get("usec", 0))
    return calls, usec


def is_script_call(command: str) -> bool:
    """A SLOWLOG entry's command line is a script call."""
    return command.split(" ", 1)[0].lower() in SCRIPT_COMMANDS


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation; 0.0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def summary_ms(ns_values: Sequence[int]) -> dict[str, float]:
    """p50 / p99 / max of durations given in ns, in ms."""
    ms = [v / 1e6 for v in ns_values]
    return {
        "p50_ms": round(percentile(ms, 50), 4),
        "p99_ms": round(percentile(ms, 99), 4),
        "max_ms": round(max(ms), 4) if ms else 0.0,
        "n": len(ms),
    }


def jain(counts: Sequence[float]) -> float:
    """Jain's fairness index: 1.0 when every party got the same, 1/n when one got everything."""
    if not counts or not any(counts):
        return 0.0
    s = float(sum(counts))
    return s * s / (len(counts) * sum(float(c) * c for c in counts))


def max_overlap(intervals: Sequence[tuple[int, int]]) -> int:
    """Largest number of [start, end] intervals open at one instant (an end at t closes before a
    start at t opens: back-to-back holds do not overlap)."""
    events: list[tuple[int, int]] = []
    for a, b in intervals:
        events.append((a, 1))
        events.append((b, -1))
    events.sort(key=lambda e: (e[0], e[1]))
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def busy_time(intervals: Sequence[tuple[int, int]], lo: int, hi: int) -> int:
    """Sum of interval lengths clipped to [lo, hi] (overlaps count twice: slot-time, not wall)."""
    total = 0
    for a, b in intervals:
        a, b = max(a, lo), min(b, hi)
        if b > a:
            total += b - a
    return total
