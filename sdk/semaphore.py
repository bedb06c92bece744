"""``Semaphore``: ``distributed.Semaphore``'s API on a slotkeeper limit (also ``slotkeeper.dask``).

>>> from slotkeeper.dask import Semaphore      # was: from distributed import Semaphore
>>> sem = Semaphore(max_leases=2, name="my_database")
>>> def access_resource(s, sem):
...     with sem:
...         ...
>>> client.gather(client.map(access_resource, range(10), sem=sem))
>>> sem.close()

The semaphore carries its limiter's configuration (URL, namespace; default the process's) into
the tasks it is passed to, so workers need no setup. The semaphore *is* the slotkeeper limit
``name`` (created with ``max_leases`` slots if missing), so every Semaphore of that name — in
any Dask cluster, or outside Dask — and every ``slotkeeper.limit(name)`` share one bound.
Waiters queue FIFO and are woken by the release itself; the state lives in Redis, so a
scheduler restart loses nothing.

Differences from Dask's Semaphore (and why):

* Lease lifetime: a lease has a TTL (``ttl``, default the limiter's, 30 s, like Dask's
  ``distributed.scheduler.locks.lease-timeout``) renewed by the holder process's heartbeat
  thread, not by the Dask client. A holder that dies or freezes loses its slot after the TTL,
  and a lease that expired is never resurrected by a late renewal, so the bound is never
  overbooked (Dask warns that its leases can be). The holder learns it (a warning is logged;
  ``release()`` then returns False).
* An existing limit keeps its size: a ``max_leases`` that differs from it only warns (as Dask
  does), and ``slotkeeper set NAME --slots N`` resizes it for everyone at once.
* ``close()`` gives back this object's leases and deletes the limit if nobody holds it (Dask
  drops the state even while held); a held limit is left in place with a warning.
* ``acquire``/``release`` are plain blocking calls; in ``async`` code use ``async with sem`` or
  ``await sem.acquire_async()`` / ``await sem.release_async()``.
"""

from __future__ import annotations

import collections
import threading
import uuid
import warnings
from types import TracebackType
from typing import Any

from slotkeeper.broker.errors import (
    AcquireTimeout,
    InvalidType,
    LimitExists,
    LimitHeld,
    LimitNotFound,
    SlotkeeperError,
)
from slotkeeper.lease import Lease
from slotkeeper.limiter import Limiter, check_timeout, get_limiter


class ReleasedTooOften(SlotkeeperError, RuntimeError):
    """``release()`` on a Semaphore that holds no lease (Dask raises RuntimeError too)."""


def parse_timeout(timeout: object) -> float | None:
    """Seconds, or a Dask time string ("200ms", "1s") when dask is installed."""
    if isinstance(timeout, str):
        try:
            from dask.utils import parse_timedelta
        except ImportError as exc:
            raise InvalidType("a str timeout needs dask installed; pass seconds") from exc
        timeout = parse_timedelta(timeout)
    return check_timeout(timeout)


