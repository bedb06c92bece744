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
from slotkeeper.broker import protocol as P
from slotkeeper.broker import records as R
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
from slotkeeper.broker.protocol import (
    check_names,
    check_occupy,
    check_priority,
    check_seconds,
    check_ttl,
)
from slotkeeper.broker.transport import DEFAULT_OP_TIMEOUT
from slotkeeper.lease import Lease
from slotkeeper.naming import check_template, host_name, resolve, worker_name
from slotkeeper.runtime import Runtime, Waiting, live_runtimes, new_id, runtime_for

log = logging.getLogger("slotkeeper")

DEFAULT_TTL = 30.0
FALLBACK_CHECK = 1.0  # s: only covers lost notifications; grants are pushed
ENV_OP_TIMEOUT = "SLOTKEEPER_OP_TIMEOUT"
# A call with a timeout returns within timeout + 1 s whatever Redis does: the last acquire round
# trip may run until timeout + ASK_GRACE, withdrawing the ticket until timeout + CANCEL_GRACE
# (what cannot be withdrawn by then is withdrawn in the background, or expires by its TTL).
ASK_GRACE = 0.3
CANCEL_GRACE = 0.6
CLEANUP_MAX = 1.0    # s: withdrawing after a failure never takes longer (then: in the background)
LISTENER_WAIT = 2.0  # s: at most this (and a quarter of the call's budget) for the first subscribe
DURABLE_WAIT_MS = 2000


