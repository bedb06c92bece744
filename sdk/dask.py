"""Dask integration: configure every worker, hold slots around tasks, optionally without pinning a
worker thread while waiting.

>>> from distributed import Client
>>> import slotkeeper.dask as skd
>>> client = Client(n_workers=2)            # or Client("tcp://scheduler:8786")
>>> skd.install(client)                     # every worker (present and future) is configured
>>> @skd.limited("gpu:{worker}", secede=True)
... def model(item): ...
>>> client.map(model, items)

``install`` registers :class:`SlotkeeperPlugin`, which sets each worker process's default limiter
(URL, namespace, TTL) and its worker identity: ``{worker}`` in a limit name means *that Dask
worker's name* (``Worker(name=...)``, ``dask worker --name``, a SpecCluster key). Plain
``with slotkeeper.limit("gpu:{worker}"):`` inside any task then works too.

``secede=True``: if the slots are not free at once, the task leaves the worker's thread pool
(``distributed.secede``) while it waits, so the worker can run other tasks meanwhile, and rejoins
(``distributed.rejoin``) once it holds the slots. Trade-off: rejoining waits for a free thread
*while the slots are already held* (they idle for that time, lowering the limit's throughput),
the worker may have more tasks in flight than threads, and the scheduler counts seceded tasks as
long-running. Worth it when tasks often wait long; leave it off for short waits.

:class:`Semaphore` is a drop-in for ``distributed.Semaphore`` (see :mod:`slotkeeper.semaphore`).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from distributed.diagnostics.plugin import WorkerPlugin

from slotkeeper.broker.connection import has_password
from slotkeeper.broker.errors import AcquireTimeout, InvalidType
from slotkeeper.lease import Lease
from slotkeeper.limit import limit
from slotkeeper.limiter import DEFAULT_TTL, Limiter, get_limiter
from slotkeeper.naming import ENV_WORKER
from slotkeeper.semaphore import ReleasedTooOften, Semaphore
from slotkeeper.throttle import ThrottledCall

F = TypeVar("F", bound=Callable[..., Any])

PLUGIN_NAME = "slotkeeper"

# Dask workers of this process (several share a process with processes=False): id -> name
_names: dict[str, str] = {}
_names_lock = threading.Lock()
_we_set_env = False


def current_worker_id() -> str | None:
    """The Dask worker running the current task, if any (its ``worker.id``)."""
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker

        return str(get_worker().id)
    except Exception:
        return None


class WorkerLimiter(Limiter):
    """A Limiter whose worker identity is the registered name of the Dask worker running the
    current task (several workers may share one process); elsewhere, the static one."""

    @property
    def worker(self) -> str | None:
        wid = current_worker_id()
        if wid is not None:
            name = _names.get(wid)
            if name is not None:
                return name
        return self._static_worker

    @worker.setter
    def worker(self, value: str | None) -> None:
        self._static_worker = value


def _set_default(lim: Limiter) -> None:
    from slotkeeper.limiter import set_default_limiter

    set_default_limiter(lim)


def from_env(worker: Any) -> str:
    """``worker_name=from_env``: the worker process's SLOTKEEPER_WORKER, else the Dask name."""
    return os.environ.get(ENV_WORKER) or str(worker.name)


