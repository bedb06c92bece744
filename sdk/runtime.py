"""Per-process machinery of one (URL, namespace): the broker connections (blocking, and one
``redis.asyncio`` client per event loop for the async path), ONE heartbeat thread that renews every
lease and waiting ticket of the process there in one round trip per interval, ONE listener thread
that receives grant notifications (pub/sub) and wakes the waiting threads, or tasks (through
``call_soon_threadsafe``: it never runs on an event loop), at once, ONE watchdog thread that
declares a lease lost as soon as this process can no longer be sure it holds it (Chubby's rule:
last successful renewal's send time + TTL, on the local monotonic clock), and ONE withdrawer
thread that gives back, in the background, what an interrupted call could not withdraw (it has a
thread of its own: a withdrawal waiting on a slow Redis never delays a renewal).

A second Redis (or namespace) gets its own runtime and threads, so a hung server cannot starve
another's renewals. A forked child gets fresh runtimes (new connections, no leases, no threads): it
never renews or releases its parent's leases. See ARCHITECTURE.md ("Lease lifecycle").
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import itertools
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Sequence

import redis

from slotkeeper.broker import protocol as P
from slotkeeper.broker.client import AsyncBroker, Broker
from slotkeeper.broker.codes import Status
from slotkeeper.broker.errors import SlotkeeperError
from slotkeeper.broker.transport import DEFAULT_OP_TIMEOUT
from slotkeeper.lease import Lease

log = logging.getLogger("slotkeeper")

LISTEN_POLL = 1.0       # listener loop tick (s)
MIN_INTERVAL = 0.05     # heartbeat interval bounds (s)
MAX_INTERVAL = 10.0
EARLY_MAX = 1000        # notifications kept for tickets not registered yet
WITHDRAW_MAX = 10_000   # tickets whose withdrawal is retried in the background (bounded)
WITHDRAW_RETRY = 0.1    # s between background withdrawal attempts while Redis is unreachable,
WITHDRAW_RETRY_MAX = 0.5  # doubling up to this
WITHDRAW_AT_EXIT = 2.0  # s a process spends at exit on withdrawals still pending
HEARTBEAT_BATCH = 100   # leases (and tickets) renewed per heartbeat round trip: Redis stays free


def renew_interval(ttl_ms: int) -> float:
    """Heartbeat period for a lease or ticket of ``ttl_ms``: a third of its TTL, bounded."""
    return min(MAX_INTERVAL, max(MIN_INTERVAL, ttl_ms / 3000.0))


def new_id() -> str:
    return secrets.token_hex(8)


_id_prefix = secrets.token_hex(6)
_id_count = itertools.count(1)


def request_id() -> str:
    """A lease or ticket id, unique across processes: a random per-process prefix (48 bits,
    drawn again in a forked child) and a counter — no system call per acquire."""
    return f"{_id_prefix}{next(_id_count):04x}"


class Waiting:
    """A waiting ticket of this process: notifications land here. ``renewed_at`` is the local
    monotonic send time of the last round trip that found the ticket still waiting: a grant made
    after it started its lease no earlier than that (the lower bound the lease's local validity
    is computed from)."""

    def __init__(self, ticket_id: str, names: tuple[str, ...], ttl_ms: int,
                 renewed_at: float | None = None) -> None:
        self.id = ticket_id
        self.names = names
        self.ttl_ms = ttl_ms
        self.renewed_at = time.monotonic() if renewed_at is None else renewed_at
        self._msgs: collections.deque[str] = collections.deque()
        # The wake-up of a blocked waiter: a bare lock held while nothing is pending, released
        # by deliver(). The waiting thread blocks on it directly, so a notification costs one
        # thread wake (an Event would add its Condition's lock hand-over to the wake-up).
        self._signal = threading.Lock()
        self._signal.acquire()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aevent: asyncio.Event | None = None

    def bind_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._aevent = asyncio.Event()

    def deliver(self, msg: str) -> None:
        self._msgs.append(msg)
        try:
            self._signal.release()
        except RuntimeError:
            pass  # already signalled
        if self._loop is not None and self._aevent is not None:
            try:
                self._loop.call_soon_threadsafe(self._aevent.set)
            except RuntimeError:
                pass  # loop closed

    def _take(self) -> str | None:
        self._signal.acquire(blocking=False)  # consume a pending signal (msgs are drained next)
        if self._aevent is not None:
            self._aevent.clear()
        if not self._msgs:
            return None
        # a grant or rejection outranks a retry hint
        msgs = list(self._msgs)
        self._msgs.clear()
        for m in msgs:
            if P.parse_grant_message(m) or P.parse_reject_message(m):  # malformed: a nudge
                return m
        return msgs[-1]

    def wait(self, timeout: float) -> str | None:
        if not self._msgs:
            self._signal.acquire(timeout=max(0.0, timeout))  # a signal is consumed here
        return self._take()

    async def await_msg(self, timeout: float) -> str | None:
        assert self._aevent is not None
        if not self._msgs:
            try:
                await asyncio.wait_for(self._aevent.wait(), max(0.0, timeout))
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                pass
        return self._take()


class Runtime:
    def __init__(self, url: str, namespace: str, op_timeout: float = DEFAULT_OP_TIMEOUT) -> None:
        self.url = url
        self.namespace = namespace
        self.op_timeout = op_timeout
        self.pid = os.getpid()
        self.broker = Broker.from_url(url, namespace, op_timeout)
        self.keys = self.broker.keys
        self.client_id = new_id()
        self.channel = self.keys.wake_channel(self.client_id)
        self._lock = threading.Lock()
        self._leases: dict[str, Lease] = {}
        self._waiting: dict[str, Waiting] = {}
        # notifications that arrived before their ticket was registered (a grant can be published
        # before the QUEUED reply of the same ticket has been read): handed over by add_waiting
        self._early: dict[str, str] = {}
        # tickets an interrupted acquire could not withdraw (Redis unreachable): the withdrawer
        # thread keeps trying, and gives back a lease granted to them meanwhile (else it would
        # be held by nobody until its TTL ran out)
        self._withdraw: dict[str, tuple[tuple[str, ...], float]] = {}
        self._withdraw_next = 0.0
        self._withdraw_pause = WITHDRAW_RETRY
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncBroker] = (
            weakref.WeakKeyDictionary())
        self._heartbeat = Heartbeat(self)
        self._watchdog = Watchdog(self)
        self._withdrawer = Withdrawer(self)
        self._listener: threading.Thread | None = None
        self._pubsub: redis.client.PubSub | None = None
        self._subscribed = threading.Event()
        self._closed = False
        self._hb_down = False

    # -- connections --------------------------------------------------------------------------

    def async_broker(self) -> AsyncBroker:
        """The ``redis.asyncio`` broker of the running event loop (one per loop)."""
        loop = asyncio.get_running_loop()
        ab = self._async.get(loop)
        if ab is None:
            ab = AsyncBroker(self.url, self.namespace, self.op_timeout)
            self._async[loop] = ab
        return ab

    # -- registry -----------------------------------------------------------------------------

    def add_lease(self, lease: Lease) -> None:
        with self._lock:
            self._leases[lease.id] = lease
        self._heartbeat.register(lease.ttl_ms)
        self._watchdog.register(lease.valid_until)

    def drop_lease(self, lease: Lease) -> None:
        with self._lock:
            self._leases.pop(lease.id, None)

    def add_waiting(self, w: Waiting) -> None:
        with self._lock:
            self._waiting[w.id] = w
            early = self._early.pop(w.id, None)
        if early is not None:
            w.deliver(early)
        self._heartbeat.register(w.ttl_ms)

    def drop_waiting(self, w: Waiting) -> None:
        with self._lock:
            self._waiting.pop(w.id, None)
            self._early.pop(w.id, None)

    def held(self) -> list[Lease]:
        with self._lock:
            return list(self._leases.values())

    def defer_withdrawal(self, names: Sequence[str], ticket_id: str, ttl_ms: int) -> None:
        """Withdraw a ticket later (the withdrawer thread retries until it has surely run out),
        releasing a lease granted to it meanwhile. A ticket granted just before it would have
        expired makes a lease that lives one more TTL: the retries go on for two TTLs (+1 s)."""
        with self._lock:
            if len(self._withdraw) < WITHDRAW_MAX:
                give_up = time.monotonic() + 2 * ttl_ms / 1000 + 1
                self._withdraw[ticket_id] = (tuple(names), give_up)
            self._withdraw_next = 0.0
        self._withdrawer.register()

    def withdraw_due(self) -> float | None:
        """Run pending withdrawals if it is time; returns when to look next (None: none left)."""
        with self._lock:
            if not self._withdraw:
                return None
            now = time.monotonic()
            if now < self._withdraw_next:
                return self._withdraw_next
            self._withdraw_next = now + self._withdraw_pause
        self._withdraw_pending()
        with self._lock:
            return self._withdraw_next if self._withdraw else None

    # -- operations ---------------------------------------------------------------------------

    # A lease stays registered, and so renewed, until its release is through: a release slowed
    # past the TTL (a slow or lossy network) must not find it expired and count it so.

    def release(self, lease: Lease) -> bool:
        lease._releasing = True
        try:
            return self.broker.release(lease.names, lease.id)
        except SlotkeeperError:  # unreachable by the deadline: give it back in the background
            self.defer_withdrawal(lease.names, lease.id, lease.ttl_ms)
            raise
        finally:
            self.drop_lease(lease)

    async def release_async(self, lease: Lease) -> bool:
        lease._releasing = True
        try:
            return await self.async_broker().release(lease.names, lease.id)
        except (asyncio.CancelledError, SlotkeeperError):  # e.g. the loop shuts down, or Redis
            # is unreachable by the deadline: give it back in the background
            self.defer_withdrawal(lease.names, lease.id, lease.ttl_ms)
            raise
        finally:
            self.drop_lease(lease)

    def renew_now(self, lease: Lease) -> bool:
        sent = time.monotonic()
        res = self.broker.heartbeat([(lease.id, lease.names, lease.ttl_ms)], [])
        if lease.id in res.lost_leases:
            self.drop_lease(lease)
            lease._mark_lost()
            return False
        if lease.id in res.failed_leases:
            return not lease.lost
        lease._renewed(res.now_ms + lease.ttl_ms, sent)
        return True

    # -- heartbeat ----------------------------------------------------------------------------

    def interval(self) -> float:
        """Heartbeat period this runtime needs: a third of its shortest TTL (bounded)."""
        with self._lock:
            ttls = [x.ttl_ms for x in self._leases.values()] + [
                w.ttl_ms for w in self._waiting.values()]
        if not ttls:
            return MAX_INTERVAL
        return renew_interval(min(ttls))

    def beat(self) -> None:
        """Renew everything this process holds or awaits: one round trip per batch of at most
        HEARTBEAT_BATCH leases and tickets, so one script call never blocks Redis for long however
        many leases a process holds (a lease costs Redis some 10-40 us to renew)."""
        with self._lock:
            leases = list(self._leases.values())
            waiting = list(self._waiting.values())
        if not leases and not waiting:
            return
        shortest = min([x.ttl_ms for x in leases] + [w.ttl_ms for w in waiting]) / 1000
        start = time.monotonic()
        budget = start + max(0.5, min(self.op_timeout, shortest / 2))  # for the whole beat
        for i in range(0, max(len(leases), len(waiting)), HEARTBEAT_BATCH):
            if not self._beat_batch(leases[i:i + HEARTBEAT_BATCH],
                                    waiting[i:i + HEARTBEAT_BATCH], budget):
                return

    def _beat_batch(self, leases: list[Lease], waiting: list[Waiting], deadline: float) -> bool:
        """One heartbeat round trip; False if Redis could not be reached (stop this beat)."""
        sent = time.monotonic()
        try:
            # while Redis is down, one try per beat (the beats are the retries): no tight loop
            res = self.broker.heartbeat(
                [(x.id, x.names, x.ttl_ms) for x in leases],
                [(w.id, w.names, w.ttl_ms) for w in waiting],
                deadline=max(deadline, sent + 0.1), retry=not self._hb_down)
        except SlotkeeperError as exc:
            if not self._hb_down:
                log.warning("slotkeeper: heartbeat failed (%s); retrying", exc)
                self._hb_down = True
            return False  # each lease's own validity runs out on the watchdog, not here
        if self._hb_down:
            log.warning("slotkeeper: heartbeat recovered")
            self._hb_down = False
        lost, failed = set(res.lost_leases), set(res.failed_leases)
        if failed:
            log.warning("slotkeeper: could not renew lease(s) %s (damaged records or missing "
                        "keys); the others were renewed", ", ".join(sorted(failed)))
        for x in leases:
            if x.id in lost:
                if not x._releasing:  # else gone by its own release: the release's reply decides
                    self.drop_lease(x)
                    x._mark_lost()
            elif x.id not in failed:
                x._renewed(res.now_ms + x.ttl_ms, sent)
        gone = set(res.lost_tickets) | set(res.granted_tickets)
        for w in waiting:
            if w.id not in gone:
                w.renewed_at = max(w.renewed_at, sent)
        for tid in res.lost_tickets:
            self._deliver(tid, "lost")
        for tid in res.granted_tickets:
            self._deliver(tid, "r")
        return True

    def _deliver(self, tid: str, msg: str) -> None:
        with self._lock:
            w = self._waiting.get(tid)
        if w is not None:
            w.deliver(msg)

    def flush_withdrawals(self, budget: float = WITHDRAW_AT_EXIT) -> None:
        """Try the pending withdrawals now, for at most ``budget`` s (at exit: what a process
        leaves behind would otherwise be held by nobody until its TTL ran out)."""
        end = time.monotonic() + budget
        while self._withdraw and time.monotonic() < end and os.getpid() == self.pid:
            with self._lock:
                self._withdraw_next = 0.0
            self._withdraw_pending()
            if self._withdraw:
                time.sleep(min(0.1, max(0.0, end - time.monotonic())))

    def _withdraw_pending(self) -> None:
        with self._lock:
            todo = list(self._withdraw.items())
        now = time.monotonic()
        for tid, (names, give_up) in todo:
            if now > give_up:  # its ticket (and any lease granted to it) has expired by now
                with self._lock:
                    self._withdraw.pop(tid, None)
                continue
            run = self.broker.transport.run
            # each round retries (with the transport's backoff) for up to 2 s, never past the
            # point where the ticket or lease has expired anyway
            end = min(give_up - 0.5, time.monotonic() + 2.0)
            try:
                c = run(P.cancel(self.keys, names, tid, timed_out=False), end)
                if c.status == Status.GRANTED:
                    run(P.release(self.keys, names, tid), max(end, time.monotonic() + 0.5))
            except SlotkeeperError:
                with self._lock:  # still unreachable: back off
                    self._withdraw_pause = min(WITHDRAW_RETRY_MAX, self._withdraw_pause * 2)
                    self._withdraw_next = time.monotonic() + self._withdraw_pause
                return
            with self._lock:
                self._withdraw.pop(tid, None)
                self._withdraw_pause = WITHDRAW_RETRY

    # -- local expiry (watchdog) --------------------------------------------------------------

    def expire_local(self) -> float | None:
        """Declare lost every lease whose local validity ran out; returns the monotonic time the
        next one runs out (None: nothing held)."""
        now = time.monotonic()
        nxt: float | None = None
        for x in self.held():
            if x.valid_until <= now:
                self.drop_lease(x)
                x._mark_lost()
            elif nxt is None or x.valid_until < nxt:
                nxt = x.valid_until
        return nxt

    # -- notifications ------------------------------------------------------------------------

    def ensure_listener(self, wait: float = 2.0) -> None:
        if self._listener is None or not self._listener.is_alive():
            with self._lock:
                if self._listener is None or not self._listener.is_alive():
                    self._listener = threading.Thread(
                        target=self._listen_loop, name=f"slotkeeper-listener-{self.namespace}",
                        daemon=True)
                    self._listener.start()
        self._subscribed.wait(wait)

    def _listen_loop(self) -> None:
        delay = 0.05
        while not self._closed and os.getpid() == self.pid:
            ps = None
            try:
                ps = self.broker.redis.pubsub()  # type: ignore[no-untyped-call]
                self._pubsub = ps
                ps.subscribe(self.channel)
                while not self._closed:
                    msg = ps.get_message(timeout=LISTEN_POLL)
                    if msg is None:
                        continue
                    if msg["type"] == "subscribe":
                        delay = 0.05
                        self._subscribed.set()
                        self._nudge_all()  # anything sent while we were away is re-checked
                    elif msg["type"] == "message":
                        self._dispatch(msg["data"])
            except (redis.RedisError, OSError, ValueError, AttributeError) as exc:
                self._subscribed.clear()
                log.debug("slotkeeper: listener reconnecting after %s", exc)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                if ps is not None:
                    try:
                        ps.close()
                    except Exception:
                        pass

    def _dispatch(self, data: bytes | str) -> None:
        """Route one notification ``<ticket id> <message>`` to its waiter. Anything malformed is
        at worst a nudge: the waiter re-checks with the broker, which is always right."""
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        tid, _, rest = text.partition(" ")
        with self._lock:
            w = self._waiting.get(tid)
            if w is None:  # not registered yet: keep it for add_waiting (bounded)
                if rest[:1] in ("g", "x") or self._early.get(tid, "r")[:1] not in ("g", "x"):
                    self._early[tid] = rest
                while len(self._early) > EARLY_MAX:
                    del self._early[next(iter(self._early))]
                return
        w.deliver(rest)

    def _nudge_all(self) -> None:
        with self._lock:
            waiting = list(self._waiting.values())
        for w in waiting:
            w.deliver("r")

    # -- shutdown -----------------------------------------------------------------------------

    def close(self, release: bool = True) -> None:
        """Release what is still held (best effort, bounded), stop and join the threads, close
        the connections. The runtime is unusable afterwards (``runtime_for`` makes a new one)."""
        if self._closed:
            return
        if release and os.getpid() == self.pid:
            for x in self.held():
                if x._releasing:  # another thread's release is under way
                    continue
                try:
                    x.release()
                except SlotkeeperError:
                    pass
            self.flush_withdrawals()
        self._closed = True
        forget(self)
        self._heartbeat.stop()
        self._watchdog.stop()
        self._withdrawer.stop()
        listener = self._listener
        if listener is not None and listener is not threading.current_thread():
            listener.join(LISTEN_POLL + 1)
        self._async.clear()  # their loops close their own sockets
        try:
            self.broker.close()
        except Exception:
            pass

    @property
    def closed(self) -> bool:
        return self._closed


class _Worker:
    """A daemon thread of one runtime that sleeps on an Event (woken early by ``register``)."""

    name = "worker"

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name=f"slotkeeper-{self.name}-{self.rt.namespace}", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while os.getpid() == self.pid and not self.rt.closed:
            try:
                self.loop_once()
            except Exception:
                log.exception("slotkeeper: %s round failed", self.name)
                time.sleep(0.1)

    def loop_once(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._wake.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(self.rt.op_timeout + 1)


class Heartbeat(_Worker):
    """Renews every lease and waiting ticket of the runtime in ONE round trip per interval."""

    name = "heartbeat"

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        self._interval = MAX_INTERVAL  # what the loop currently waits on (under _lock)
        self._last = time.monotonic()

    def register(self, ttl_ms: int) -> None:
        """The runtime gained a lease or ticket of ``ttl_ms``. The thread is woken to recompute
        its interval only when that TTL needs a shorter one (not on every acquire)."""
        wake = False
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._start()
            else:
                wake = renew_interval(ttl_ms) < self._interval
        if wake:
            self._wake.set()

    def loop_once(self) -> None:
        with self._lock:  # computed and published together: see register()
            interval = self.rt.interval()
            self._interval = interval
        beat_due = self._last + interval - time.monotonic()
        if beat_due > 0:
            if self._wake.wait(beat_due):
                self._wake.clear()
            return  # re-check: a registration may have shortened the interval
        self._last = time.monotonic()
        self.rt.beat()


class Withdrawer(_Worker):
    """Withdraws, in the background, the tickets (and gives back the leases granted to them) that
    an interrupted call could not withdraw by its deadline. A thread of its own: its retries wait
    on a Redis that does not answer, and must never delay a renewal."""

    name = "withdrawer"

    def register(self) -> None:
        """A withdrawal was deferred: start the thread, or wake it to try at once."""
        with self._lock:
            self._start()
        self._wake.set()

    def loop_once(self) -> None:
        nxt = self.rt.withdraw_due()
        wait = MAX_INTERVAL if nxt is None else max(0.0, nxt - time.monotonic())
        if self._wake.wait(wait):
            self._wake.clear()


class Watchdog(_Worker):
    """Marks a lease lost the moment its local validity runs out (see Lease.valid_until), even if
    the heartbeat thread is stuck waiting for a Redis that does not answer."""

    name = "watchdog"

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        self._until = 0.0  # monotonic instant the thread looks next (under _lock)

    def register(self, valid_until: float | None = None) -> None:
        """A lease valid until ``valid_until`` (monotonic) was added. The thread is woken only
        when it would look later than that (not on every acquire: a wake costs the caller)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._start()
                return
            wake = valid_until is None or self._until == 0.0 or valid_until < self._until
        if wake:
            self._wake.set()

    def loop_once(self) -> None:
        with self._lock:  # published before the scan: a lease added during it wakes us
            self._until = 0.0
        nxt = self.rt.expire_local()
        now = time.monotonic()
        wait = MAX_INTERVAL if nxt is None else max(0.0, nxt - now) + 0.001
        with self._lock:
            self._until = now + wait
        if self._wake.wait(wait):
            self._wake.clear()


