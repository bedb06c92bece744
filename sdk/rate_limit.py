"""``rate_limit(...)``: take rate units of one or more limits, with nothing to give back.

>>> from slotkeeper import rate_limit
>>> rate_limit("api")                       # one unit of api's --rate, waits until it is due
>>> r = rate_limit("llm", occupy=1000)      # reserve 1000 tokens ...
>>> r.settle(730)                           # ... and settle to what the call really used
"""

from __future__ import annotations

from slotkeeper.limiter import Limiter, get_limiter
from slotkeeper.reservation import Reservation


def rate_limit(
    *names: str,
    occupy: int = 1,
    timeout: float | None = None,
    priority: int = 0,
    label: str | None = None,
    limiter: Limiter | None = None,
) -> Reservation:
    """Block until ``occupy`` units of every named limit's rate are taken (all at once, in one
    atomic step), FIFO and priority among other waiters. ``timeout``: None waits forever, 0 tries
    once, t > 0 raises AcquireTimeout (a timed-out request takes no units). Raises QueueFull if a
    limit's --max-waiters is reached, NoRate if a limit has no rate."""
    return (limiter or get_limiter()).rate_limit(
        *names, occupy=occupy, timeout=timeout, priority=priority, label=label
    )


async def rate_limit_async(
    *names: str,
    occupy: int = 1,
    timeout: float | None = None,
    priority: int = 0,
    label: str | None = None,
    limiter: Limiter | None = None,
) -> Reservation:
    """The awaitable twin of :func:`rate_limit` (never blocks the event loop)."""
    return await (limiter or get_limiter()).rate_limit_async(
        *names, occupy=occupy, timeout=timeout, priority=priority, label=label
    )
