"""Human-readable numbers shared by the terminal and HTML renderings."""

from __future__ import annotations


def duration(seconds: float | None) -> str:
    """1.2s, 3m04s, 2h05m, 3d04h; '-' for None."""
    if seconds is None:
        return "-"
    neg = seconds < 0
    s = abs(seconds)
    if s < 10:
        if s == 0 or s >= 0.1:
            out = f"{s:.1f}s"
        elif s >= 0.01:
            out = f"{s * 1000:.0f}ms"
        else:
            out = f"{s * 1000:.1f}ms"
    elif s < 60:
        out = f"{s:.0f}s"
    elif s < 3600:
        out = f"{int(s // 60)}m{int(s % 60):02d}s"
    elif s < 86400:
        out = f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    else:
        out = f"{int(s // 86400)}d{int(s % 86400 // 3600):02d}h"
    return ("-" if neg else "") + out