def configured_op_timeout(op_timeout: float | None = None) -> float:
    """``op_timeout`` if given, else SLOTKEEPER_OP_TIMEOUT, else 10 s: how long one broker call
    without a deadline of its own (an acquire with timeout=None, a release, a CLI command) may
    wait for an unresponsive Redis before it raises BrokerUnavailable."""
    if op_timeout is None:
        raw = os.environ.get(ENV_OP_TIMEOUT)
        if not raw:
            return DEFAULT_OP_TIMEOUT
        try:
            op_timeout = float(raw)
        except ValueError:
            raise InvalidArgument(f"{ENV_OP_TIMEOUT} must be a number of seconds, "
                                  f"got {raw!r}") from None
    value = check_seconds(op_timeout, "op_timeout", allow_none=False)
    assert value is not None
    if not 0.1 <= value <= 3600:
        raise InvalidArgument(f"op_timeout must be between 0.1 s and 1 h, got {value:g}")
    return value


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
                 ttl: float = DEFAULT_TTL, worker: str | None = None,
                 op_timeout: float | None = None) -> None:
        self._url = configured_url(url)
        self.namespace = check_namespace(configured_namespace(namespace))
        self.ttl = check_ttl(ttl)
        if worker is not None and not isinstance(worker, str):
            raise InvalidType("worker must be a str")
        self.worker = worker
        self.op_timeout = configured_op_timeout(op_timeout)

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self._url, "namespace": self.namespace, "ttl": self.ttl,
                "worker": self.worker, "op_timeout": self.op_timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._url = state["url"]
        self.namespace = state["namespace"]
        self.ttl = state["ttl"]
        self.worker = state["worker"]
        self.op_timeout = state.get("op_timeout", DEFAULT_OP_TIMEOUT)

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
        return runtime_for(self.url, self.namespace, self.op_timeout)

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

    def _flow(self, rt: Runtime, req: Request, on_lost: Callable[[Lease], None] | None,
              bind_loop: bool = False) -> Generator[Step, Any, Lease]:
        """The acquire flow, free of I/O: it yields :class:`Call` (run this op by this deadline)
        and :class:`Wait` (wait for a notification) steps, and is sent their results (or has their
        exceptions thrown in). :meth:`acquire` drives it with blocking I/O, :meth:`acquire_async`
        with the asyncio transport — one flow, so both paths share every rule."""
        keys = rt.keys
        meta = R.pack_meta(host_name(), os.getpid(), worker_name(self.worker), req.label)
        default_ttl_ms = int(self.ttl * 1000)
        ticket_ttl_ms = req.ttl_ms or default_ttl_ms
        wait = req.timeout != 0
        started = time.monotonic()
        t_end = None if req.timeout is None else started + req.timeout

        def deadline(grace: float = ASK_GRACE) -> float:
            """A call's deadline: the op timeout, and never past timeout + grace."""
            now = time.monotonic()
            end = now + self.op_timeout
            if t_end is not None:
                end = min(end, max(t_end + grace, now + 0.05))
            return end

        lid = new_id()
        asked: set[str] = set()

        def ask() -> Call:
            # an id is asked about afresh once; later asks only re-check it (LOST if it is gone),
            # so a late notification for a lost grant can never pose as a grant of a new request
            recheck = lid in asked
            asked.add(lid)
            return Call(P.acquire(
                keys, req.names, lid, occupy=req.occupy, ttl_ms=req.ttl_ms,
                default_ttl_ms=default_ttl_ms, priority=req.priority, wait=wait,
                channel=rt.channel, meta=meta, default_slots=req.default_slots,
                recheck=recheck), deadline())

        w: Waiting | None = None
        pending = False  # a ticket (or an unseen grant) of ours may exist in Redis
        try:
            pending, sent = True, time.monotonic()
            res: R.AcquireResult = yield ask()
            granted_after = sent  # the grant was made after this send: its lease runs from here
            if res.status == R.BUSY:
                pending = False
                raise AcquireTimeout(f"no free slot on {', '.join(req.names)} (timeout=0)")
            while res.status != R.GRANTED:
                if res.status == R.LOST:  # our ticket expired (e.g. we were paused): ask anew
                    lid = new_id()
                    pending, sent = True, time.monotonic()
                    res = yield ask()
                    granted_after = sent
                    continue
                if res.status != R.QUEUED:
                    raise BrokerError(f"unexpected acquire status {res.status}")
                if w is None or w.id != lid:
                    if w is not None:
                        rt.drop_waiting(w)
                    w = Waiting(lid, req.names, ticket_ttl_ms, sent)
                    if bind_loop:
                        w.bind_loop()
                    rt.add_waiting(w)
                else:
                    w.renewed_at = max(w.renewed_at, sent)
                pause = FALLBACK_CHECK
                if res.next_check_ms > 0:
                    pause = min(pause, res.next_check_ms / 1000.0 + 0.005)
                if t_end is not None:
                    pause = min(pause, max(0.0, t_end - time.monotonic()))
                msg = yield Wait(w, pause)
                granted_after = w.renewed_at  # a grant found from here on came after that
                grant = P.parse_grant_message(msg) if msg else None
                if grant is not None:
                    res = grant
                    break
                rejected = P.parse_reject_message(msg) if msg else None
                if rejected is not None:
                    pending = False  # the script dropped our ticket
                    reason, slots, name = rejected
                    raise P.rejection(reason, name, slots, self.namespace, req.occupy)
                if t_end is not None and time.monotonic() >= t_end:
                    try:
                        res = yield Call(P.cancel(keys, req.names, lid, timed_out=True),
                                         deadline(CANCEL_GRACE))
                    except BrokerUnavailable as exc:
                        # no slot in time is what the caller learns; the withdrawal (and the
                        # release of a grant that raced it) goes on in the background
                        pending = False
                        rt.defer_withdrawal(req.names, lid, ticket_ttl_ms)
                        raise AcquireTimeout(
                            f"no slot on {', '.join(req.names)} within {req.timeout:g} s "
                            "(Redis did not answer the withdrawal in time; it is retried in the "
                            "background)") from exc
                    if res.status != R.GRANTED:
                        pending = False
                        raise AcquireTimeout(
                            f"no slot on {', '.join(req.names)} within {req.timeout:g} s")
                    break
                sent = time.monotonic()
                res = yield ask()
        except GeneratorExit:
            # abandoned by its driver (no I/O may happen here): withdraw in the background
            if pending:
                rt.defer_withdrawal(req.names, lid, ticket_ttl_ms)
            raise
        except BaseException as exc:
            # interrupted while waiting (timeout, KeyboardInterrupt, task cancellation) or the
            # broker became unreachable after a request went out: withdraw the ticket, and give
            # back a lease granted to a reply we never saw (else it would only expire by TTL);
            # if Redis cannot be reached by the deadline, the heartbeat thread keeps trying
            if pending and not isinstance(exc, (LimitNotFound, OccupyExceedsLimit)):
                try:
                    end = min(deadline(CANCEL_GRACE), time.monotonic() + CLEANUP_MAX)
                    if end - time.monotonic() < 0.02:
                        raise BrokerUnavailable("no time left to withdraw")
                    c = yield Call(P.cancel(keys, req.names, lid, timed_out=False), end)
                    if c.status == R.GRANTED:
                        yield Call(P.release(keys, req.names, lid), end)
                except BaseException:  # unreachable, or interrupted again (e.g. a second
                    # cancellation while the event loop shuts down): finish it in the background
                    log.info("slotkeeper: could not withdraw ticket %s now; retrying in the "
                             "background", lid)
                    rt.defer_withdrawal(req.names, lid, ticket_ttl_ms)
            raise
        finally:
            if w is not None:
                rt.drop_waiting(w)
        ttl_ms = res.ttl_ms or req.ttl_ms or default_ttl_ms  # the script may pick the limit's ttl
        lease = Lease(rt, lid, req.names, req.occupy, res.token, res.expires_ms, ttl_ms, on_lost,
                      granted_after=granted_after)
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
        rt = self.runtime
        if req.timeout != 0:  # part of the call's budget: never past timeout / op timeout
            rt.ensure_listener(min(LISTENER_WAIT, (req.timeout or self.op_timeout) / 4))
        transport = rt.broker.transport
        flow = self._flow(rt, req, on_lost)
        with _Outcome(req, flow, strict) as out:
            step = next(flow)
            while True:
                try:
                    if isinstance(step, Call):
                        value: Any = transport.run(step.op, step.deadline)
                    else:
                        value = step.waiting.wait(step.pause)
                except BaseException as exc:
                    step = flow.throw(exc)
                    continue
                step = flow.send(value)
        lease = out.result()
        if durable and lease.throttled:
            held, acked = rt.broker.renew_and_wait(lease.id, lease.names, lease.ttl_ms, 1,
                                                   DURABLE_WAIT_MS)
            self._check_durable(lease, held, acked, lease.release)
        return lease

    async def acquire_async(self, *names: str, occupy: int = 1, timeout: float | None = None,
                            priority: int = 0, ttl: float | None = None,
                            default_slots: int | None = None, strict: bool = True,
                            on_lost: Callable[[Lease], None] | None = None,
                            label: str | None = None, durable: bool = False) -> Lease:
        """Like :meth:`acquire`, on the asyncio transport: nothing here blocks or sleeps on the
        event loop, whatever Redis does."""
        req = self.request(names, occupy=occupy, timeout=timeout, priority=priority, ttl=ttl,
                           default_slots=default_slots, label=label)
        rt = self.runtime
        if req.timeout != 0:
            await rt.ensure_listener_async()
        broker = rt.async_broker()
        flow = self._flow(rt, req, on_lost, bind_loop=True)
        with _Outcome(req, flow, strict) as out:
            step = next(flow)
            while True:
                try:
                    if isinstance(step, Call):
                        value: Any = await broker.transport.run(step.op, step.deadline)
                    else:
                        value = await step.waiting.await_msg(step.pause)
                except BaseException as exc:
                    step = flow.throw(exc)
                    continue
                step = flow.send(value)
        lease = out.result()
        if durable and lease.throttled:
            held, acked = await broker.renew_and_wait(lease.id, lease.names, lease.ttl_ms, 1,
                                                      DURABLE_WAIT_MS)
            if not held or acked < 1:
                await lease.release_async()
            self._check_durable(lease, held, acked, None)
        return lease

    @staticmethod
    def _check_durable(lease: Lease, held: bool, acked: int,
                       release: Callable[[], bool] | None) -> None:
        # renew + WAIT ran on one connection: WAIT alone would only cover this connection's own
        # earlier writes, not a grant made by the client that released the slot to us
        if held and acked >= 1:
            return
        if release is not None:
            release()
        if not held:
            raise LeaseLost(lease.id, lease.names)
        raise BrokerUnavailable(
            f"durable acquire: no replica acknowledged lease {lease.id} within "
            f"{DURABLE_WAIT_MS} ms (released it)")

    def close(self) -> None:
        """Close this process's connections to the limiter's (URL, namespace), releasing what is
        still held through them and stopping their threads. Using the limiter again reconnects."""
        url = self._url or getattr(self, "_embedded_url", None)
        if url is None:
            return
        for rt in live_runtimes():
            if rt.url == url and rt.namespace == self.namespace:
                rt.close()

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


