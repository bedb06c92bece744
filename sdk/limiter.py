"""Limiter: an explicit client (URL, namespace, default TTL, worker) and the acquire flow.

The flow is written once as a generator (it yields how long to wait and receives the notification)
and driven by a blocking loop for threads and an awaiting loop for asyncio.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

from slotkeeper import tracing
from slotkeeper.broker import embedded
from slotkeeper.broker import protocol as P
from slotkeeper.broker import records as R
from slotkeeper.broker.client import AsyncBroker
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
    SlotkeeperError,
)
from slotkeeper.broker.keys import check_namespace
from slotkeeper.broker.protocol import (
    check_names,
    check_occupy,
    check_priority,
    check_seconds,
    check_ttl,
)
from slotkeeper.broker.readmodel import SAMPLE
from slotkeeper.broker.transport import DEFAULT_OP_TIMEOUT
from slotkeeper.lease import Lease
from slotkeeper.naming import check_template, host_name, resolve, worker_name
from slotkeeper.pending import (
    DEFAULT_SLOW_WAIT,
    PendingRequest,
    SlowWaitLog,
    WaitingCallback,
    check_slow_wait,
)
from slotkeeper.reservation import Reservation
from slotkeeper.runtime import Runtime, Waiting, live_runtimes, new_id, request_id, runtime_for

log = logging.getLogger("slotkeeper")

DEFAULT_TTL = 30.0
FALLBACK_CHECK = 1.0  # s: only covers lost notifications; grants are pushed
ENV_OP_TIMEOUT = "SLOTKEEPER_OP_TIMEOUT"
# A call with a timeout returns within timeout + 1 s whatever Redis does: the last acquire round
# trip may run until timeout + ASK_GRACE, withdrawing the ticket until timeout + CANCEL_GRACE
# (what cannot be withdrawn by then is withdrawn in the background, or expires by its TTL).
ASK_GRACE = 0.3
CANCEL_GRACE = 0.6
STALE_MARGIN = 0.05  # s: a grant whose local validity ends sooner than this is not handed out
CLEANUP_MAX = 1.0    # s: withdrawing after a failure never takes longer (then: in the background)
DURABLE_WAIT_MS = 2000
CACHE_MAX = 1024     # entries of a limiter's per-call caches (validated names, packed meta)


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
                 op_timeout: float | None = None,
                 slow_wait: float = DEFAULT_SLOW_WAIT) -> None:
        self._url = configured_url(url)
        self.namespace = check_namespace(configured_namespace(namespace))
        self.ttl = check_ttl(ttl)
        if worker is not None and not isinstance(worker, str):
            raise InvalidType("worker must be a str")
        self.worker = worker
        self.op_timeout = configured_op_timeout(op_timeout)
        self.slow_wait = check_slow_wait(slow_wait)  # s before a wait logs one INFO line; 0: never
        self._init_caches()

    def _init_caches(self) -> None:
        self._names_cache: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._meta_cache: dict[tuple[int, str, str], bytes] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self._url, "namespace": self.namespace, "ttl": self.ttl,
                "worker": self.worker, "op_timeout": self.op_timeout,
                "slow_wait": self.slow_wait}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._url = state["url"]
        self.namespace = state["namespace"]
        self.ttl = state["ttl"]
        self.worker = state["worker"]
        self.op_timeout = state.get("op_timeout", DEFAULT_OP_TIMEOUT)
        self.slow_wait = state.get("slow_wait", DEFAULT_SLOW_WAIT)
        self._init_caches()

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

    def _meta(self, label: str) -> bytes:
        """The packed record meta (host, pid, worker, label) of this process's requests, cached
        per (pid, worker, label): built once, not on every acquire."""
        worker = worker_name(self.worker)
        key = (os.getpid(), worker, label)
        cache = self._meta_cache
        meta = cache.get(key)
        if meta is None:
            if len(cache) >= CACHE_MAX:
                cache.clear()
            meta = cache[key] = R.pack_meta(host_name(), key[0], worker, label)
        return meta

    def _names(self, names: Sequence[str]) -> tuple[str, ...]:
        """Validated names, templates ({worker}, {host}) resolved. Names without a template are
        validated once per tuple and remembered (bounded); resolved ones depend on where the
        call runs and are worked out each time."""
        key = tuple(names)
        cache = self._names_cache
        try:
            hit = cache.get(key)
        except TypeError:  # an unhashable "name": the checks below say what is wrong
            hit = None
        if hit is not None:
            return hit
        for n in names:
            check_template(n)
        resolved = check_names([resolve(n, self.worker) for n in names])
        if not any("{" in n for n in key):
            if len(cache) >= CACHE_MAX:
                cache.clear()
            cache[key] = resolved
        return resolved

    def request(self, names: Sequence[str], *, occupy: int = 1, timeout: float | None = None,
                priority: int = 0, ttl: float | None = None, default_slots: int | None = None,
                label: str | None = None) -> Request:
        """Validate and resolve ({worker}, {host}) a request where the body runs."""
        resolved = self._names(names)
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
              bind_loop: bool = False, units_only: bool = False,
              handle: PendingRequest | None = None, slow_wait: float = 0.0,
              on_waiting: WaitingCallback | None = None,
              ) -> Generator[Step, Any, Lease | Reservation]:
        """The acquire flow, free of I/O: it yields :class:`Call` (run this op by this deadline)
        and :class:`Wait` (wait for a notification) steps, and is sent their results (or has their
        exceptions thrown in). :meth:`acquire` drives it with blocking I/O, :meth:`acquire_async`
        with the asyncio transport — one flow, so both paths share every rule."""
        keys = rt.keys
        meta = self._meta(req.label)
        default_ttl_ms = int(self.ttl * 1000)
        ticket_ttl_ms = req.ttl_ms or default_ttl_ms
        wait = req.timeout != 0
        started = time.monotonic()
        t_end = None if req.timeout is None else started + req.timeout
        if handle is None:
            handle = PendingRequest(rt.broker, req.names, req.occupy, req.priority, req.label)
        slow = SlowWaitLog(handle, slow_wait)

        def deadline(grace: float = ASK_GRACE) -> float:
            """A call's deadline: the op timeout, and never past timeout + grace."""
            now = time.monotonic()
            end = now + self.op_timeout
            if t_end is not None:
                end = min(end, max(t_end + grace, now + 0.05))
            return end

        lid = request_id()
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
                recheck=recheck, units_only=units_only), deadline())

        def withdraw(timed_out: bool, grace: float) -> Call:
            return Call(P.cancel(keys, req.names, lid, timed_out=timed_out,
                                 units_only_occupy=req.occupy if units_only else 0),
                        deadline(grace))

        what = "rate units" if units_only else "slot"

        w: Waiting | None = None
        pending = False  # a ticket (or an unseen grant) of ours may exist in Redis
        try:
            if P.templates_stale(self.namespace):  # which templates may make these names
                yield Call(P.list_templates(keys), deadline())
            pending, sent = True, time.monotonic()
            try:
                res: R.AcquireResult = yield ask()
            except LimitNotFound:
                # a template made since our list was read? read it again and ask once more
                if P.templates_stale(self.namespace, 0.1):
                    yield Call(P.list_templates(keys), deadline())
                    lid = request_id()
                    res = yield ask()
                else:
                    raise
            granted_after = sent  # the grant was made after this send: its lease runs from here
            if res.status == R.BUSY:
                pending = False
                raise AcquireTimeout(f"no free {what} on {', '.join(req.names)} (timeout=0)")
            while True:
                if res.status == R.GRANTED:
                    ttl_s = (res.ttl_ms or req.ttl_ms or default_ttl_ms) / 1000
                    if units_only or granted_after + ttl_s > time.monotonic() + STALE_MARGIN:
                        break
                    # a grant this process saw too late to trust (it was paused or starved for
                    # longer than the lease's TTL): Redis may have expired it already and admitted
                    # someone else, so it is never handed out. Give it back and ask anew.
                    try:
                        yield Call(P.release(keys, req.names, lid), deadline())
                    except SlotkeeperError:
                        rt.defer_withdrawal(req.names, lid, ticket_ttl_ms)
                    res = R.AcquireResult(R.LOST)
                if res.status == R.LOST:  # our ticket expired (e.g. we were paused): ask anew
                    lid = request_id()
                    pending, sent = True, time.monotonic()
                    res = yield ask()
                    granted_after = sent
                    continue
                if res.status != R.QUEUED:
                    raise BrokerError(f"unexpected acquire status {res.status}")
                first = handle.position is None
                handle._queued(lid, res.position)
                if first and on_waiting is not None:
                    try:
                        on_waiting(handle)
                    except Exception:
                        log.exception("slotkeeper: on_waiting callback failed")
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
                if res.due_ms > 0:  # rate units due then: ask exactly then (pushed, not polled)
                    pause = min(pause, res.due_ms / 1000.0)
                if t_end is not None:
                    pause = min(pause, max(0.0, t_end - time.monotonic()))
                msg = yield Wait(w, slow.pause(pause))
                granted_after = w.renewed_at  # a grant found from here on came after that
                grant = P.parse_grant_message(msg) if msg else None
                if grant is not None:
                    res = grant
                    continue  # (the top of the loop checks the grant can still be trusted)
                due = P.parse_due_message(msg) if msg else None
                if due is not None and (t_end is None or time.monotonic() < t_end):
                    res = R.AcquireResult(R.QUEUED, due_ms=due)  # the broker moved our due time
                    continue
                rejected = P.parse_reject_message(msg) if msg else None
                if rejected is not None:
                    pending = False  # the script dropped our ticket
                    reason, slots, name = rejected
                    raise P.rejection(reason, name, slots, self.namespace, req.occupy)
                if t_end is not None and time.monotonic() >= t_end:
                    try:
                        res = yield withdraw(True, CANCEL_GRACE)
                    except BrokerUnavailable as exc:
                        # no slot in time is what the caller learns; the withdrawal (and the
                        # release of a grant that raced it) goes on in the background
                        pending = False
                        rt.defer_withdrawal(req.names, lid, ticket_ttl_ms)
                        raise AcquireTimeout(
                            f"no {what} on {', '.join(req.names)} within {req.timeout:g} s "
                            "(Redis did not answer the withdrawal in time; it is retried in the "
                            "background)") from exc
                    if res.status != R.GRANTED:
                        pending = False
                        raise AcquireTimeout(
                            f"no {what} on {', '.join(req.names)} within {req.timeout:g} s")
                    continue
                if slow.due:  # one INFO line saying why (read through this flow's transport)
                    try:
                        snaps = []
                        for n in req.names:
                            snaps.append((yield Call(P.snapshot(keys, n, SAMPLE), deadline())))
                        slow.log(snaps)
                    except SlotkeeperError as exc:
                        slow.log(None, exc)
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
                    c = yield Call(P.cancel(keys, req.names, lid, timed_out=False,
                                            units_only_occupy=req.occupy if units_only else 0),
                                   end)
                    if c.status == R.GRANTED and not units_only:
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
        handle._granted()
        if units_only:
            return Reservation(rt.broker, lid, req.names, req.occupy)
        ttl_ms = res.ttl_ms or req.ttl_ms or default_ttl_ms  # the script may pick the limit's ttl
        lease = Lease(rt, lid, req.names, req.occupy, res.token, res.expires_ms, ttl_ms, on_lost,
                      granted_after=granted_after)
        rt.add_lease(lease)
        return lease

    def _drive(self, req: Request, on_lost: Callable[[Lease], None] | None, strict: bool,
               units_only: bool = False, slow_wait: float | None = None,
               on_waiting: WaitingCallback | None = None,
               ) -> tuple[Runtime, Lease | Reservation]:
        """Run the acquire flow with blocking I/O."""
        rt = self.runtime
        if req.timeout != 0:
            rt.ensure_listener(0)  # no wait: its first subscription nudges every waiter to re-check
        transport = rt.broker.transport
        handle, span = self._observe(rt, req, units_only)
        flow = self._flow(rt, req, on_lost, units_only=units_only, handle=handle,
                          slow_wait=self._slow(slow_wait), on_waiting=on_waiting)
        with _Outcome(req, flow, strict, handle, span) as out:
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
        return rt, out.result()

    async def _drive_async(self, req: Request, on_lost: Callable[[Lease], None] | None,
                           strict: bool, units_only: bool = False,
                           slow_wait: float | None = None,
                           on_waiting: WaitingCallback | None = None,
                           ) -> tuple[AsyncBroker, Lease | Reservation]:
        """Run the acquire flow on the asyncio transport (never blocks the event loop)."""
        rt = self.runtime
        if req.timeout != 0:
            rt.ensure_listener(0)  # the listener thread (never on the loop) wakes the task
        broker = rt.async_broker()
        handle, span = self._observe(rt, req, units_only)
        flow = self._flow(rt, req, on_lost, bind_loop=True, units_only=units_only, handle=handle,
                          slow_wait=self._slow(slow_wait), on_waiting=on_waiting)
        with _Outcome(req, flow, strict, handle, span) as out:
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
        return broker, out.result()

    def acquire(self, *names: str, occupy: int = 1, timeout: float | None = None,
                priority: int = 0, ttl: float | None = None, default_slots: int | None = None,
                strict: bool = True, on_lost: Callable[[Lease], None] | None = None,
                label: str | None = None, durable: bool = False,
                slow_wait: float | None = None,
                on_waiting: WaitingCallback | None = None) -> Lease:
        """Take ``occupy`` slots of every named limit at once (blocking).

        ``durable=True`` returns only once a replica acknowledged the grant (Redis WAIT), so a
        failover right after cannot forget it; without a replica it raises BrokerUnavailable.
        ``on_waiting(pending)`` is called once if the request has to queue (see
        :class:`~slotkeeper.pending.PendingRequest`); a wait longer than ``slow_wait`` seconds
        (default: the Limiter's) logs one INFO line saying why."""
        req = self.request(names, occupy=occupy, timeout=timeout, priority=priority, ttl=ttl,
                           default_slots=default_slots, label=label)
        rt, lease = self._drive(req, on_lost, strict, slow_wait=slow_wait, on_waiting=on_waiting)
        assert isinstance(lease, Lease)
        if durable and lease.throttled:
            held, acked = rt.broker.renew_and_wait(lease.id, lease.names, lease.ttl_ms, 1,
                                                   DURABLE_WAIT_MS)
            self._check_durable(lease, held, acked, lease.release)
        return lease

    async def acquire_async(self, *names: str, occupy: int = 1, timeout: float | None = None,
                            priority: int = 0, ttl: float | None = None,
                            default_slots: int | None = None, strict: bool = True,
                            on_lost: Callable[[Lease], None] | None = None,
                            label: str | None = None, durable: bool = False,
                            slow_wait: float | None = None,
                            on_waiting: WaitingCallback | None = None) -> Lease:
        """Like :meth:`acquire`, on the asyncio transport: nothing here blocks or sleeps on the
        event loop, whatever Redis does."""
        req = self.request(names, occupy=occupy, timeout=timeout, priority=priority, ttl=ttl,
                           default_slots=default_slots, label=label)
        broker, lease = await self._drive_async(req, on_lost, strict, slow_wait=slow_wait,
                                                on_waiting=on_waiting)
        assert isinstance(lease, Lease)
        if durable and lease.throttled:
            held, acked = await broker.renew_and_wait(lease.id, lease.names, lease.ttl_ms, 1,
                                                      DURABLE_WAIT_MS)
            if not held or acked < 1:
                await lease.release_async()
            self._check_durable(lease, held, acked, None)
        return lease

    def _slow(self, slow_wait: float | None) -> float:
        return self.slow_wait if slow_wait is None else check_slow_wait(slow_wait)

    def _observe(self, rt: Runtime, req: Request,
                 units_only: bool = False) -> tuple[PendingRequest, Any]:
        """The request's waiting handle and (with the otel extra) its acquire span."""
        handle = PendingRequest(rt.broker, req.names, req.occupy, req.priority, req.label)
        span = (tracing.start_acquire(req.names, req.occupy, self.namespace, req.label)
                if tracing.ENABLED and not units_only else None)
        return handle, span

    def rate_limit(self, *names: str, occupy: int = 1, timeout: float | None = None,
                   priority: int = 0, label: str | None = None) -> Reservation:
        """Take ``occupy`` units of every named limit's rate at once (blocking); nothing to
        release. The returned reservation can be settled to the true cost afterwards:
        ``rate_limit("llm", occupy=1000).settle(730)``. Every named limit needs a rate."""
        req = self.request(names, occupy=occupy, timeout=timeout, priority=priority,
                           label=label)
        _, res = self._drive(req, None, True, units_only=True)
        assert isinstance(res, Reservation)
        return res

    async def rate_limit_async(self, *names: str, occupy: int = 1, timeout: float | None = None,
                               priority: int = 0, label: str | None = None) -> Reservation:
        """Like :meth:`rate_limit`, on the asyncio transport (never blocks the event loop)."""
        req = self.request(names, occupy=occupy, timeout=timeout, priority=priority,
                           label=label)
        _, res = await self._drive_async(req, None, True, units_only=True)
        assert isinstance(res, Reservation)
        return res

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

    def create(self, name: str, slots: int | None = None, ttl: float | None = None,
               enabled: bool = True, description: str = "", **settings: Any) -> None:
        """Create a limit or template (``settings``: rate, spread, max_waiters, total,
        idle_ttl; see :meth:`Broker.create_limit`)."""
        self.broker.create_limit(name, slots, ttl, enabled, description, **settings)

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
    caller was interrupted outside it, closing hands the withdrawal of its ticket to the withdrawer
    thread instead of leaving it to whenever the flow is collected."""

    def __init__(self, req: Request, flow: Generator[Step, Any, Lease | Reservation],
                 strict: bool, handle: PendingRequest | None = None, span: Any = None) -> None:
        self.req, self.flow, self.strict = req, flow, strict
        self.handle, self.span = handle, span
        self._lease: Lease | Reservation | None = None

    def result(self) -> Lease | Reservation:
        assert self._lease is not None
        return self._lease

    def __enter__(self) -> _Outcome:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: object) -> bool:
        error = None if isinstance(ev, StopIteration) else ev
        try:
            if isinstance(ev, StopIteration):
                self._lease = ev.value
                self._traced("granted")
                return True
            if isinstance(ev, LimitNotFound) and not self.strict:
                warnings.warn(f"{ev} -- running unthrottled (strict=False)", RuntimeWarning,
                              stacklevel=4)
                self._lease = Lease(None, "unthrottled-" + new_id(), self.req.names,
                                    self.req.occupy, 0, 0, 0)
                self._traced("unthrottled")
                return True
            return False
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.flow.close()
            if self.span is not None and error is not None and self.handle is not None:
                tracing.end_acquire(self.span, self.handle, _outcome(error), error)

    def _traced(self, outcome: str) -> None:
        span, self.span = self.span, None
        if span is None or self.handle is None:
            return
        tracing.end_acquire(span, self.handle, outcome)
        lease = self._lease
        if isinstance(lease, Lease) and lease.throttled:
            lease._span = tracing.start_hold(lease.id, lease.names, lease.occupy, lease.token)


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, AcquireTimeout):
        return "timeout"
    if isinstance(exc, LimitNotFound | OccupyExceedsLimit):
        return "rejected"
    if isinstance(exc, GeneratorExit | KeyboardInterrupt | asyncio.CancelledError):
        return "cancelled"
    return "error"


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
