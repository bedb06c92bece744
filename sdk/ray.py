"""Ray (``pip install 'slotkeeper[ray]'``): limits inside Ray tasks and actors, and a throttled
submission helper for ``ray.remote`` functions.

>>> import ray, slotkeeper.ray as skr
>>> from slotkeeper import limit, limited, tags, tagged
>>> ray.init(runtime_env=skr.runtime_env())          # workers find this process's broker
>>> @ray.remote
... @limited("gpu:{worker}")                        # {worker} = the Ray node the task runs on
... def train(x): ...
>>> with skr.ThrottledRay({"print": 1}) as tr:      # the ThrottledExecutor model
...     with tags("example"):
...         ref = tr.submit(say_hi, "alice")         # say_hi: a function or a ray.remote one
...     ray.get(ref)

``limit``/``limited`` work in Ray tasks and actor methods like anywhere else: the slots are taken
in the worker process that runs the body and renewed by that process's heartbeat, so a worker
that dies gives them back within the TTL. A ``limit``/``Limiter`` object pickles its
configuration along with the task; code that uses the *default* limiter needs
``SLOTKEEPER_URL``/``SLOTKEEPER_NAMESPACE`` in the workers, which :func:`runtime_env` provides.

``{worker}`` inside a Ray task or actor is the **Ray node id** of the node running it
(``ray.get_runtime_context().get_node_id()``, the hex ``NodeID`` shown by ``ray list nodes`` and
``ray.nodes()``), unless ``SLOTKEEPER_WORKER`` or ``Limiter(worker=...)`` says otherwise. Node
ids change when a node restarts; for names that outlive a node, start each node's raylet with
``SLOTKEEPER_WORKER=<stable name>`` in its environment.

Prefect's ``RayTaskRunner`` (prefect-ray) is throttled like any other runner:
``ThrottledTaskRunner(RayTaskRunner(address=...), throttle={"print": 1})``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import ray

from slotkeeper.limiter import Limiter, check_timeout, get_limiter
from slotkeeper.naming import ENV_WORKER
from slotkeeper.tags import task_tags
from slotkeeper.throttle import Scope, ThrottledCall, ThrottlePlan


def runtime_env(
    limiter: Limiter | None = None, base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A Ray ``runtime_env`` (for ``ray.init``, ``.options``) whose ``env_vars`` carry the broker
    URL and namespace of ``limiter`` (default: this process's), merged into ``base``."""
    lim = limiter or get_limiter()
    env = dict(base or {})
    env_vars = dict(env.get("env_vars") or {})
    env_vars.update(SLOTKEEPER_URL=lim.url, SLOTKEEPER_NAMESPACE=lim.namespace)
    if lim.worker:
        env_vars.setdefault(ENV_WORKER, lim.worker)
    env["env_vars"] = env_vars
    return env


def _run(call: ThrottledCall, *args: Any, **kwargs: Any) -> Any:
    """The body of every throttled Ray task: ``call`` holds the slots around the function."""
    return call(*args, **kwargs)


_remote_run: Any = None
_remote_lock = threading.Lock()


def _remote() -> Any:
    global _remote_run
    with _remote_lock:
        if _remote_run is None:
            _remote_run = ray.remote(_run)
        return _remote_run


def _unwrap(fn: Any) -> tuple[Callable[..., Any], dict[str, Any]]:
    """A plain function and its Ray options, from a function or a ``ray.remote`` one."""
    inner = getattr(fn, "_function", None)
    if inner is not None and hasattr(fn, "remote"):
        return inner, dict(getattr(fn, "_default_options", {}) or {})
    return fn, {}


class ThrottledRay:
    """Submit ``ray.remote`` functions (or plain ones) so tasks carrying a throttled tag run at most
    ``throttle[tag]`` at once — across the Ray cluster and everything else sharing the Redis.

    Same model as :class:`slotkeeper.ThrottledExecutor`: a task's tags are its ``@tagged`` ones
    plus those of every ``tags()`` block active at submit time; ``scope="run"`` limits
    (``run-<id>:TAG``) are deleted by :meth:`shutdown`, ``scope="global"`` uses the limit named TAG.
    The slots are taken in the Ray worker, around the function body only (not while the task waits
    for its arguments or a CPU), renewed by the worker's heartbeat.

    ``submit(fn, *args, options=None, **kwargs)`` returns the ``ObjectRef``; ``options`` are Ray
    task options (``num_cpus``, ``resources``, ``max_retries``, ``scheduling_strategy``...) on top
    of those of a ``ray.remote(...)`` function."""

    def __init__(
        self,
        throttle: Mapping[str, int | None] | None = None,
        *,
        limiter: Limiter | None = None,
        scope: Scope = "run",
        run_id: str | None = None,
        timeout: float | None = None,
        priority: int = 0,
        ttl: float | None = None,
    ) -> None:
        self.plan = ThrottlePlan(
            throttle, limiter=limiter, scope=scope, run_id=run_id, owner="ThrottledRay"
        )
        self.options: dict[str, Any] = dict(
            timeout=check_timeout(timeout), priority=priority, ttl=ttl
        )
        self._refs: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        self.plan.setup()

    @property
    def limits(self) -> dict[str, str]:
        """Throttled tag -> limit name."""
        return self.plan.limits

    @property
    def run_id(self) -> str:
        return self.plan.run_id

    def names_for(self, fn: Any) -> tuple[str, ...]:
        """The limits a task of ``fn`` submitted now must hold."""
        inner, _ = _unwrap(fn)
        return self.plan.names_for(task_tags(inner) | task_tags(fn))

    def submit(
        self, fn: Any, /, *args: Any, options: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit after shutdown")
        inner, opts = _unwrap(fn)
        opts.update(options or {})
        names = self.names_for(fn)
        call = self.plan.call(inner, names, **self.options) if names else None
        if call is None:
            remote = fn if hasattr(fn, "remote") else ray.remote(inner)
            ref = (
                remote.options(**opts).remote(*args, **kwargs)
                if opts
                else remote.remote(*args, **kwargs)
            )
        else:
            opts.setdefault("name", call.__name__)
            ref = _remote().options(**opts).remote(call, *args, **kwargs)
        with self._lock:
            self._refs.append(ref)
        return ref

    def shutdown(self, wait: bool = True) -> None:
        """No more submissions; with ``wait``, wait for every submitted task to end, then delete
        the run-scoped limits (without ``wait`` they are deleted at once: running tasks then
        fail to renew and to acquire)."""
        with self._lock:
            self._closed = True
            refs = [r for r in self._refs if isinstance(r, ray.ObjectRef)]
        if wait and refs:
            ray.wait(refs, num_returns=len(refs), fetch_local=False)
        self.plan.cleanup()

    def __enter__(self) -> ThrottledRay:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown(wait=True)

    def __repr__(self) -> str:
        return f"ThrottledRay(throttle={self.plan.throttle!r}, run_id={self.run_id!r})"


__all__ = ["ThrottledRay", "runtime_env"]
