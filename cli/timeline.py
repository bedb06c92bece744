"""Who held a slot when: stamps, the maximum overlap per tag, and a terminal timeline chart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Stamp:
    """One task's [start, end] while it held its slots (seconds since the run began)."""

    name: str
    tags: tuple[str, ...]
    start: float
    end: float


def max_concurrent(stamps: Sequence[Stamp], tag: str | None = None) -> int:
    """Most intervals open at once (of tasks with ``tag``); touching intervals do not overlap."""
    events: list[tuple[float, int]] = []
    for s in stamps:
        if tag is None or tag in s.tags:
            events.append((s.start, 1))
            events.append((s.end, -1))
    events.sort(key=lambda e: (e[0], e[1]))  # at equal times, ends (-1) before starts (+1)
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def chart(stamps: Sequence[Stamp], width: int = 60, unicode: bool = True) -> str:
    """A row per task: a mark in each column (an instant of time) at which it held its slots."""
    if not stamps:
        return "(nothing ran)"
    on, off = ("\u2588", "\u00b7") if unicode else ("#", ".")
    t_end = max(s.end for s in stamps) or 1e-9
    step = t_end / width
    label_w = max(len(f"{s.name} [{','.join(s.tags)}]") for s in stamps)
    lines = []
    for s in stamps:
        cells = []
        for i in range(width):
            mid = (i + 0.5) * step  # sample each column at one instant: a column never shows
            cells.append(on if s.start <= mid < s.end else off)  # more holders than overlapped
        label = f"{s.name} [{','.join(s.tags)}]"
        lines.append(f"  {label:<{label_w}} |{''.join(cells)}|")
    axis_l, axis_r = "0s", f"{t_end:.2f}s"
    lines.append(f"  {'':<{label_w}}  {axis_l}{axis_r:>{width - len(axis_l)}}")
    return "\n".join(lines)
