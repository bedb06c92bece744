"""Drop-ins for ``prefect.concurrency``: change the import, keep the code.

    from prefect.concurrency.sync import concurrency, rate_limit        # before
    from slotkeeper.prefect.concurrency.sync import concurrency, rate_limit  # after

and the same for ``prefect.concurrency.asyncio``.

The limits live in slotkeeper's Redis (``slotkeeper create NAME --slots N``, or ``slotkeeper
apply`` on ``prefect gcl ls`` output); no Prefect server is involved. See
:mod:`slotkeeper.prefect.concurrency.common` for how each argument maps.
"""

from slotkeeper.prefect.concurrency.common import (
    AcquireConcurrencySlotTimeoutError,
    ConcurrencyLimitMissing,
    ConcurrencySlotAcquisitionError,
)

__all__ = [
    "AcquireConcurrencySlotTimeoutError",
    "ConcurrencyLimitMissing",
    "ConcurrencySlotAcquisitionError",
]