@dataclass(frozen=True)
class Call:
    """Flow step: run ``op`` (a protocol op) by ``deadline`` (monotonic); send back the result."""

    op: P.Op[Any]
    deadline: float


@dataclass(frozen=True)
class Wait:
    """Flow step: wait up to ``pause`` s for a notification of ``waiting`` and send it back."""

    waiting: Waiting
    pause: float


Step = Call | Wait


class _Outcome:
    """Ends the drive of an acquire flow (sync or async): the flow's return value is the lease,
    an unknown limit with strict=False runs unthrottled, and the flow is always closed — if the
    caller was interrupted outside it, closing hands the withdrawal of its ticket to the heartbeat
    thread instead of leaving it to whenever the flow is collected."""

    def __init__(self, req: Request, flow: Generator[Step, Any, Lease], strict: bool) -> None:
        self.req, self.flow, self.strict = req, flow, strict
        self._lease: Lease | None = None

    def result(self) -> Lease:
        assert self._lease is not None
        return self._lease

    def __enter__(self) -> _Outcome:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: object) -> bool:
        try:
            if isinstance(ev, StopIteration):
                self._lease = ev.value
                return True
            if isinstance(ev, LimitNotFound) and not self.strict:
                warnings.warn(f"{ev} -- running unthrottled (strict=False)", RuntimeWarning,
                              stacklevel=4)
                self._lease = Lease(None, "unthrottled-" + new_id(), self.req.names,
                                    self.req.occupy, 0, 0, 0)
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
