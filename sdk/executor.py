"""``ThrottledExecutor``: throttle the tasks of any ``concurrent.futures.Executor`` by tag.

>>> from concurrent.futures import ThreadPoolExecutor
>>> with ThrottledExecutor(ThreadPoolExecutor(8), throttle={"print": 1}) as ex:
...     with tags("example"):
...         a = ex.submit(say_hi, "alice")

A task's tags are its ``@tagged`` ones plus those of every ``tags()`` block active at submit
time. How a throttle dict maps onto limits (run-scoped ``run-<id>:TAG`` limits deleted on
shutdown, or ``scope="global"``: tag T is the shared limit T) is described in
:mod:`slotkeeper.throttle`.

Slots are taken where a task runs (in the worker thread/process), only around its body, held
with the process heartbeat. A task with several throttled tags takes all of them in one atomic
acquire. The submitted callable is a picklable class (function + limit names + Limiter config).
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from slotkeeper.broker.errors import InvalidType
from slotkeeper.limiter import Limiter, check_timeout
from slotkeeper.tags import task_tags
from slotkeeper.throttle import Scope, ThrottledCall, ThrottlePlan

P = ParamSpec("P")
T = TypeVar("T")


class ThrottledExecutor(cf.Executor):
    """Wrap any ``concurrent.futures.Executor`` so tasks carrying a throttled tag run at most
    ``throttle[tag]`` at once — across every process and machine sharing the Redis.

    Parameters: ``executor`` (ThreadPoolExecutor, ProcessPoolExecutor with any start method,
    ``distributed.Client.get_executor()``...); ``throttle`` ``{tag: slots}``; ``limiter`` (default:
    the process default, see :func:`slotkeeper.configure`); ``scope`` ``"run"`` or ``"global"``
    (module docs); ``run_id`` (default: random); ``timeout``/``priority``/``ttl`` for every
    acquire; ``secede`` (Dask: release the worker thread while waiting);
    ``shutdown_executor`` (shut the wrapped executor down with this one, default True).

    ``submit``/``map`` return the wrapped executor's own futures (``map`` submits one task per
    item, so ProcessPoolExecutor's ``chunksize`` does not apply). Tasks carry the Limiter's URL
    and namespace with them; code inside a task that uses the *default* limiter needs the
    configuration in the worker: spawn children inherit the SLOTKEEPER_* variables exported by
    :func:`slotkeeper.configure`, forkserver children those of the fork server (pass
    ``initializer=slotkeeper.configure, initargs=(url, namespace)`` to the pool), Dask workers
    get it from :func:`slotkeeper.dask.install`."""

    def __init__(
        self,
        executor: cf.Executor,
        throttle: Mapping[str, int | None] | None = None,
        *,
        limiter: Limiter | None = None,
        scope: Scope = "run",
        run_id: str | None = None,
        timeout: float | None = None,
        priority: int = 0,
        ttl: float | None = None,
        secede: bool = False,
        shutdown_executor: bool = True,
    ) -> None:
        if not isinstance(executor, cf.Executor) and not hasattr(executor, "submit"):
            raise InvalidType("executor must be a concurrent.futures.Executor")
        self.plan = ThrottlePlan(throttle, limiter=limiter, scope=scope, run_id=run_id)
        self.options: dict[str, Any] = dict(
            timeout=check_timeout(timeout), priority=priority, ttl=ttl, secede=bool(secede)
        )
        self.executor = executor
        self.shutdown_executor = shutdown_executor
        self._lock = threading.Lock()
        self._pending: set[cf.Future[Any]] = set()
        self._closed = False
        self._cleaned = False
        self.plan.setup()

    @property
    def limits(self) -> dict[str, str]:
        """Throttled tag -> limit name."""
        return self.plan.limits

    @property
    def run_id(self) -> str:
        return self.plan.run_id

    @property
    def scope(self) -> Scope:
        return self.plan.scope

    @property
    def limiter(self) -> Limiter:
        return self.plan.limiter

    # -- tasks --------------------------------------------------------------------------------

    def wrap(
        self, fn: Callable[..., T], extra_tags: frozenset[str] = frozenset()
    ) -> Callable[..., T]:
        """The callable actually submitted: ``fn`` itself when no throttled tag applies."""
        names = self.plan.names_for(task_tags(fn) | extra_tags)
        if not names:
            return fn
        call: Callable[..., T] = self.plan.call(fn, names, **self.options)
        return call

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> cf.Future[T]:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
        fut: cf.Future[T] = self.executor.submit(self.wrap(fn), *args, **kwargs)
        with self._lock:
            self._pending.add(fut)
        fut.add_done_callback(self._done)
        return fut

    def _done(self, fut: cf.Future[Any]) -> None:
        with self._lock:
            self._pending.discard(fut)
            last = self._closed and not self._pending
        if last:
            self._cleanup()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            pending = list(self._pending)
        if cancel_futures:
            for f in pending:
                f.cancel()
        if self.shutdown_executor:
            if cancel_futures:
                try:
                    self.executor.shutdown(wait=wait, cancel_futures=True)
                except TypeError:  # e.g. distributed's ClientExecutor: ours are cancelled above
                    self.executor.shutdown(wait=wait)
            else:
                self.executor.shutdown(wait=wait)
        if wait:
            cf.wait(pending)
        with self._lock:
            idle = not self._pending
        if idle or wait:
            self._cleanup()
        # else: the last pending future's callback cleans up

    def _cleanup(self) -> None:
        with self._lock:
            if self._cleaned:
                return
            self._cleaned = True
        self.plan.cleanup()

    def __repr__(self) -> str:
        return (
            f"ThrottledExecutor({type(self.executor).__name__}, throttle={self.plan.throttle!r}, "
            f"scope={self.scope!r}, run_id={self.run_id!r})"
        )


__all__ = ["ThrottledCall", "ThrottledExecutor"]
