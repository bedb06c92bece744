"""Drop-in for ``prefect.concurrency.asyncio``: ``concurrency`` and ``rate_limit`` on slotkeeper.

>>> from slotkeeper.prefect.concurrency.asyncio import concurrency
>>> async with concurrency(["db", "api"], occupy=2, timeout_seconds=30):
...     await query()

Waiting never blocks the event loop (push-woken by Redis). Same signatures and behaviour as
Prefect 3 (see :mod:`slotkeeper.prefect.concurrency.common`); Prefect itself is not needed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from slotkeeper.broker.errors import SlotkeeperError
from slotkeeper.lease import Lease
from slotkeeper.prefect.concurrency.common import (
    DEFAULT_LEASE,
    AcquireConcurrencySlotTimeoutError,
    ConcurrencyLimitMissing,
    ConcurrencySlotAcquisitionError,
    Plan,
    finish_async,
)
from slotkeeper.rate_limit import rate_limit_async


async def acquire(plan: Plan) -> Lease | None:
    """The lease on every named limit that exists (None: none does, strict=False)."""
    while plan.names:
        try:
            return await plan.limiter.acquire_async(*plan.names, **plan.kwargs())
        except SlotkeeperError as exc:
            plan.failed(exc)
    return None


@asynccontextmanager
async def concurrency(
    names: str | list[str],
    occupy: int = 1,
    timeout_seconds: float | None = None,
    max_retries: int | None = None,
    lease_duration: float = 300,
    strict: bool = False,
    holder: Any = None,
    raise_on_lease_renewal_failure: bool | None = None,
) -> AsyncIterator[None]:
    """Hold ``occupy`` slots of every limit in ``names`` around the block (Prefect 3's API)."""
    plan = Plan.make(
        names,
        occupy,
        timeout_seconds,
        max_retries,
        lease_duration,
        strict,
        holder,
        raise_on_lease_renewal_failure,
    )
    lease = await acquire(plan)
    failed = True
    try:
        yield
        failed = False
    finally:
        await finish_async(lease, failed, plan.raise_on_lost)


async def rate_limit(
    names: str | list[str],
    occupy: int = 1,
    timeout_seconds: float | None = None,
    strict: bool = False,
) -> None:
    """Wait (without blocking the loop) until ``occupy`` units of every named limit's rate are
    taken (Prefect 3's API). Each limit needs a rate; there is nothing to release."""
    plan = Plan.make(names, occupy, timeout_seconds, None, DEFAULT_LEASE, strict, None, None)
    while plan.names:
        try:
            await rate_limit_async(
                *plan.names, occupy=plan.occupy, timeout=plan.timeout, limiter=plan.limiter
            )
            return
        except SlotkeeperError as exc:
            plan.failed(exc, "rate")


__all__ = [
    "AcquireConcurrencySlotTimeoutError",
    "ConcurrencyLimitMissing",
    "ConcurrencySlotAcquisitionError",
    "concurrency",
    "rate_limit",
]
