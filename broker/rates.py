"""Rates (``600/min``) and durations (``1h``, ``90s``): parsed and validated here, once.

A rate ``N/P`` means: at most N units granted in any sliding window of length P. P is a unit
(``s``, ``min``, ``h``) with an optional integer multiple (``100/5min``). ``str(rate)`` gives the
canonical text back, so a rate round-trips through the CLI, ``export`` and ``apply``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from slotkeeper.broker.errors import InvalidArgument, InvalidType

UNITS_MS = {"s": 1000, "min": 60_000, "h": 3_600_000}
_ALIASES = {
    "s": "s",
    "sec": "s",
    "second": "s",
    "seconds": "s",
    "min": "min",
    "minute": "min",
    "minutes": "min",
    "h": "h",
    "hr": "h",
    "hour": "h",
    "hours": "h",
}
MAX_UNITS = 10**9
MAX_PERIOD_MS = 7 * 86_400_000
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-zA-Z]+)\s*$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_HELP = "expected N/s, N/min or N/h (e.g. 600/min, 5/s, 100/5min)"


@dataclass(frozen=True, order=True)
class Rate:
    """At most ``units`` in any window of ``period_ms``."""

    units: int
    period_ms: int

    def __post_init__(self) -> None:
        if not 1 <= self.units <= MAX_UNITS:
            raise InvalidArgument(f"rate units must be between 1 and {MAX_UNITS}, got {self.units}")
        if not 1000 <= self.period_ms <= MAX_PERIOD_MS:
            raise InvalidArgument("rate period must be between 1 s and 7 days")

    def __str__(self) -> str:
        for unit in ("h", "min", "s"):
            ms = UNITS_MS[unit]
            if self.period_ms % ms == 0:
                k = self.period_ms // ms
                return f"{self.units}/{'' if k == 1 else k}{unit}"
        raise AssertionError("periods are whole seconds")  # pragma: no cover

    @property
    def per_second(self) -> float:
        return self.units * 1000.0 / self.period_ms

    @property
    def interval_ms(self) -> float:
        """Spacing of grants under --spread: one unit every period/units."""
        return self.period_ms / self.units


def parse_rate(text: object) -> Rate:
    """``"600/min"`` -> Rate(600, 60000). Raises InvalidArgument with one clear line."""
    if isinstance(text, Rate):
        return text
    if not isinstance(text, str):
        raise InvalidType(f"rate must be a string like '600/min', not {type(text).__name__}")
    m = _RATE_RE.match(text)
    if not m:
        raise InvalidArgument(f"bad rate {text!r}: {_HELP}")
    n, mult, unit = int(m.group(1)), m.group(2), m.group(3).lower()
    if unit not in _ALIASES:
        raise InvalidArgument(f"bad rate {text!r}: unknown unit {m.group(3)!r}; {_HELP}")
    if n < 1:
        raise InvalidArgument(f"bad rate {text!r}: the number of units must be at least 1")
    k = int(mult) if mult else 1
    if k < 1:
        raise InvalidArgument(f"bad rate {text!r}: the period must be at least 1 {unit}")
    try:
        return Rate(n, k * UNITS_MS[_ALIASES[unit]])
    except InvalidArgument as exc:
        raise InvalidArgument(f"bad rate {text!r}: {exc}") from None


def parse_duration(text: object, what: str = "duration") -> float:
    """Seconds from ``3600``, ``90s``, ``30min``, ``1h`` (or a number). Must be > 0."""
    if isinstance(text, bool):
        raise InvalidType(f"{what} must be a number of seconds or like '1h'")
    if isinstance(text, int | float):
        secs = float(text)
    elif isinstance(text, str):
        m = _DURATION_RE.match(text)
        unit = m.group(2).lower() if m else ""
        if not m or (unit and unit not in _ALIASES):
            raise InvalidArgument(f"bad {what} {text!r}: expected seconds, or like 90s, 30min, 1h")
        secs = float(m.group(1)) * (UNITS_MS[_ALIASES[unit]] / 1000 if unit else 1)
    else:
        raise InvalidType(f"{what} must be a number of seconds or like '1h'")
    if not (secs == secs) or secs < 1 or secs > 365 * 86400:
        raise InvalidArgument(f"{what} must be between 1 s and 365 days, got {text!r}")
    return secs


def duration_text(secs: float) -> str:
    """The shortest exact text parse_duration reads back (3600 -> '1h')."""
    for unit, ms in (("h", 3_600_000), ("min", 60_000)):
        if (secs * 1000) % ms == 0:
            return f"{int(secs * 1000 // ms)}{unit}"
    if float(secs).is_integer():
        return f"{int(secs)}s"
    return f"{secs}s"
