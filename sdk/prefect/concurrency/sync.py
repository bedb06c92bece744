"""Drop-in for ``prefect.concurrency.sync``: ``concurrency`` and ``rate_limit`` on slotkeeper.

>>> # was: from prefect.concurrency.sync import concurrency
>>> from slotkeeper.prefect.concurrency.sync import concurrency
>>> with concurrency("gpu:gpu-1", occupy=1):
...     run_model()

Same signatures and behaviour as Prefect 3 (see :mod:`slotkeeper.prefect.concurrency.common`
for how each argument maps); Prefect itself is not needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from slotkeeper.broker.errors import SlotkeeperError
from slotkeeper.lease import Lease
from slotkeeper.prefect.concurrency.common import (
    DEFAULT_LEASE,
    AcquireConcurrencySlotTimeoutError,
    ConcurrencyLimitMissing,
    ConcurrencySlotAcquisitionError,
    Plan,
    finish,
)
from slotkeeper.rate_limit import rate_limit as _rate_limit


def acquire(plan: Plan) -> Lease | None:
    """The lease on every named limit that exists (None: none does, strict=False)."""
    while plan.names:
        try:
            return plan.limiter.acquire(*plan.names, **plan.kwargs())
        except SlotkeeperError as exc:
            plan.failed(exc)
    return None


@contextmanager
def concurrency(
    names: str | list[str],
    occupy: int = 1,
    timeout_seconds: float | None = None,
    max_retries: int | None = None,
    lease_duration: float = 300,
    strict: bool = False,
    holder: Any = None,
    raise_on_lease_renewal_failure: bool | None = None,
) -> Iterator[None]:
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
    lease = acquire(plan)
    failed = True
    try:
        yield
        failed = False
    finally:
        finish(lease, failed, plan.raise_on_lost)


def rate_limit(
    names: str | list[str],
    occupy: int = 1,
    timeout_seconds: float | None = None,
    strict: bool = False,
) -> None:
    """Block until ``occupy`` units of every named limit's rate are taken (Prefect 3's API).
    Each limit needs a rate (``slotkeeper create NAME --rate N/P``); there is nothing to
    release."""
    plan = Plan.make(names, occupy, timeout_seconds, None, DEFAULT_LEASE, strict, None, None)
    while plan.names:
        try:
            _rate_limit(*plan.names, occupy=plan.occupy, timeout=plan.timeout, limiter=plan.limiter)
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
