"""A held lease: slots of one or more limits, renewed in the background by the process heartbeat."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slotkeeper.runtime import Runtime

log = logging.getLogger("slotkeeper")


class Lease:
    """Slots held on ``names``. ``lost`` turns True when the broker says the lease expired or was
    revoked (others may have been admitted since); ``on_lost`` is then called once."""

    def __init__(self, runtime: Runtime | None, lease_id: str, names: tuple[str, ...], occupy: int,
                 token: int, expires_ms: int, ttl_ms: int,
                 on_lost: Callable[[Lease], None] | None = None) -> None:
        self.id = lease_id
        self.names = names
        self.occupy = occupy
        self.token = token
        self.ttl = ttl_ms / 1000.0
        self._expires_ms = expires_ms
        self._runtime = runtime
        self._pid = os.getpid()
        self._on_lost = on_lost
        self._lost = threading.Event()
        self._released = False
        self._span: Any = None  # the hold span (slotkeeper.tracing), when tracing is on

    @property
    def ttl_ms(self) -> int:
        return int(self.ttl * 1000)

    @property
    def expires_at(self) -> float:
        """Expiry as a Unix timestamp on the Redis server's clock (moves forward on renewal)."""
        return self._expires_ms / 1000.0

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    @property
    def released(self) -> bool:
        return self._released

    @property
    def throttled(self) -> bool:
        """False for the stand-in lease of an unknown limit run with strict=False."""
        return self._runtime is not None

    def _renewed(self, expires_ms: int) -> None:
        self._expires_ms = expires_ms

    def _mark_lost(self) -> None:
        if self._lost.is_set() or self._released:
            return
        self._lost.set()
        self._end_span("lost")
        log.warning("slotkeeper: lease %s on %s lost (expired or revoked)", self.id,
                    ", ".join(self.names))
        if self._on_lost is not None:
            try:
                self._on_lost(self)
            except Exception:
                log.exception("slotkeeper: on_lost callback failed")

    def release(self) -> bool:
        """Give the slots back. True if they were held until now; False if the lease was lost
        (nothing that belongs to anyone else is freed). Idempotent; never raises LeaseLost."""
        if self._released or self._runtime is None:
            self._released = True
            return not self.lost
        if os.getpid() != self._pid:
            return False  # a forked child never touches its parent's leases
        self._released = True
        ok = self._runtime.release(self)
        if not ok:
            self._lost.set()
        self._end_span("released" if ok else "lost")
        return ok

    def _end_span(self, outcome: str) -> None:
        span, self._span = self._span, None
        if span is not None:
            from slotkeeper.tracing import end_hold

            end_hold(span, outcome)

    def renew(self) -> bool:
        """Renew now (the heartbeat does this by itself). False if the lease is lost."""
        if self._runtime is None:
            return True
        if self._released or self.lost or os.getpid() != self._pid:
            return False
        return self._runtime.renew_now(self)

    def __repr__(self) -> str:
        state = "lost" if self.lost else ("released" if self._released else "held")
        return (
            f"<Lease {self.id} {list(self.names)} occupy={self.occupy} token={self.token} {state}>"
        )
