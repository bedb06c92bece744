"""A held lease: slots of one or more limits, renewed in the background by the process heartbeat."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slotkeeper.runtime import Runtime

log = logging.getLogger("slotkeeper")


class Lease:
    """Slots held on ``names``.

    ``lost`` turns True when the broker says the lease expired or was revoked, or — without asking
    anyone — once this process's monotonic clock passes ``valid_until``: the send time of the last
    round trip that renewed (or granted) the lease plus its TTL. After that instant Redis may have
    expired it and admitted someone else, so the holder stops trusting it (Chubby's rule).
    ``on_lost`` is then called once, on a thread of its own (a slow or failing callback never
    delays a renewal or a wake-up)."""

    def __init__(self, runtime: Runtime | None, lease_id: str, names: tuple[str, ...], occupy: int,
                 token: int, expires_ms: int, ttl_ms: int,
                 on_lost: Callable[[Lease], None] | None = None,
                 granted_after: float | None = None) -> None:
        self.id = lease_id
        self.names = names
        self.occupy = occupy
        self.token = token
        self.ttl = ttl_ms / 1000.0
        self._expires_ms = expires_ms
        self._runtime = runtime
        self._pid = os.getpid()
        self._on_lost = on_lost
        self._lost = False  # (a flag, not an Event: nobody waits on it, and it is made per lease)
        self._released = False
        self._releasing = False  # its release is under way: it stays renewed until that is through
        self._span: Any = None  # the hold span (slotkeeper.tracing), when tracing is on
        basis = time.monotonic() if granted_after is None else granted_after
        self._valid_until = basis + self.ttl if runtime is not None else float("inf")

    @property
    def ttl_ms(self) -> int:
        return int(self.ttl * 1000)

    @property
    def expires_at(self) -> float:
        """Expiry as a Unix timestamp on the Redis server's clock (moves forward on renewal)."""
        return self._expires_ms / 1000.0

    @property
    def valid_until(self) -> float:
        """``time.monotonic()`` instant after which this process no longer trusts the lease."""
        return self._valid_until

    @property
    def lost(self) -> bool:
        if self._lost:
            return True
        return not self._released and time.monotonic() >= self._valid_until

    @property
    def released(self) -> bool:
        return self._released

    @property
    def throttled(self) -> bool:
        """False for the stand-in lease of an unknown limit run with strict=False."""
        return self._runtime is not None

    def _renewed(self, expires_ms: int, sent_at: float) -> None:
        """A renewal sent at local monotonic ``sent_at`` succeeded."""
        self._expires_ms = expires_ms
        self._valid_until = max(self._valid_until, sent_at + self.ttl)

    def _mark_lost(self) -> None:
        if self._lost or self._released:
            return
        self._lost = True
        self._end_span("lost")
        log.warning("slotkeeper: lease %s on %s lost (expired or revoked)", self.id,
                    ", ".join(self.names))
        if self._on_lost is not None:
            threading.Thread(target=self._call_on_lost, name=f"slotkeeper-on-lost-{self.id}",
                             daemon=True).start()

    def _call_on_lost(self) -> None:
        assert self._on_lost is not None
        try:
            self._on_lost(self)
        except Exception:
            log.exception("slotkeeper: on_lost callback failed")

    def _needs_release(self) -> bool:
        """True if a release round trip is needed (else the outcome is already known)."""
        if self._runtime is None or self._released:
            self._released = True
            return False
        return os.getpid() == self._pid  # a forked child never touches its parent's leases

    def _released_as(self, ok: bool) -> bool:
        # Redis's word decides, unless the holder was already told the lease was lost.
        held = ok and not self._lost
        self._released = True
        if not held:
            self._lost = True
        self._end_span("released" if held else "lost")
        return held

    def _end_span(self, outcome: str) -> None:
        span, self._span = self._span, None
        if span is not None:
            from slotkeeper.tracing import end_hold

            end_hold(span, outcome)

    def _known_outcome(self) -> bool:
        return self._released and not self._lost

    def release(self) -> bool:
        """Give the slots back. True if they were held until now; False if the lease was lost
        (nothing that belongs to anyone else is freed). Idempotent; never raises LeaseLost."""
        if not self._needs_release():
            return self._known_outcome()
        assert self._runtime is not None
        try:
            ok = self._runtime.release(self)
        except BaseException:
            self._released_as(False)  # nobody can say it was released: no longer trusted
            raise
        return self._released_as(ok)

    async def release_async(self) -> bool:
        """:meth:`release` for asyncio code (never blocks the event loop)."""
        if not self._needs_release():
            return self._known_outcome()
        assert self._runtime is not None
        try:
            ok = await self._runtime.release_async(self)
        except BaseException:
            self._released_as(False)
            raise
        return self._released_as(ok)

    def settle(self, units: int) -> bool:
        """Correct the rate units this lease took on entry (``occupy`` of each named limit with a
        rate) to ``units``, e.g. the true cost known only afterwards. False if its grant has left
        every window already (or no limit has a rate)."""
        if self._runtime is None:
            return False
        taken = getattr(self, "_units", self.occupy)
        ok: bool = self._runtime.broker.settle(self.names, self.id, taken, units)
        if ok:
            self._units = units
        return ok

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