_RUNTIMES: dict[tuple[str, str], Runtime] = {}
_RUNTIMES_LOCK = threading.Lock()


def runtime_for(url: str, namespace: str, op_timeout: float = DEFAULT_OP_TIMEOUT) -> Runtime:
    key = (url, namespace)
    rt = _RUNTIMES.get(key)
    if rt is not None and rt.pid == os.getpid() and not rt.closed:
        return rt
    with _RUNTIMES_LOCK:
        rt = _RUNTIMES.get(key)
        if rt is None or rt.pid != os.getpid() or rt.closed:
            rt = Runtime(url, namespace, op_timeout)
            _RUNTIMES[key] = rt
        return rt


def forget(rt: Runtime) -> None:
    with _RUNTIMES_LOCK:
        key = (rt.url, rt.namespace)
        if _RUNTIMES.get(key) is rt:
            del _RUNTIMES[key]


def live_runtimes() -> list[Runtime]:
    with _RUNTIMES_LOCK:
        return list(_RUNTIMES.values())


def _flush_at_exit() -> None:
    for rt in live_runtimes():
        if rt.pid == os.getpid() and not rt.closed:
            try:
                rt.flush_withdrawals()
            except Exception:
                pass


atexit.register(_flush_at_exit)


def _after_fork_in_child() -> None:
    # Inherited runtimes belong to the parent: forget them (their threads did not survive the fork).
    global _RUNTIMES_LOCK, _id_prefix, _id_count
    _id_prefix = secrets.token_hex(6)
    _id_count = itertools.count(1)
    _RUNTIMES_LOCK = threading.Lock()
    _RUNTIMES.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["Runtime", "Waiting", "live_runtimes", "new_id", "request_id", "runtime_for"]
