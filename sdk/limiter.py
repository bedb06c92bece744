"""Limiter: an explicit client (URL, namespace, default TTL, worker) and the acquire flow.

The flow is written once as a generator (it yields how long to wait and receives the notification)
and driven by a blocking loop for threads and an awaiting loop for asyncio.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

from slotkeeper.broker import embedded
from slotkeeper.broker import records as R
from slotkeeper.broker.client import check_names, check_occupy, check_priority, check_ttl
from slotkeeper.broker.connection import (
    configured_namespace,
    configured_url,
    has_password,
    redact,
)
from slotkeeper.broker.errors import (
    AcquireTimeout,
    BrokerError,
    BrokerUnavailable,
    InvalidArgument,
    InvalidType,
    LeaseLost,
    LimitNotFound,
    OccupyExceedsLimit,
)
from slotkeeper.broker.keys import check_namespace
from slotkeeper.lease import Lease
from slotkeeper.naming import check_template, host_name, resolve, worker_name
from slotkeeper.runtime import Runtime, Waiting, new_id, runtime_for

log = logging.getLogger("slotkeeper")

DEFAULT_TTL = 30.0
FALLBACK_CHECK = 1.0  # s: only covers lost notifications; grants are pushed


def check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidType(
            f"timeout must be None or a number of seconds, not {type(timeout).__name__}"
        )
    if math.isnan(timeout) or timeout < 0:
        raise InvalidArgument(f"timeout must be None or >= 0, got {timeout}")
    return float(timeout)


@dataclass(frozen=True)
class Request:
    names: tuple[str, ...]
    occupy: int
    timeout: float | None
    priority: int
    ttl_ms: int
    default_slots: int | None
    label: str


class Limiter:
    """A slotkeeper client. Picklable: it carries configuration, never connections.

    ``url`` defaults to SLOTKEEPER_URL, else the embedded broker; ``namespace`` to
    SLOTKEEPER_NAMESPACE, else "default"."""

    def __init__(self, url: str | None = None, namespace: str | None = None,
                 ttl: float = DEFAULT_TTL, worker: str | None = None) -> None:
        self._url = configured_url(url)
        self.namespace = check_namespace(configured_namespace(namespace))
        self.ttl = check_ttl(ttl)
        if worker is not None and not isinstance(worker, str):
            raise InvalidType("worker must be a str")
        self.worker = worker

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self._url, "namespace": self.namespace, "ttl": self.ttl,
                "worker": self.worker}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._url = state["url"]
        self.namespace = state["namespace"]
        self.ttl = state["ttl"]
        self.worker = state["worker"]

    def __repr__(self) -> str:
        return f"Limiter(url={redact(self._url)!r}, namespace={self.namespace!r})"

    @property
    def url(self) -> str:
        """The broker URL (starting the embedded broker if none is configured)."""
        if self._url:
            return self._url
        resolved: str | None = getattr(self, "_embedded_url", None)
        if resolved is None:
            resolved = embedded.ensure_running()
            self._embedded_url = resolved
        return resolved

    @property
    def runtime(self) -> Runtime:
        return runtime_for(self.url, self.namespace)

    @property
    def broker(self) -> Any:
        return self.runtime.broker

    # -- requests -----------------------------------------------------------------------------

    def request(self, names: Sequence[str], *, occupy: int = 1, timeout: float | None = None,
                priority: int = 0, ttl: float | None = None, default_slots: int | None = None,
                label: str | None = None) -> Request:
        """Validate and resolve ({worker}, {host}) a request where the body runs."""
        for n in names:
            check_template(n)
        resolved = check_names([resolve(n, self.worker) for n in names])
        if label is not None and not isinstance(label, str):
            raise InvalidType("label must be a str")
        return Request(
            names=resolved,
            occupy=check_occupy(occupy),
            timeout=check_timeout(timeout),
            priority=check_priority(priority),
            ttl_ms=0 if ttl is None else int(check_ttl(ttl) * 1000),
            default_slots=default_slots,
            label=(label or "")[:200],
        )

    def _flow(self, req: Request, on_lost: Callable[[Lease], None] | None,
              waiting_hook: Callable[[Waiting], None] | None = None,
              ) -> Generator[tuple[Waiting, float], str | None, Lease]:
        rt = self.runtime
        broker = rt.broker
        meta = R.pack_meta(host_name(), os.getpid(), worker_name(self.worker), req.label)
        default_ttl_ms = int(self.ttl * 1000)
        wait = req.timeout != 0
        if wait:
            rt.ensure_listener()
        lid = new_id()

        asked: set[str] = set()

        def ask() -> R.AcquireResult:
            # an id is asked about afresh once; later asks only re-check it (LOST if it is gone),
            # so a late notification for a lost grant can never pose as a grant of a new request
            recheck = lid in asked
            asked.add(lid)
            return broker.acquire(
                req.names, lid, occupy=req.occupy, ttl_ms=req.ttl_ms,
                default_ttl_ms=default_ttl_ms, priority=req.priority, wait=wait,
                channel=rt.channel, meta=meta, default_slots=req.default_slots,
                recheck=recheck)

        started = time.monotonic()
        w: Waiting | None = None
        try:
            res = ask()  # from here on a ticket may exist (when wait): withdraw it if interrupted
            if res.status == R.BUSY:
                raise AcquireTimeout(f"no free slot on {', '.join(req.names)} (timeout=0)")
            while res.status != R.GRANTED:
                if res.status == R.LOST:  # our ticket expired (e.g. we were paused): ask anew
                    lid = new_id()
                    res = ask()
                    continue
                if res.status != R.QUEUED:
                    raise BrokerError(f"unexpected acquire status {res.status}")
                if w is None or w.id != lid:
                    if w is not None:
                        rt.drop_waiting(w)
                    ttl_ms = req.ttl_ms or default_ttl_ms
                    w = Waiting(lid, req.names, ttl_ms)
                    if waiting_hook is not None:
                        waiting_hook(w)
                    rt.add_waiting(w)
                pause = FALLBACK_CHECK
                if res.next_check_ms > 0:
                    pause = min(pause, res.next_check_ms / 1000.0 + 0.005)
                remaining = None
                if req.timeout is not None:
                    remaining = req.timeout - (time.monotonic() - started)
                    pause = min(pause, max(0.0, remaining))
                msg = yield (w, pause)
                wake = R.parse_wakeup(msg) if msg else None
                if wake is not None and wake.grant is not None:
                    res = wake.grant
                    break
                if wake is not None and wake.kind == "x":
                    if wake.reason == "missing":
                        raise LimitNotFound(wake.name, self.namespace)
                    raise OccupyExceedsLimit(wake.name, req.occupy, broker.limit_slots(wake.name))
                if req.timeout is not None and time.monotonic() - started >= req.timeout:
                    res = broker.cancel(req.names, lid, timed_out=True)
                    if res.status != R.GRANTED:
                        raise AcquireTimeout(
                            f"no slot on {', '.join(req.names)} within {req.timeout:g} s")
                    break
                res = ask()
        except BaseException as exc:
            # interrupted while waiting (timeout error, KeyboardInterrupt, cancellation) or the
            # broker became unreachable after a request went out: withdraw the ticket, and give
            # back a lease granted to a reply we never saw (else it would only expire by TTL)
            if wait or (asked and isinstance(exc, BrokerUnavailable)):
                try:
                    c = broker.cancel(req.names, lid, timed_out=False)
                    if c.status == R.GRANTED:
                        broker.release(req.names, lid)
                except Exception:
                    log.warning("slotkeeper: could not withdraw ticket %s; it expires by TTL", lid)
            raise
        finally:
            if w is not None:
                rt.drop_waiting(w)
        ttl_ms = res.ttl_ms or req.ttl_ms or default_ttl_ms  # the script may pick the limit's ttl
        lease = Lease(rt, lid, req.names, req.occupy, res.token, res.expires_ms, ttl_ms, on_lost)
        rt.add_lease(lease)
        return lease

    def acquire(self, *names: str, occupy: int = 1, timeout: float | None = None,
                priority: int = 0, ttl: float | None = None, default_slots: int | None = None,
                strict: bool = True, on_lost: Callable[[Lease], None] | None = None,
                label: str | None = None, durable: bool = False) -> Lease:
        """Take ``occupy`` slots of every named limit at once (blocking).

        ``durable=True`` returns only once a replica acknowledged the grant (Redis WAIT), so a
        failover right after cannot forget it; without a replica it raises BrokerUnavailable."""
        req = self.request(names, occupy=occupy, timeout=timeout, priority=priority, ttl=ttl,
                           default_slots=default_slots, label=label)
        flow = self._flow(req, on_lost)
        with _Outcome(self, req, flow, strict, durable) as out:
            step = next(flow)
            while True:
                w, pause = step
                step = flow.send(w.wait(pause))
        return out.lease

    async def acquire_async(self, *names: str, occupy: int = 1, timeout: float | None = None,
                            priority: int = 0, ttl: float | None = None,
                            default_slots: int | None = None, strict: bool = True,
                            on_lost: Callable[[Lease], None] | None = None,
                            label: str | None = None, durable: bool = False) -> Lease:
        """Like :meth:`acquire`, waiting without blocking the event loop."""
        req = self.request(names, occupy=occupy, timeout=timeout, priority=priority, ttl=ttl,
                           default_slots=default_slots, label=label)
        flow = self._flow(req, on_lost, waiting_hook=Waiting.bind_loop)
        with _Outcome(self, req, flow, strict, durable) as out:
            step = next(flow)
            while True:
                w, pause = step
                step = flow.send(await w.await_msg(pause))
        return out.lease

    def _make_durable(self, lease: Lease, timeout_ms: int = 2000) -> None:
        if not lease.throttled:
            return
        # renew + WAIT on one connection: WAIT alone would only cover this connection's own
        # earlier writes, not a grant made by the client that released the slot to us
        held, acked = self.broker.renew_and_wait(lease.id, lease.names, lease.ttl_ms, 1,
                                                 timeout_ms)
        if not held:
            lease.release()
            raise LeaseLost(lease.id, lease.names)
        if acked < 1:
            lease.release()
            raise BrokerUnavailable(
                f"durable acquire: no replica acknowledged lease {lease.id} within "
                f"{timeout_ms} ms (released it)")

    def _unthrottled(self, req: Request, exc: LimitNotFound) -> Lease:
        warnings.warn(f"{exc} -- running unthrottled (strict=False)", RuntimeWarning, stacklevel=4)
        return Lease(None, "unthrottled-" + new_id(), req.names, req.occupy, 0, 0, 0)

    # -- admin shortcuts ----------------------------------------------------------------------

    def create(self, name: str, slots: int, ttl: float | None = None, enabled: bool = True,
               description: str = "") -> None:
        self.broker.create_limit(name, slots, ttl, enabled, description)

    def set(self, name: str, *, slots: int | None = None, ttl: float | None = None,
            enabled: bool | None = None, description: str | None = None,
            create: bool = False) -> tuple[bool, list[str]]:
        result: tuple[bool, list[str]] = self.broker.update_limit(
            name, slots=slots, ttl=ttl, enabled=enabled, description=description, create=create)
        return result

    def delete(self, name: str, force: bool = False) -> None:
        if force:
            self.broker.reset(name)
        self.broker.delete_limit(name)


class _Outcome:
    """Ends the drive of an acquire flow (sync or async): the flow's return value is the lease
    (made durable if asked), an unknown limit with strict=False runs unthrottled, and the flow is
    always closed — if the caller was interrupted outside it (KeyboardInterrupt, task
    cancellation), closing withdraws the ticket now instead of whenever it is collected."""

    lease: Lease

    def __init__(self, limiter: Limiter, req: Request,
                 flow: Generator[tuple[Waiting, float], str | None, Lease], strict: bool,
                 durable: bool) -> None:
        self.limiter, self.req, self.flow = limiter, req, flow
        self.strict, self.durable = strict, durable

    def __enter__(self) -> _Outcome:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: object) -> bool:
        try:
            if isinstance(ev, StopIteration):
                self.lease = ev.value
                if self.durable:
                    self.limiter._make_durable(self.lease)
                return True
            if isinstance(ev, LimitNotFound) and not self.strict:
                self.lease = self.limiter._unthrottled(self.req, ev)
                return True
            return False
        finally:
            self.flow.close()


_default: Limiter | None = None
_default_lock = threading.Lock()


def configure(url: str | None = None, namespace: str | None = None, ttl: float = DEFAULT_TTL,
              worker: str | None = None, export_url: bool | None = None) -> Limiter:
    """Set the process-wide default limiter, and export SLOTKEEPER_NAMESPACE / _WORKER (and the URL
    as SLOTKEEPER_URL) so spawned child processes find the same configuration.

    A URL that carries a password is exported only with ``export_url=True``: every child would
    inherit it. Give children the password another way (``SLOTKEEPER_URL_FILE``, or a pool
    initializer calling configure()). ``export_url=False`` never exports the URL."""
    global _default
    lim = Limiter(url, namespace, ttl, worker)
    with _default_lock:
        _default = lim
    if url and (export_url or (export_url is None and not has_password(url))):
        os.environ["SLOTKEEPER_URL"] = url
    if namespace:
        os.environ["SLOTKEEPER_NAMESPACE"] = namespace
    if worker:
        os.environ["SLOTKEEPER_WORKER"] = worker
    return lim


def set_default_limiter(lim: Limiter) -> None:
    """Make ``lim`` the process-wide default without touching the environment (worker plugins)."""
    global _default
    with _default_lock:
        _default = lim


def get_limiter() -> Limiter:
    """The process-wide default limiter (from the environment unless configure() was called)."""
    global _default
    lim = _default
    if lim is None:
        with _default_lock:
            if _default is None:
                _default = Limiter()
            lim = _default
    return lim


def _reset_default_in_child() -> None:
    global _default_lock
    _default_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_default_in_child)
