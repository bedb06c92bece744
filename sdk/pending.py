"""A request that is waiting for its slots: where it stands and why.

``Limiter.acquire(..., on_waiting=fn)`` (also ``limit(..., on_waiting=fn)``) calls ``fn`` with a
:class:`PendingRequest` when the request joins the queue, so code that wants to report progress
can read its position and the reason it waits while the acquire blocks elsewhere. A wait that
passes ``slow_wait`` seconds (default 10, on the Limiter or per call; 0 turns it off) logs ONE
INFO line on the ``slotkeeper`` logger: names, position, reason, holders.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from slotkeeper.broker.client import Broker
from slotkeeper.broker.errors import InvalidArgument, InvalidType, SlotkeeperError
from slotkeeper.broker.readmodel import ReadModel
from slotkeeper.broker.records import Snapshot
from slotkeeper.broker.waitreasons import WaitReason, blocking_reason

log = logging.getLogger("slotkeeper")

DEFAULT_SLOW_WAIT = 10.0


def check_slow_wait(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise InvalidType(f"slow_wait must be a number of seconds, not {type(v).__name__}")
    if not (v == v) or v < 0:
        raise InvalidArgument(f"slow_wait must be >= 0 (0: never log), got {v}")
    return float(v)


class PendingRequest:
    """A waiting acquire: ``names``, ``occupy``, ``priority``, ``label`` like the lease it will
    become; ``position`` (1 = next in line, in the first of its queues, as of the last answer
    from the broker), ``position_at_entry``, ``waited`` seconds, and :meth:`reason`."""

    def __init__(self, broker: Broker, names: tuple[str, ...], occupy: int, priority: int,
                 label: str) -> None:  # fmt: skip
        self._broker = broker
        self.names = names
        self.occupy = occupy
        self.priority = priority
        self.label = label
        self.ticket_id = ""
        self.position: int | None = None
        self.position_at_entry: int | None = None
        self.started = time.monotonic()
        self.granted = False
        self._lock = threading.Lock()

    @property
    def waited(self) -> float:
        """Seconds since the acquire started."""
        return time.monotonic() - self.started

    @property
    def waiting(self) -> bool:
        return self.position is not None and not self.granted

    def reason(self) -> WaitReason | None:
        """Why it waits now (reads the snapshots of its limits: one script call per limit);
        None once it is no longer queued. Also refreshes :attr:`position`."""
        if not self.ticket_id or self.granted:
            return None
        return self._found(ReadModel(self._broker).wait_reason(self.names, self.ticket_id))

    def _found(self, found: tuple[int, WaitReason] | None) -> WaitReason | None:
        if found is None:
            return None
        pos, why = found
        with self._lock:
            if not self.granted:
                self.position = pos
        return why

    def describe(self) -> str:
        """One line: names, position, reason, holders (what the slow-wait log line says)."""
        try:
            return self.line(self.reason())
        except SlotkeeperError as exc:
            return self.line(None, exc)

    def line(self, why: WaitReason | None, error: Exception | None = None) -> str:
        head = (
            f"waiting {self.waited:.1f} s for {', '.join(self.names)}"
            f" (occupy {self.occupy}"
            + (f", priority {self.priority}" if self.priority else "")
            + (f", label {self.label!r}" if self.label else "")
            + ")"
        )
        if error is not None:
            return f"{head}: position {self.position}; reason unknown ({error})"
        if why is None:
            return f"{head}: position {self.position}"
        return f"{head}: position {self.position} on {why.limit}; {why.text}"

    def __repr__(self) -> str:
        state = "granted" if self.granted else f"position {self.position}"
        return f"<PendingRequest {self.ticket_id} {list(self.names)} occupy={self.occupy} {state}>"

    # -- called by the acquire flow ---------------------------------------------------------

    def _queued(self, ticket_id: str, position: int) -> None:
        with self._lock:
            self.ticket_id = ticket_id
            self.position = position
            if self.position_at_entry is None:
                self.position_at_entry = position

    def _granted(self) -> None:
        with self._lock:
            self.granted = True


class SlowWaitLog:
    """Logs one INFO line when a wait passes ``threshold`` seconds (0: never). The acquire flow
    reads the snapshots itself (through its own transport, so the asyncio path never blocks) and
    hands them to :meth:`log`."""

    def __init__(self, pending: PendingRequest, threshold: float) -> None:
        self.pending = pending
        self.threshold = threshold
        self.done = threshold <= 0

    def pause(self, pause: float) -> float:
        """``pause`` shortened so the waiter wakes when the threshold passes."""
        if self.done:
            return pause
        return min(pause, max(0.0, self.threshold - self.pending.waited) + 0.001)

    @property
    def due(self) -> bool:
        return not self.done and self.pending.waited >= self.threshold

    def log(self, snaps: list[Snapshot] | None, error: Exception | None = None) -> None:
        self.done = True
        why = None
        if snaps is not None:
            why = self.pending._found(blocking_reason(snaps, self.pending.ticket_id))
        log.info("slotkeeper: slow wait: %s", self.pending.line(why, error))


WaitingCallback = Callable[[PendingRequest], None]