class Semaphore:
    """At most ``max_leases`` holders of ``name`` at once, everywhere the Redis is shared.

    ``register``, ``scheduler_rpc`` and ``loop`` are accepted for compatibility with
    ``distributed.Semaphore`` (there is no scheduler state to register). slotkeeper's own:
    ``limiter`` (default: the process's, taken at construction) and ``ttl`` (lease TTL in
    seconds, default the limiter's)."""

    def __init__(
        self,
        max_leases: int = 1,
        name: str | None = None,
        register: bool = True,
        scheduler_rpc: Any = None,
        loop: Any = None,
        *,
        limiter: Limiter | None = None,
        ttl: float | None = None,
    ) -> None:
        if isinstance(max_leases, bool) or not isinstance(max_leases, int) or max_leases < 1:
            raise InvalidType("max_leases must be an int >= 1")
        if limiter is not None and not isinstance(limiter, Limiter):
            raise InvalidType("limiter must be a slotkeeper.Limiter")
        self.name = name or f"semaphore-{uuid.uuid4().hex}"
        self.max_leases = max_leases
        # tasks carry the configuration (URL, namespace) with the pickled Semaphore
        self.limiter = limiter or get_limiter()
        self.ttl = ttl
        self._leases: collections.deque[Lease] = collections.deque()
        self._lock = threading.Lock()
        if register:
            self.register()

    # -- configuration ------------------------------------------------------------------------

    def _limiter(self) -> Limiter:
        return self.limiter

    def register(self) -> None:
        """Create the limit with ``max_leases`` slots if it is missing."""
        lim = self._limiter()
        try:
            lim.create(self.name, self.max_leases, description="slotkeeper.dask.Semaphore")
        except LimitExists:
            have = lim.broker.limit_slots(self.name)
            if have != self.max_leases:
                warnings.warn(
                    f"Inconsistent max leases: {have} (existing) vs {self.max_leases} "
                    f"for semaphore {self.name!r}: the existing limit's size wins",
                    RuntimeWarning,
                    stacklevel=3,
                )

    def __await__(self) -> Any:
        async def registered() -> Semaphore:
            return self

        return registered().__await__()

    def __getstate__(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "max_leases": self.max_leases,
            "limiter": self.limiter,
            "ttl": self.ttl,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._leases = collections.deque()  # leases belong to the process that took them
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Semaphore: name={self.name} max_leases={self.max_leases}>"

    # -- leases -------------------------------------------------------------------------------

    def _kwargs(self, timeout: float | None) -> dict[str, Any]:
        return dict(
            timeout=timeout,
            ttl=self.ttl,
            default_slots=self.max_leases,
            label=f"Semaphore {self.name}",
        )

    def _taken(self, lease: Lease) -> bool:
        with self._lock:
            self._leases.append(lease)
        return True

    def acquire(self, timeout: float | str | None = None) -> bool:
        """Take one lease; True once held, False if ``timeout`` (seconds, or "200ms") passed."""
        try:
            lease = self._limiter().acquire(self.name, **self._kwargs(parse_timeout(timeout)))
        except AcquireTimeout:
            return False
        return self._taken(lease)

    async def acquire_async(self, timeout: float | str | None = None) -> bool:
        """``acquire`` without blocking the event loop."""
        lim = self._limiter()
        try:
            lease = await lim.acquire_async(self.name, **self._kwargs(parse_timeout(timeout)))
        except AcquireTimeout:
            return False
        return self._taken(lease)

    def _oldest(self) -> Lease:
        with self._lock:
            if not self._leases:
                raise ReleasedTooOften("Released too often")
            return self._leases.popleft()

    def release(self) -> bool:
        """Give back this object's oldest lease. True if it was still held; False if it had
        been lost (expired or revoked) meanwhile. ``ReleasedTooOften`` if none is held."""
        return self._oldest().release()

    async def release_async(self) -> bool:
        """``release`` without blocking the event loop."""
        return await self._oldest().release_async()

    def get_value(self) -> int:
        """Leases held right now on this semaphore, by anyone (slots in use of the limit)."""
        try:
            return int(self._limiter().broker.snapshot(self.name, max_items=1).used)
        except LimitNotFound:
            return 0

    def close(self) -> None:
        """Give back this object's leases; delete the limit unless someone still holds it."""
        while True:
            with self._lock:
                if not self._leases:
                    break
                lease = self._leases.popleft()
            lease.release()
        try:
            self._limiter().delete(self.name)
        except LimitNotFound:
            pass
        except LimitHeld as exc:
            warnings.warn(f"Closing semaphore {self.name}: {exc}", RuntimeWarning, stacklevel=2)

    # -- context managers ---------------------------------------------------------------------

    def __enter__(self) -> Semaphore:
        self.acquire()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    async def __aenter__(self) -> Semaphore:
        await self.acquire_async()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release_async()


__all__ = ["ReleasedTooOften", "Semaphore", "parse_timeout"]
