"""asyncio helpers: a throttled ``gather``.

>>> from slotkeeper.aio import gather
>>> pages = await gather(*(fetch(u) for u in urls), names="api")   # "api" = 4 slots

Each awaitable is awaited only while it holds the slots (``async with limit(...)``), so a coroutine
does not even start before its turn. The bound is the limit's, hence shared with every other
process and machine using it. Waiting never blocks the event loop (push-woken by Redis).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from slotkeeper.broker.errors import InvalidArgument
from slotkeeper.limit import limit
from slotkeeper.limiter import Limiter

T = TypeVar("T")


async def _held(aw: Awaitable[T], guard: limit) -> T:
    async with guard:
        return await aw


async def gather(
    *aws: Awaitable[Any],
    names: str | Sequence[str],
    return_exceptions: bool = False,
    limiter: Limiter | None = None,
    **limit_kwargs: Any,
) -> list[Any]:
    """Like :func:`asyncio.gather`, but each awaitable runs holding the slots of ``names``
    (one name or several, taken atomically). Results keep the input order. Other keywords as for
    :class:`slotkeeper.limit` (occupy, timeout, priority, ttl, default_slots, strict...).

    If the gather is cancelled, waiting awaitables withdraw their tickets and running ones release
    their slots; coroutines that never got a slot are closed without running."""
    if isinstance(names, str):
        names = (names,)
    if not names:
        raise InvalidArgument("gather() needs at least one limit name")
    guard = limit(*names, limiter=limiter, **limit_kwargs)
    held = [_held(aw, guard) for aw in aws]
    try:
        results: list[Any] = await asyncio.gather(*held, return_exceptions=return_exceptions)
    finally:
        for aw in aws:  # never-started coroutines: close them (no "never awaited" warnings)
            if inspect.iscoroutine(aw) and inspect.getcoroutinestate(aw) == inspect.CORO_CREATED:
                aw.close()
    return results


__all__ = ["gather"]
