"""``limit(...)``: a context manager (``with`` and ``async with``) and a decorator; ``limited``."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from slotkeeper.broker.errors import InvalidArgument, InvalidType, LeaseLost
from slotkeeper.broker.protocol import check_occupy, check_priority, check_ttl
from slotkeeper.lease import Lease
from slotkeeper.limiter import Limiter, check_timeout, get_limiter
from slotkeeper.naming import check_template
from slotkeeper.pending import PendingRequest, check_slow_wait

P = ParamSpec("P")
T = TypeVar("T")


class limit:  # noqa: N801 - reads like a function at the call site
    """Hold slots of every named limit around a block or a call.

    >>> with limit("gpu:{worker}", timeout=10) as lease:
    ...     train()

    On exit the lease is released; if it was lost meanwhile (expired or revoked) ``LeaseLost`` is
    raised (``raise_on_lost=False`` to only log; ``on_lost`` is called when it is noticed).
    Picklable (configuration only) and reusable; one object may guard many threads at once.
    """

    def __init__(self, *names: str, occupy: int = 1, timeout: float | None = None,
                 priority: int = 0, ttl: float | None = None, default_slots: int | None = None,
                 strict: bool = True, on_lost: Callable[[Lease], None] | None = None,
                 raise_on_lost: bool = True, label: str | None = None,
                 durable: bool = False, limiter: Limiter | None = None,
                 slow_wait: float | None = None,
                 on_waiting: Callable[[PendingRequest], None] | None = None) -> None:
        if not names:
            raise InvalidArgument("limit() needs at least one limit name")
        for n in names:
            check_template(n)
        check_occupy(occupy)
        check_timeout(timeout)
        check_priority(priority)
        if ttl is not None:
            check_ttl(ttl)
        if not isinstance(strict, bool):
            raise InvalidType("strict must be a bool")
        if on_lost is not None and not callable(on_lost):
            raise InvalidType("on_lost must be callable")
        if on_waiting is not None and not callable(on_waiting):
            raise InvalidType("on_waiting must be callable")
        if slow_wait is not None:
            check_slow_wait(slow_wait)
        self.names = names
        self.kwargs: dict[str, Any] = dict(
            occupy=occupy, timeout=timeout, priority=priority, ttl=ttl,
            default_slots=default_slots, strict=strict, on_lost=on_lost, label=label,
            durable=durable, slow_wait=slow_wait, on_waiting=on_waiting)
        self.raise_on_lost = raise_on_lost
        self.limiter = limiter
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {"names": self.names, "kwargs": self.kwargs, "raise_on_lost": self.raise_on_lost,
                "limiter": self.limiter}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"limit({', '.join(map(repr, self.names))}, occupy={self.kwargs['occupy']})"

    def _limiter(self) -> Limiter:
        return self.limiter or get_limiter()

    def _stack_key(self) -> str:
        try:
            task = asyncio.current_task()
        except RuntimeError:
            task = None
        return "stack" if task is None else f"stack-{id(task)}"

    def _push(self, lease: Lease) -> None:
        key = self._stack_key()
        st: list[Lease] | None = getattr(self._local, key, None)
        if st is None:
            st = []
            setattr(self._local, key, st)
        st.append(lease)

    def _pop(self) -> Lease:
        key = self._stack_key()
        st: list[Lease] = getattr(self._local, key)
        lease = st.pop()
        if not st:
            delattr(self._local, key)  # no per-task entries left behind by finished tasks
        return lease

    def acquire(self) -> Lease:
        return self._limiter().acquire(*self.names, **self.kwargs)

    async def acquire_async(self) -> Lease:
        return await self._limiter().acquire_async(*self.names, **self.kwargs)

    def _finish(self, lease: Lease, failed: bool) -> None:
        self._judge(lease, lease.release(), failed)

    async def _finish_async(self, lease: Lease, failed: bool) -> None:
        self._judge(lease, await lease.release_async(), failed)

    def _judge(self, lease: Lease, held: bool, failed: bool) -> None:
        if not held and lease.throttled and self.raise_on_lost and not failed:
            raise LeaseLost(lease.id, lease.names)

    def __enter__(self) -> Lease:
        lease = self.acquire()
        self._push(lease)
        return lease

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._finish(self._pop(), et is not None)

    async def __aenter__(self) -> Lease:
        lease = await self.acquire_async()
        self._push(lease)
        return lease

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._finish_async(self._pop(), et is not None)

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                lease = await self.acquire_async()
                failed = True
                try:
                    result = await fn(*args, **kwargs)
                    failed = False
                    return result
                finally:
                    await self._finish_async(lease, failed)

            return awrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            lease = self.acquire()
            failed = True
            try:
                result = fn(*args, **kwargs)
                failed = False
                return result
            finally:
                self._finish(lease, failed)

        return wrapper


def limited(*names: str, **kwargs: Any) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator form: ``@limited("db", occupy=2)`` holds the slots around every call."""
    return limit(*names, **kwargs)
