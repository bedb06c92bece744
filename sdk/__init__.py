"""slotkeeper: distributed concurrency limits on Redis — leased, fair, push-woken slots.

>>> from slotkeeper import limit
>>> with limit("gpu:{worker}"):
...     ...
"""

from slotkeeper.broker.errors import (
    AcquireTimeout,
    BrokerError,
    BrokerUnavailable,
    InvalidArgument,
    InvalidName,
    InvalidType,
    LeaseLost,
    LimitExists,
    LimitHeld,
    LimitNotFound,
    NoRate,
    OccupyExceedsLimit,
    QueueFull,
    SlotkeeperError,
    UnsafeDirectory,
)
from slotkeeper.executor import ThrottledExecutor
from slotkeeper.lease import Lease
from slotkeeper.limit import limit, limited
from slotkeeper.limiter import Limiter, configure, get_limiter
from slotkeeper.rate_limit import rate_limit, rate_limit_async
from slotkeeper.reservation import Reservation
from slotkeeper.tags import tagged, tags

__version__ = "0.1.0"

__all__ = [
    "AcquireTimeout",
    "BrokerError",
    "BrokerUnavailable",
    "UnsafeDirectory",
    "InvalidArgument",
    "InvalidName",
    "InvalidType",
    "Lease",
    "LeaseLost",
    "LimitExists",
    "LimitHeld",
    "LimitNotFound",
    "Limiter",
    "NoRate",
    "OccupyExceedsLimit",
    "QueueFull",
    "Reservation",
    "SlotkeeperError",
    "ThrottledExecutor",
    "configure",
    "get_limiter",
    "limit",
    "limited",
    "rate_limit",
    "rate_limit_async",
    "tagged",
    "tags",
]
