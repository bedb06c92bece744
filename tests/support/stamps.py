"""Independent checks over [start, end] stamps gathered from many processes."""

from __future__ import annotations

from collections.abc import Iterable


def max_concurrency(intervals: Iterable[tuple[int, int, int]]) -> int:
    """Largest total weight of intervals (start, end, weight) overlapping at one instant.

    Ends sort before starts at the same instant (a release at t then an acquire at t do not overlap)."""
    events: list[tuple[int, int, int]] = []
    for start, end, w in intervals:
        events.append((start, 1, w))
        events.append((end, 0, -w))
    events.sort()
    cur = best = 0
    for _, _, delta in events:
        cur += delta
        best = max(best, cur)
    return best


def per_name(stamps: list[dict], name: str) -> list[tuple[int, int, int]]:  # type: ignore[type-arg]
    return [(s["t0"], s["t1"], s["occ"]) for s in stamps if name in s["names"]]