class SlotkeeperPlugin(WorkerPlugin):
    """Configures slotkeeper on every Dask worker: default limiter (URL, namespace, TTL) and the
    worker identity (``worker_name(worker)``, default: the Dask worker's name). In a worker
    process with a single Dask worker, also exports SLOTKEEPER_NAMESPACE / _WORKER (and the URL,
    unless it carries a password and ``export_url`` is not True) so subprocesses of tasks see the
    same configuration."""

    name = PLUGIN_NAME
    idempotent = False

    def __init__(
        self,
        url: str,
        namespace: str,
        ttl: float = DEFAULT_TTL,
        worker_name: Callable[[Any], str] | None = None,
        export_url: bool | None = None,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise InvalidType("url must be a non-empty str")
        self.url = url
        self.export_url = export_url
        self.namespace = namespace
        self.ttl = ttl
        self.worker_name = worker_name

    def setup(self, worker: Any) -> None:
        global _we_set_env
        name = self.worker_name(worker) if self.worker_name else str(worker.name)
        with _names_lock:
            _names[str(worker.id)] = name
            alone = len(_names) == 1
            lim = WorkerLimiter(self.url, self.namespace, self.ttl, worker=name if alone else None)
            _set_default(lim)
            if self.export_url or (self.export_url is None and not has_password(self.url)):
                os.environ["SLOTKEEPER_URL"] = self.url  # a password only when asked
            os.environ["SLOTKEEPER_NAMESPACE"] = self.namespace
            if alone:
                os.environ[ENV_WORKER] = name
                _we_set_env = True
            elif _we_set_env:  # several workers in this process: no single identity to export
                os.environ.pop(ENV_WORKER, None)
                _we_set_env = False

    def teardown(self, worker: Any) -> None:
        with _names_lock:
            _names.pop(str(worker.id), None)


def worker_names() -> dict[str, str]:
    """Worker id -> slotkeeper worker name, for the Dask workers of this process."""
    with _names_lock:
        return dict(_names)


def install(
    client: Any, limiter: Limiter | None = None, *, worker_name: Callable[[Any], str] | None = None
) -> SlotkeeperPlugin:
    """Register :class:`SlotkeeperPlugin` on ``client``'s cluster (current and future workers).

    ``limiter`` (default: this process's) gives URL, namespace and TTL; with no URL configured
    that is the local embedded broker, which only workers on this machine can reach."""
    lim = limiter or get_limiter()
    plugin = SlotkeeperPlugin(lim.url, lim.namespace, lim.ttl, worker_name=worker_name)
    client.register_plugin(plugin, name=PLUGIN_NAME)
    return plugin


def acquire_seceded(lim: Limiter, names: tuple[str, ...], **kwargs: Any) -> Lease:
    """Acquire; if the slots are not free at once, wait outside the worker's thread pool."""
    timeout = kwargs.pop("timeout", None)
    try:
        return lim.acquire(*names, timeout=0, **kwargs)
    except AcquireTimeout:
        if timeout == 0:
            raise
    from distributed import rejoin, secede

    secede()  # type: ignore[no-untyped-call]
    try:
        return lim.acquire(*names, timeout=timeout, **kwargs)
    finally:
        rejoin()  # type: ignore[no-untyped-call]


class LimitedTask(ThrottledCall):
    """A task function holding slots of ``names`` around each call (what :func:`limited` makes).
    Pickles by reference when it is a module attribute (decorator use), else by value."""

    def __init__(
        self,
        fn: Callable[..., Any],
        names: tuple[str, ...],
        *,
        limiter: Limiter | None = None,
        secede: bool = False,
        raise_on_lost: bool = True,
        **acquire: Any,
    ) -> None:
        limit(*names, limiter=limiter, **acquire)  # validates names and options now
        super().__init__(fn, names, limiter=limiter, secede=secede, **acquire)
        self.raise_on_lost = raise_on_lost
        functools.update_wrapper(self, fn)

    def __reduce__(self) -> Any:
        module = sys.modules.get(getattr(self, "__module__", ""), None)
        target: Any = module
        for part in str(getattr(self, "__qualname__", "")).split("."):
            target = getattr(target, part, None)
        if target is self:
            return self.__qualname__  # pickle by reference, like the function it replaced
        return (_rebuild, (type(self), self.__getstate__()))

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "__wrapped__"}

    def __dask_tokenize__(self) -> Any:
        from dask.base import normalize_token

        return (
            type(self).__name__,
            normalize_token(self.fn),
            self.names,
            repr(sorted(self.acquire_kwargs.items())),
            self.secede,
        )


def _rebuild(cls: type[LimitedTask], state: dict[str, Any]) -> LimitedTask:
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    setattr(obj, "__wrapped__", state["fn"])  # noqa: B010
    return obj


def limited(
    *names: str, secede: bool = False, limiter: Limiter | None = None, **kwargs: Any
) -> Callable[[F], F]:
    """``@limited("gpu:{worker}")`` or ``client.map(limited("db")(fn), items)``: hold the slots
    around every call, where the task runs. ``limiter=None`` uses the worker's default (set by
    :func:`install`). Other keywords as for :func:`slotkeeper.limit` (occupy, timeout, priority,
    ttl, default_slots, strict, label, raise_on_lost)."""

    def wrap(fn: F) -> F:
        return LimitedTask(
            fn,
            names,
            limiter=limiter,
            secede=secede,  # type: ignore[return-value]
            **kwargs,
        )

    return wrap


__all__ = [
    "LimitedTask",
    "ReleasedTooOften",
    "Semaphore",
    "SlotkeeperPlugin",
    "WorkerLimiter",
    "acquire_seceded",
    "from_env",
    "install",
    "limited",
    "worker_names",
]
