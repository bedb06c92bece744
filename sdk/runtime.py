"""Per-process machinery of one (URL, namespace): the broker connection, ONE heartbeat thread that
renews every lease and waiting ticket of the process there in one round trip per interval (a second
Redis gets its own, so a hung server cannot starve another's renewals), and ONE listener thread that
receives grant notifications (pub/sub) and wakes the waiting threads or tasks at once.

A forked child gets fresh runtimes (new connections, no leases, no threads): it never renews or
releases its parent's leases.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import secrets
import threading
import time

import redis

from slotkeeper.broker.client import Broker
from slotkeeper.broker.errors import SlotkeeperError
from slotkeeper.broker.records import parse_wakeup
from slotkeeper.lease import Lease

log = logging.getLogger("slotkeeper")

LISTEN_POLL = 1.0       # listener loop tick (s)
MIN_INTERVAL = 0.05     # heartbeat interval bounds (s)
MAX_INTERVAL = 10.0


def renew_interval(ttl_ms: int) -> float:
    """Heartbeat period for a lease or ticket of ``ttl_ms``: a third of its TTL, bounded."""
    return min(MAX_INTERVAL, max(MIN_INTERVAL, ttl_ms / 3000.0))
EARLY_MAX = 1000        # notifications kept for tickets not registered yet


def new_id() -> str:
    return secrets.token_hex(8)


class Waiting:
    """A waiting ticket of this process: notifications land here."""

    def __init__(self, ticket_id: str, names: tuple[str, ...], ttl_ms: int) -> None:
        self.id = ticket_id
        self.names = names
        self.ttl_ms = ttl_ms
        self._msgs: collections.deque[str] = collections.deque()
        self._event = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aevent: asyncio.Event | None = None

    def bind_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._aevent = asyncio.Event()

    def deliver(self, msg: str) -> None:
        self._msgs.append(msg)
        self._event.set()
        if self._loop is not None and self._aevent is not None:
            try:
                self._loop.call_soon_threadsafe(self._aevent.set)
            except RuntimeError:
                pass  # loop closed

    def _take(self) -> str | None:
        self._event.clear()
        if self._aevent is not None:
            self._aevent.clear()
        if not self._msgs:
            return None
        # a grant or rejection outranks a retry hint
        msgs = list(self._msgs)
        self._msgs.clear()
        for m in msgs:
            if parse_wakeup(m).kind != "r":  # a malformed message is only a nudge
                return m
        return msgs[-1]

    def wait(self, timeout: float) -> str | None:
        if not self._msgs:
            self._event.wait(max(0.0, timeout))
        return self._take()

    async def await_msg(self, timeout: float) -> str | None:
        assert self._aevent is not None
        if not self._msgs:
            try:
                await asyncio.wait_for(self._aevent.wait(), max(0.0, timeout))
            except TimeoutError:
                pass
        return self._take()


class Runtime:
    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        self.pid = os.getpid()
        self.broker = Broker.from_url(url, namespace)
        self.client_id = new_id()
        self.channel = self.broker.keys.wake_channel(self.client_id)
        self._lock = threading.Lock()
        self._leases: dict[str, Lease] = {}
        self._waiting: dict[str, Waiting] = {}
        # notifications that arrived before their ticket was registered (a grant can be published
        # before the QUEUED reply of the same ticket has been read): handed over by add_waiting
        self._early: dict[str, str] = {}
        self._last_ok = time.monotonic()
        self._heartbeat = Heartbeat(self)
        self._listener: threading.Thread | None = None
        self._subscribed = threading.Event()
        self._closed = False
        self._hb_down = False

    # -- registry -----------------------------------------------------------------------------

    def add_lease(self, lease: Lease) -> None:
        with self._lock:
            self._leases[lease.id] = lease
        self._ensure_heartbeat(lease.ttl_ms)

    def drop_lease(self, lease: Lease) -> None:
        with self._lock:
            self._leases.pop(lease.id, None)

    def add_waiting(self, w: Waiting) -> None:
        with self._lock:
            self._waiting[w.id] = w
            early = self._early.pop(w.id, None)
        if early is not None:
            w.deliver(early)
        self._ensure_heartbeat(w.ttl_ms)

    def drop_waiting(self, w: Waiting) -> None:
        with self._lock:
            self._waiting.pop(w.id, None)
            self._early.pop(w.id, None)

    def held(self) -> list[Lease]:
        with self._lock:
            return list(self._leases.values())

    # -- operations ---------------------------------------------------------------------------

    def release(self, lease: Lease) -> bool:
        self.drop_lease(lease)
        return self.broker.release(lease.names, lease.id)

    def renew_now(self, lease: Lease) -> bool:
        res = self.broker.heartbeat([(lease.id, lease.names, lease.ttl_ms)], [])
        if lease.id in res.lost_leases:
            self.drop_lease(lease)
            lease._mark_lost()
            return False
        lease._renewed(res.now_ms + lease.ttl_ms)
        return True

    # -- heartbeat ----------------------------------------------------------------------------

    def _ensure_heartbeat(self, ttl_ms: int | None = None) -> None:
        self._heartbeat.register(ttl_ms)

    def interval(self) -> float:
        """Heartbeat period this runtime needs: a third of its shortest TTL (bounded)."""
        with self._lock:
            ttls = [x.ttl_ms for x in self._leases.values()] + [
                w.ttl_ms for w in self._waiting.values()]
        if not ttls:
            return MAX_INTERVAL
        return renew_interval(min(ttls))

    def beat(self) -> None:
        """One heartbeat round trip for everything this process holds or awaits."""
        with self._lock:
            leases = list(self._leases.values())
            waiting = list(self._waiting.values())
        if not leases and not waiting:
            return
        started = time.monotonic()
        try:
            res = self.broker.heartbeat(
                [(x.id, x.names, x.ttl_ms) for x in leases],
                [(w.id, w.names, w.ttl_ms) for w in waiting])
        except SlotkeeperError as exc:
            if not self._hb_down:
                log.warning("slotkeeper: heartbeat failed (%s); retrying", exc)
                self._hb_down = True
            # Without a renewal for a whole TTL we can no longer claim to hold anything.
            silent = time.monotonic() - self._last_ok
            for x in leases:
                if silent > x.ttl:
                    self.drop_lease(x)
                    x._mark_lost()
            return
        if self._hb_down:
            log.warning("slotkeeper: heartbeat recovered")
            self._hb_down = False
        self._last_ok = started
        lost = set(res.lost_leases)
        for x in leases:
            if x.id in lost:
                self.drop_lease(x)
                x._mark_lost()
            else:
                x._renewed(res.now_ms + x.ttl_ms)
        for tid in res.lost_tickets:
            w = self._waiting.get(tid)
            if w is not None:
                w.deliver("lost")
        for tid in res.granted_tickets:
            w = self._waiting.get(tid)
            if w is not None:
                w.deliver("r")

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
            except (redis.RedisError, OSError, ValueError) as exc:
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
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
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

    def close(self) -> None:
        self._closed = True


class Heartbeat:
    """The heartbeat thread of one runtime (one Redis namespace of this process): renews every lease
    and waiting ticket of the process there in ONE round trip per interval. A runtime has its own
    thread so that an unreachable Redis cannot starve the renewals of another."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._interval = MAX_INTERVAL  # what the loop currently waits on (under _lock)

    def register(self, ttl_ms: int | None = None) -> None:
        """The runtime gained a lease or ticket of ``ttl_ms``. The thread is woken to recompute
        its interval only when that TTL needs a shorter one (not on every acquire)."""
        wake = ttl_ms is None
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name=f"slotkeeper-heartbeat-{self.rt.namespace}",
                    daemon=True)
                self._thread.start()
            elif ttl_ms is not None:
                wake = renew_interval(ttl_ms) < self._interval
        if wake:
            self._wake.set()  # a new, shorter TTL: recompute the interval now

    def _loop(self) -> None:
        last = time.monotonic()
        while os.getpid() == self.pid and not self.rt._closed:
            with self._lock:  # computed and published together: see register()
                interval = self.rt.interval()
                self._interval = interval
            due = last + interval - time.monotonic()
            if due > 0:
                if self._wake.wait(due):
                    self._wake.clear()
                continue  # re-check: a registration may have shortened the interval
            last = time.monotonic()
            try:
                self.rt.beat()
            except Exception:
                log.exception("slotkeeper: heartbeat round failed")


_RUNTIMES: dict[tuple[str, str], Runtime] = {}
_RUNTIMES_LOCK = threading.Lock()


def runtime_for(url: str, namespace: str) -> Runtime:
    key = (url, namespace)
    rt = _RUNTIMES.get(key)
    if rt is not None and rt.pid == os.getpid():
        return rt
    with _RUNTIMES_LOCK:
        rt = _RUNTIMES.get(key)
        if rt is None or rt.pid != os.getpid():
            rt = Runtime(url, namespace)
            _RUNTIMES[key] = rt
        return rt


def _after_fork_in_child() -> None:
    # Inherited runtimes belong to the parent: forget them (their threads did not survive the fork).
    global _RUNTIMES_LOCK
    _RUNTIMES_LOCK = threading.Lock()
    _RUNTIMES.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["Runtime", "Waiting", "new_id", "runtime_for"]
