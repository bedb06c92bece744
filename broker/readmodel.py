"""The read model: what every limit of a namespace looks like right now, read from Redis.

One reader feeds every view: ``slotkeeper ls``/``show``/``top`` (cli/render_text.py and
broker/render_json.py), the Prometheus collector (broker/collector.py), the daemon's status page
(broker/render_html.py) and its JSON API (broker/httpserver.py). They never disagree because they
read the same objects.

Unreadable entries (a non-number field, a record that is not msgpack, a key of the wrong type) are
reported as *problems* and never stop the others from being read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import redis

from slotkeeper.broker import protocol as P
from slotkeeper.broker.client import Broker
from slotkeeper.broker.connection import redact
from slotkeeper.broker.errors import (
    BrokerError,
    BrokerUnavailable,
    InvalidArgument,
    InvalidType,
    LimitNotFound,
    LimitUnreadable,
    SlotkeeperError,
)
from slotkeeper.broker.events import Event
from slotkeeper.broker.keys import WAIT_BUCKETS_MS, check_limit_name, check_name
from slotkeeper.broker.records import Counters, Snapshot
from slotkeeper.broker.waitreasons import WaitReason, blocking_reason

log = logging.getLogger("slotkeeper.readmodel")

SAMPLE = 1000  # holders/waiters read per limit; beyond that, leases are counted in chunks
COUNT_CHUNK = 5000
EVENT_PAGE = 1000
BUSIEST_OF = 20  # recently active keys of a template looked at for its busiest


@dataclass(frozen=True)
class LimitStats:
    """What one limit looks like right now (``snapshot`` is None when it could not be read;
    ``failure`` then says why, as the exception that was raised)."""

    name: str
    snapshot: Snapshot | None
    leases: int = 0
    waiters: int = 0
    problems: tuple[str, ...] = ()
    error: str | None = None
    failure: SlotkeeperError | None = field(default=None, compare=False, repr=False)
    config_damaged: bool = False  # a config field is unreadable: `set NAME --create` repairs it

    @property
    def ok(self) -> bool:
        return self.snapshot is not None

    @property
    def missing(self) -> bool:
        """The limit does not exist (it was deleted after it was listed, or never created)."""
        return isinstance(self.failure, LimitNotFound)

    @property
    def problem_count(self) -> int:
        return len(self.problems) + (1 if self.error else 0)

    def messages(self) -> list[str]:
        return [*self.problems, *([self.error] if self.error else [])]


def _text(v: object) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _count_live_leases(broker: Broker, name: str, now_ms: int) -> int:
    """Live lease ids of a limit (holder entries ``id#2``.. are extra slots of one lease)."""
    key = broker.keys.limit(name)[1]
    n, offset = 0, 0
    try:
        while True:
            chunk = broker.redis.zrange(
                key, f"({now_ms}", "+inf", byscore=True, offset=offset, num=COUNT_CHUNK
            )
            n += sum(1 for m in chunk if "#" not in _text(m))
            if len(chunk) < COUNT_CHUNK:
                return n
            offset += COUNT_CHUNK
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BrokerUnavailable(f"Redis at {broker.url_redacted}: {redact(str(exc))}") from exc
    except redis.RedisError as exc:
        raise BrokerError(f"Redis error: {redact(str(exc))}") from exc


def read_limit(broker: Broker, name: str, sample: int = SAMPLE, count: bool = True) -> LimitStats:
    """Read one limit; a limit that cannot be read comes back with ``error`` and ``failure`` set.

    ``count=False`` skips counting leases beyond the sample (config-only readers).
    Raises only BrokerUnavailable (Redis unreachable: nothing can be read)."""
    try:
        check_limit_name(name)
        snap = broker.snapshot(name, max_items=sample)
        if snap.used <= sample or not count:  # the holder list is complete
            leases = len(snap.holders)
        else:
            leases = _count_live_leases(broker, name, snap.now_ms)
        if snap.n_waiters <= sample:
            waiters = sum(1 for w in snap.waiters if w.garbage or w.expires_ms > snap.now_ms)
        else:
            waiters = snap.n_waiters
        return LimitStats(
            name,
            snap,
            leases,
            waiters,
            tuple(snap.problems),
            config_damaged=bool(snap.config_problems),
        )
    except BrokerUnavailable:
        raise
    except Exception as raised:  # never lets one unreadable limit stop the others
        exc = (
            raised
            if isinstance(raised, SlotkeeperError)
            else BrokerError(f"{type(raised).__name__}: {redact(str(raised))[:200]}")
        )
        msg = str(exc).split(" script: ", 1)[0]  # drop Redis's script sha / line noise
        if f"{name!r}" not in msg:
            msg = f"limit {name!r}: {msg}"
        return LimitStats(name, None, error=f"{msg} (unreadable)", failure=exc)


def read_limits(broker: Broker, sample: int = SAMPLE, count: bool = True) -> list[LimitStats]:
    return [read_limit(broker, n, sample, count) for n in broker.list_limits()]


class ReadModel:
    """The one reader behind every view of a namespace (CLI, collector, page, JSON API)."""

    def __init__(self, broker: Broker, sample: int = SAMPLE) -> None:
        self.broker = broker
        self.sample = sample

    @property
    def namespace(self) -> str:
        return self.broker.namespace

    def limits(self, count: bool = True) -> list[LimitStats]:
        return read_limits(self.broker, self.sample, count)

    def limit(self, name: str, sample: int | None = None) -> LimitStats:
        """One limit, readable or not (see :attr:`LimitStats.failure`)."""
        return read_limit(self.broker, name, self.sample if sample is None else sample)

    def readable_limit(self, name: str, sample: int | None = None) -> LimitStats:
        """One limit that could be read; raises LimitNotFound or LimitUnreadable otherwise."""
        return ensure_readable(self.limit(name, sample), self.namespace)

    def busiest_template_keys(
        self, stats: list[LimitStats], n: int = 3
    ) -> dict[str, list[tuple[str, int]]]:
        """Per template among ``stats``: up to ``n`` of its keys with the most slots in use
        (among its BUSIEST_OF most recently active ones), busiest first."""
        out: dict[str, list[tuple[str, int]]] = {}
        for st in stats:
            if st.snapshot is None or not st.snapshot.config.is_template:
                continue
            keys = []
            for key, _ in self.broker.template_keys(st.name, BUSIEST_OF):
                try:
                    keys.append((key, int(self.broker.snapshot(key, 1).used)))
                except LimitNotFound:
                    continue  # removed meanwhile
            keys.sort(key=lambda x: -x[1])
            out[st.name] = keys[:n]
        return out

    def wait_reason(self, names: Sequence[str], ticket_id: str) -> tuple[int, WaitReason] | None:
        """(position, reason) of a waiting request across all its limits; None if no longer
        queued (granted, withdrawn, or beyond the sample)."""
        snaps = [self.broker.snapshot(n, max_items=self.sample) for n in names]
        return blocking_reason(snaps, ticket_id)

    # -- audit events ---------------------------------------------------------------------------

    def events(
        self, limit: str | None = None, since_s: float | None = None, count: int = 100
    ) -> list[Event]:
        """The newest ``count`` events (oldest first), of one limit and/or of the last
        ``since_s`` seconds (by the server's clock). Scans back in pages, bounded by the cap."""
        if limit is not None:
            check_name(limit)
        oldest = "-"
        if since_s is not None:
            oldest = str(max(0, self.broker.server_time_ms() - int(since_s * 1000)))
        out: list[Event] = []
        newest = "+"
        while len(out) < count:
            page = self.broker.transport.run(
                P.events_range(self.broker.keys, newest, oldest, EVENT_PAGE)
            )
            out += [e for e in page if limit is None or limit in e.names]
            if len(page) < EVENT_PAGE:
                break
            newest = "(" + page[-1].id  # exclusive: continue below the last one seen
        return list(reversed(out[:count]))

    def events_after(self, after_id: str, block_ms: int = 0) -> list[Event]:
        deadline = time.monotonic() + block_ms / 1000 + self.broker.transport.op_timeout
        return self.broker.transport.run(
            P.events_after(self.broker.keys, after_id, block_ms), deadline
        )

    def last_event_id(self) -> str:
        last = self.broker.transport.run(P.events_range(self.broker.keys, count=1))
        return last[0].id if last else "0-0"

    def event_settings(self) -> tuple[bool, int]:
        return self.broker.transport.run(P.event_settings(self.broker.keys))

    def set_event_settings(self, enabled: bool | None, cap: int | None) -> tuple[bool, int]:
        self.broker.transport.run(P.set_event_settings(self.broker.keys, enabled, cap))
        return self.event_settings()


def ensure_readable(st: LimitStats, namespace: str) -> LimitStats:
    """``st`` if it was read; else raise what kept it from being read, by type."""
    if st.snapshot is not None:
        return st
    if isinstance(st.failure, LimitNotFound):
        raise LimitNotFound(st.name, namespace) from st.failure
    if isinstance(st.failure, InvalidArgument | InvalidType):  # a bad name, not a bad limit
        raise st.failure
    raise LimitUnreadable(st.name, st.messages()) from st.failure


def wait_quantile(counters: Counters, q: float) -> float | None:
    """The q-quantile of wait time (seconds) estimated from the histogram, like PromQL's
    ``histogram_quantile`` (linear within a bucket; the +Inf bucket reports its lower bound)."""
    buckets = counters.wait_buckets
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0.0
    lower = 0.0
    for i, n in enumerate(buckets):
        upper = WAIT_BUCKETS_MS[i] / 1000.0 if i < len(WAIT_BUCKETS_MS) else None
        if n > 0 and seen + n >= rank:
            if upper is None:
                return lower
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
        if upper is not None:
            lower = upper
    return lower


class ProblemLog:
    """Logs each unreadable entry once while it persists (not once per pass or scrape)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or log
        self._lock = threading.Lock()
        self._seen: dict[str, set[str]] = {}

    def report(self, limit: str, messages: Iterable[str]) -> None:
        now = set(messages)
        with self._lock:
            before = self._seen.get(limit, set())
            for m in sorted(now - before):
                self._log.warning("problem: %s", m)
            for m in sorted(before - now):
                self._log.info("resolved: %s", m)
            if now:
                self._seen[limit] = now
            else:
                self._seen.pop(limit, None)

    def forget_missing(self, limits: Iterable[str]) -> None:
        keep = set(limits)
        with self._lock:
            for name in [n for n in self._seen if n not in keep]:
                del self._seen[name]

    def current(self) -> dict[str, list[str]]:
        with self._lock:
            return {k: sorted(v) for k, v in self._seen.items()}
