"""``ThrottledExecutor``: throttle the tasks of any ``concurrent.futures.Executor`` by tag.

>>> from concurrent.futures import ThreadPoolExecutor
>>> with ThrottledExecutor(ThreadPoolExecutor(8), throttle={"print": 1}) as ex:
...     with tags("example"):
...         a = ex.submit(say_hi, "alice")

How a throttle dict relates to limits (``scope``):

* ``scope="run"`` (default): each tag T gets a *run-scoped* limit ``run-<run_id>:T`` with the
  given slots, created when the executor is made and deleted when it shuts down. Two executors
  never share a bound, even with equal tags; CLI-made limits are never touched.
* ``scope="global"``: tag T *is* the limit named T, shared by every executor, process and
  machine on the same Redis namespace (the CLI's ``slotkeeper create T --slots N``). An int value
  creates the limit with that many slots if it is missing; an existing limit keeps its own size
  (the operator's word wins; a differing value is logged). ``None`` means the limit must exist
  (``LimitNotFound`` otherwise). Global limits are never deleted by an executor.

Slots are taken where a task runs (in the worker thread/process), only around its body, held
with the process heartbeat. A task with several throttled tags takes all of them in one atomic
acquire. The wrapped callable is a picklable class (function + limit names + Limiter config).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, Literal, ParamSpec, TypeVar

from slotkeeper.broker.client import check_slots
from slotkeeper.broker.errors import (
    InvalidArgument,
    InvalidType,
    LeaseLost,
    LimitExists,
    LimitHeld,
    LimitNotFound,
    SlotkeeperError,
)
from slotkeeper.broker.keys import check_name
from slotkeeper.lease import Lease
from slotkeeper.limiter import Limiter, check_timeout, get_limiter
from slotkeeper.naming import check_template, host_name, resolve
from slotkeeper.runtime import new_id
from slotkeeper.tags import check_tag, task_tags

log = logging.getLogger("slotkeeper")

P = ParamSpec("P")
T = TypeVar("T")
Scope = Literal["run", "global"]
SCOPES = ("run", "global")


def is_template(name: str) -> bool:
    return "{worker}" in name or "{host}" in name


def in_dask_task() -> bool:
    from slotkeeper.naming import dask_worker_name

    return dask_worker_name() is not None


def finish(lease: Lease, failed: bool, raise_on_lost: bool = True) -> None:
    """Release; raise LeaseLost if the lease was lost while the body ran (unless it failed)."""
    held = lease.release()
    if not held and lease.throttled and raise_on_lost and not failed:
        raise LeaseLost(lease.id, lease.names)


class ThrottledCall:
    """``fn(*args, **kwargs)`` holding one slot of every limit in ``names`` (callable class, so it
    pickles for process pools and Dask: it carries the function, the limit names and the
    Limiter's configuration, never a connection).

    ``ensure`` maps templated names (``gpu:{worker}``) to the slots they are created with, where
    the task runs, if missing (``None``: must exist). ``secede=True`` inside a Dask task gives
    the worker thread back while waiting (see :mod:`slotkeeper.dask`)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        names: tuple[str, ...],
        *,
        limiter: Limiter | None = None,
        ensure: Mapping[str, int | None] | None = None,
        secede: bool = False,
        description: str = "",
        raise_on_lost: bool = True,
        **acquire: Any,
    ) -> None:
        if not callable(fn):
            raise InvalidType(f"{fn!r} is not callable")
        self.fn = fn
        self.names = tuple(names)
        self.limiter = limiter
        self.ensure = dict(ensure or {})
        self.secede = secede
        self.description = description
        self.raise_on_lost = raise_on_lost
        if acquire.get("label") is None:
            acquire["label"] = _fn_name(fn)
        self.acquire_kwargs = acquire  # for Limiter.acquire: timeout, priority, ttl, occupy...
        self.__name__ = _fn_name(fn)  # dask key names, reprs

    def __repr__(self) -> str:
        return f"ThrottledCall({self.__name__}, {list(self.names)})"

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _limiter(self) -> Limiter:
        return self.limiter or get_limiter()

    def _ensure_templated(self, lim: Limiter) -> None:
        for template, slots in self.ensure.items():
            name = resolve(template, lim.worker)
            if slots is None:
                lim.broker.snapshot(name, max_items=1)  # LimitNotFound names the CLI command
                continue
            try:
                lim.create(name, slots, description=self.description)
            except LimitExists:
                pass

    def acquire(self) -> Lease:
        lim = self._limiter()
        if self.ensure:
            self._ensure_templated(lim)
        kwargs = dict(self.acquire_kwargs)
        if self.secede and in_dask_task():
            from slotkeeper.dask import acquire_seceded

            return acquire_seceded(lim, self.names, **kwargs)
        return lim.acquire(*self.names, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.names:
            return self.fn(*args, **kwargs)
        lease = self.acquire()
        failed = True
        try:
            result = self.fn(*args, **kwargs)
            failed = False
            return result
        finally:
            finish(lease, failed, self.raise_on_lost)


def _fn_name(fn: object) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    return str(getattr(inner, "__name__", type(inner).__name__))


def check_throttle(throttle: object, scope: str) -> dict[str, int | None]:
    if throttle is None:
        return {}
    if not isinstance(throttle, Mapping):
        raise InvalidType("throttle must be a mapping {tag: slots}")
    out: dict[str, int | None] = {}
    for tag, slots in throttle.items():
        check_tag(tag)
        check_template(tag)
        if slots is None:
            if scope != "global":
                raise InvalidArgument(
                    f"throttle[{tag!r}] = None (\"must exist\") needs scope='global'"
                )
            out[tag] = None
        else:
            out[tag] = check_slots(slots)
    return out


class ThrottledExecutor(cf.Executor):
    """Wrap any ``concurrent.futures.Executor`` so tasks carrying a throttled tag run at most
    ``throttle[tag]`` at once — across every process and machine sharing the Redis.

    Parameters: ``executor`` (ThreadPoolExecutor, ProcessPoolExecutor with any start method,
    ``distributed.Client.get_executor()``...); ``throttle`` ``{tag: slots}``; ``limiter`` (default:
    the process default, see :func:`slotkeeper.configure`); ``scope`` ``"run"`` or ``"global"``
    (module docs); ``run_id`` (default: random); ``timeout``/``priority``/``ttl`` for every
    acquire; ``secede`` (Dask: release the worker thread while waiting);
    ``shutdown_executor`` (shut the wrapped executor down with this one, default True).

    ``submit``/``map`` return the wrapped executor's own futures."""

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
        if scope not in SCOPES:
            raise InvalidArgument(f"scope must be 'run' or 'global', not {scope!r}")
        if limiter is not None and not isinstance(limiter, Limiter):
            raise InvalidType("limiter must be a slotkeeper.Limiter")
        self.throttle = check_throttle(throttle, scope)
        self.scope: Scope = scope
        self.run_id = run_id if run_id is not None else new_id()[:10]
        if not isinstance(self.run_id, str) or not self.run_id:
            raise InvalidArgument("run_id must be a non-empty str")
        self.options: dict[str, Any] = dict(
            timeout=check_timeout(timeout), priority=priority, ttl=ttl, secede=bool(secede)
        )
        self.executor = executor
        self.shutdown_executor = shutdown_executor
        parent = limiter or get_limiter()
        self.limiter = parent
        # shipped to workers: explicit URL and namespace, worker identity resolved where it runs
        self._shipped = Limiter(parent.url, parent.namespace, parent.ttl)
        self.limits: dict[str, str] = {tag: self.limit_name(tag) for tag in self.throttle}
        self._ensure: dict[str, int | None] = {
            self.limits[t]: s for t, s in self.throttle.items() if is_template(self.limits[t])
        }
        self._lock = threading.Lock()
        self._pending: set[cf.Future[Any]] = set()
        self._closed = False
        self._cleaned = False
        self._setup()

    # -- limits -------------------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        return f"run-{self.run_id}:"

    @property
    def description(self) -> str:
        return (
            f"run-scoped limit of ThrottledExecutor {self.run_id} "
            f"({host_name()} pid {os.getpid()}); deleted when it shuts down"
        )

    def limit_name(self, tag: str) -> str:
        """The limit a throttled tag maps to (templates resolve where the task runs)."""
        name = tag if self.scope == "global" else self.prefix + tag
        check_template(name)
        return name

    def _setup(self) -> None:
        broker = self.limiter.broker
        for tag, slots in self.throttle.items():
            name = self.limits[tag]
            if is_template(name):
                continue  # created where the task runs, once {worker}/{host} is known
            if self.scope == "run":
                assert slots is not None
                broker.update_limit(
                    check_name(name), slots=slots, create=True, description=self.description
                )
            elif slots is None:
                broker.snapshot(name, max_items=1)  # LimitNotFound names the CLI command
            else:
                try:
                    broker.create_limit(name, slots)
                except LimitExists:
                    have = broker.limit_slots(name)
                    if have != slots:
                        log.info(
                            "slotkeeper: global limit %r has %d slots; throttle value %d "
                            "ignored (the existing limit's size wins)",
                            name,
                            have,
                            slots,
                        )

    # -- tasks --------------------------------------------------------------------------------

    def names_for(self, tag_set: frozenset[str]) -> tuple[str, ...]:
        return tuple(sorted(self.limits[t] for t in tag_set if t in self.limits))

    def wrap(
        self, fn: Callable[..., T], extra_tags: frozenset[str] = frozenset()
    ) -> Callable[..., T]:
        """The callable actually submitted: ``fn`` itself when no throttled tag applies."""
        names = self.names_for(task_tags(fn) | extra_tags)
        if not names:
            return fn
        ensure = {n: s for n, s in self._ensure.items() if n in names}
        return ThrottledCall(
            fn,
            names,
            limiter=self._shipped,
            ensure=ensure,
            description=self.description if self.scope == "run" else "",
            **self.options,
        )

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
            if self._cleaned or self.scope != "run":
                self._cleaned = True
                return
            self._cleaned = True
        try:
            broker = self.limiter.broker
            for name in broker.list_limits():
                if not name.startswith(self.prefix):
                    continue
                try:
                    broker.delete_limit(name)
                except LimitNotFound:
                    pass
                except LimitHeld:
                    # every task of this run is done: whoever still holds is an orphan of this
                    # run (e.g. a killed process whose lease has not expired yet)
                    broker.reset(name)
                    try:
                        broker.delete_limit(name)
                    except (LimitNotFound, LimitHeld):
                        log.warning(
                            "slotkeeper: run-scoped limit %r still held; left in place", name
                        )
        except SlotkeeperError as exc:
            log.warning(
                "slotkeeper: could not delete the run-scoped limits of run %s: %s", self.run_id, exc
            )

    def __repr__(self) -> str:
        return (
            f"ThrottledExecutor({type(self.executor).__name__}, throttle={self.throttle!r}, "
            f"scope={self.scope!r}, run_id={self.run_id!r})"
        )


__all__ = ["ThrottledCall", "ThrottledExecutor", "finish"]
