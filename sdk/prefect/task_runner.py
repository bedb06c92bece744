"""Prefect 3: throttle tasks by their tags through slotkeeper (``pip install slotkeeper[prefect]``).

>>> from prefect import flow, tags, task
>>> from prefect.task_runners import ThreadPoolTaskRunner
>>> from slotkeeper.prefect import ThrottledTaskRunner
>>> @task(tags=["print"])
... def say_hi(name): ...
>>> @flow(task_runner=ThrottledTaskRunner(ThreadPoolTaskRunner(8), throttle={"print": 1}))
... def hello():
...     with tags("example"):
...         a = say_hi.submit("alice")
...     c = say_hi.submit("chris")

``ThrottledTaskRunner`` wraps any Prefect task runner (``ThreadPoolTaskRunner``, prefect-dask's
``DaskTaskRunner``...). A submitted task's tags are its own (``@task(tags=...)``), those of the
active ``prefect.tags(...)`` blocks and those of slotkeeper ``tags(...)`` blocks. A task carrying
throttled tags holds one slot of each, atomically, around its function body only (each retry
attempt takes them anew), where it runs: in the runner's thread or on the Dask worker. Waiting
is push-woken by Redis; Prefect's server is not involved in these limits (a flow still needs its
usual API, e.g. Prefect's temporary local server).

``scope="run"`` (default): per flow run, ``run-<id>:TAG`` limits created when the runner starts
and deleted when the flow run ends. ``scope="global"``: tag T is the shared slotkeeper limit T
(the same bound for every flow, process and machine using the Redis; see
:mod:`slotkeeper.throttle`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prefect.context import TagsContext
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.tasks import Task

from slotkeeper.broker.errors import InvalidType
from slotkeeper.limiter import Limiter, check_timeout
from slotkeeper.tags import current_tags
from slotkeeper.throttle import Scope, ThrottlePlan, check_throttle


class ThrottledTaskRunner(TaskRunner[PrefectFuture[Any]]):
    """Throttle the tasks of ``task_runner`` (default ``ThreadPoolTaskRunner()``) by tag.

    ``throttle`` ``{tag: slots}``; ``limiter`` (default: the process's, see
    :func:`slotkeeper.configure`); ``scope`` ``"run"`` or ``"global"``; ``run_id`` (default: a
    new one per flow run); ``timeout``/``priority``/``ttl`` for every acquire; ``secede``
    (on Dask workers: give the worker thread back while waiting)."""

    def __init__(
        self,
        task_runner: TaskRunner[Any] | None = None,
        throttle: Mapping[str, int | None] | None = None,
        *,
        limiter: Limiter | None = None,
        scope: Scope = "run",
        run_id: str | None = None,
        timeout: float | None = None,
        priority: int = 0,
        ttl: float | None = None,
        secede: bool = False,
    ) -> None:
        if task_runner is not None and not isinstance(task_runner, TaskRunner):
            raise InvalidType("task_runner must be a Prefect TaskRunner")
        if limiter is not None and not isinstance(limiter, Limiter):
            raise InvalidType("limiter must be a slotkeeper.Limiter")
        self.throttle = check_throttle(throttle, scope)  # bad settings fail at flow definition
        self.inner: TaskRunner[Any] = (
            task_runner if task_runner is not None else (ThreadPoolTaskRunner())
        )
        self.limiter = limiter
        self.scope: Scope = scope
        self.run_id = run_id
        self.options: dict[str, Any] = dict(
            timeout=check_timeout(timeout), priority=priority, ttl=ttl, secede=bool(secede)
        )
        self.plan: ThrottlePlan | None = None
        super().__init__()  # type: ignore[no-untyped-call]

    @property
    def name(self) -> str:
        return f"throttled-{self.inner.name}"

    def duplicate(self) -> ThrottledTaskRunner:
        opts = self.options
        return type(self)(
            self.inner.duplicate(),
            self.throttle,
            limiter=self.limiter,
            scope=self.scope,
            run_id=self.run_id,
            timeout=opts["timeout"],
            priority=opts["priority"],
            ttl=opts["ttl"],
            secede=opts["secede"],
        )

    def __enter__(self) -> ThrottledTaskRunner:
        super().__enter__()
        plan = ThrottlePlan(
            self.throttle,
            limiter=self.limiter,
            scope=self.scope,
            run_id=self.run_id,
            owner="ThrottledTaskRunner",
        )
        try:
            plan.setup()
            self.inner.__enter__()
        except BaseException:
            plan.cleanup()
            super().__exit__(None, None, None)
            raise
        self.plan = plan
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        try:
            self.inner.__exit__(exc_type, exc_value, traceback)
        finally:
            if self.plan is not None:
                self.plan.cleanup()  # every task of the run is over: the run's limits go
                self.plan = None
            super().__exit__(exc_type, exc_value, traceback)

    def task_tags(self, task: Task[Any, Any]) -> frozenset[str]:
        """Tags a task gets if submitted now: its own, prefect.tags() and slotkeeper tags()."""
        return frozenset(task.tags) | frozenset(TagsContext.get().current_tags) | current_tags()

    def throttled(self, task: Task[Any, Any]) -> Task[Any, Any]:
        """A copy of ``task`` whose function holds its throttled slots (or ``task`` itself)."""
        if self.plan is None:
            raise RuntimeError("The task runner must be started before submitting work.")
        names = self.plan.names_for(self.task_tags(task))
        if not names:
            return task
        copy = task.with_options()
        copy.fn = self.plan.call(task.fn, names, label=task.name, **self.options)
        return copy

    def submit(
        self,
        task: Task[Any, Any],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: dict[str, set[Any]] | None = None,
    ) -> PrefectFuture[Any]:
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        future: PrefectFuture[Any] = self.inner.submit(
            self.throttled(task), parameters, wait_for, dependencies
        )
        return future

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["plan"] = None  # a pickled copy is a definition, not a running runner
        return state

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ThrottledTaskRunner)
            and self.inner == other.inner
            and self.throttle == other.throttle
            and self.scope == other.scope
        )

    __hash__ = None  # type: ignore[assignment]


__all__ = ["ThrottledTaskRunner"]
