"""Throttling by tag: how a ``throttle`` dict maps onto limits, and the picklable task wrapper.

How a throttle dict relates to limits (``scope``):

* ``scope="run"`` (default): each tag T gets a *run-scoped* limit ``run-<run_id>:T`` with the
  given slots, created when the executor (or Prefect task runner) starts and deleted when it
  shuts down. Two runs never share a bound, even with equal tags; CLI-made limits are never
  touched.
* ``scope="global"``: tag T *is* the limit named T, shared by every executor, process and
  machine on the same Redis namespace (the CLI's ``slotkeeper create T --slots N``). An int value
  creates the limit with that many slots if it is missing; an existing limit keeps its own size
  (the operator's word wins; a differing value is logged). ``None`` means the limit must exist
  (``LimitNotFound`` otherwise). Global limits are never deleted.

Tags containing ``{worker}``/``{host}`` resolve where the task runs; their limits are created
there (run scope: with the given slots; global scope: only if missing).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

from slotkeeper.broker.errors import (
    InvalidArgument,
    InvalidType,
    LeaseLost,
    LimitExists,
    LimitHeld,
    LimitNotFound,
    SlotkeeperError,
)
from slotkeeper.broker.keys import check_name, run_prefix
from slotkeeper.broker.protocol import check_slots
from slotkeeper.lease import Lease
from slotkeeper.limiter import Limiter, get_limiter
from slotkeeper.naming import check_template, host_name, resolve
from slotkeeper.runtime import new_id
from slotkeeper.tags import check_tag

log = logging.getLogger("slotkeeper")

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
        # name, docs and signature of fn (inspect.signature follows __wrapped__; Prefect needs it)
        functools.update_wrapper(self, fn, assigned=_ASSIGNED, updated=())
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


class AsyncThrottledCall(ThrottledCall):
    """The same for a coroutine function: waits for the slots without blocking the loop."""

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.names:
            return await self.fn(*args, **kwargs)
        lim = self._limiter()
        if self.ensure:
            self._ensure_templated(lim)
        lease = await lim.acquire_async(*self.names, **self.acquire_kwargs)
        failed = True
        try:
            result = await self.fn(*args, **kwargs)
            failed = False
            return result
        finally:
            finish(lease, failed, self.raise_on_lost)


_ASSIGNED = ("__module__", "__name__", "__qualname__", "__doc__")


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


class ThrottlePlan:
    """The limits behind one throttle dict: names per tag, creation, and (run scope) deletion.

    Picklable (configuration only)."""

    def __init__(
        self,
        throttle: Mapping[str, int | None] | None,
        *,
        limiter: Limiter | None = None,
        scope: Scope = "run",
        run_id: str | None = None,
        owner: str = "ThrottledExecutor",
    ) -> None:
        if scope not in SCOPES:
            raise InvalidArgument(f"scope must be 'run' or 'global', not {scope!r}")
        if limiter is not None and not isinstance(limiter, Limiter):
            raise InvalidType("limiter must be a slotkeeper.Limiter")
        self.throttle = check_throttle(throttle, scope)
        self.scope: Scope = scope
        self.run_id = run_id if run_id is not None else new_id()[:10]
        if not isinstance(self.run_id, str) or not self.run_id:
            raise InvalidArgument("run_id must be a non-empty str")
        self.limiter = limiter or get_limiter()
        # shipped to workers: explicit URL and namespace; worker identity resolved where it runs
        self.shipped = Limiter(self.limiter.url, self.limiter.namespace, self.limiter.ttl)
        self.description = (
            f"run-scoped limit of {owner} {self.run_id} ({host_name()} pid {os.getpid()}); "
            "deleted when it shuts down"
        )
        self.limits: dict[str, str] = {tag: self.limit_name(tag) for tag in self.throttle}
        self.templated: dict[str, int | None] = {
            self.limits[t]: s for t, s in self.throttle.items() if is_template(self.limits[t])
        }

    @property
    def prefix(self) -> str:
        return run_prefix(self.run_id)

    def limit_name(self, tag: str) -> str:
        """The limit a throttled tag maps to (templates resolve where the task runs)."""
        name = tag if self.scope == "global" else self.prefix + tag
        check_template(name)
        return name

    def setup(self) -> None:
        """Create the run-scoped limits; check or create the global ones."""
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

    def names_for(self, tag_set: frozenset[str]) -> tuple[str, ...]:
        """The limits a task with these tags must hold (sorted; empty if none is throttled)."""
        return tuple(sorted(self.limits[t] for t in tag_set if t in self.limits))

    def call(self, fn: Callable[..., Any], names: tuple[str, ...], **options: Any) -> ThrottledCall:
        """A picklable wrapper of ``fn`` holding ``names`` (async-aware)."""
        cls = AsyncThrottledCall if inspect.iscoroutinefunction(fn) else ThrottledCall
        return cls(
            fn,
            names,
            limiter=self.shipped,
            ensure={n: s for n, s in self.templated.items() if n in names},
            description=self.description if self.scope == "run" else "",
            **options,
        )

    def cleanup(self) -> None:
        """Delete this run's limits (run scope; call once every task of the run is done).
        A limit still held then is held by an orphan of this run (say, a killed process whose
        lease has not expired yet): its leases are revoked first. Never raises."""
        if self.scope != "run":
            return
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
        return f"ThrottlePlan({self.throttle!r}, scope={self.scope!r}, run_id={self.run_id!r})"


__all__ = [
    "AsyncThrottledCall",
    "Scope",
    "ThrottlePlan",
    "ThrottledCall",
    "check_throttle",
    "finish",
    "is_template",
]
