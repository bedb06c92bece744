"""Deadlines for synchronous Redis I/O.

A transport sets :data:`DEADLINE` (an absolute ``time.monotonic()`` value) around each call; the
connection classes below cap their connect timeout and every socket read and write by the time
left, so a frozen or unreachable Redis cannot hold a caller past its deadline whatever redis-py's
configured socket timeouts are. Outside a deadline they behave exactly like redis-py's own.
(The asyncio transport needs none of this: it bounds each call with ``asyncio.wait_for``.)
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any

from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

DEADLINE: ContextVar[float | None] = ContextVar("slotkeeper_deadline", default=None)
MIN_WAIT = 0.001  # a socket timeout of 0 would mean non-blocking: never go below this


def capped(default: float | None) -> float | None:
    """``default`` (a socket timeout in s, None = forever) capped by the current deadline."""
    end = DEADLINE.get()
    if end is None:
        return default
    left = max(MIN_WAIT, end - time.monotonic())
    return left if default is None else min(default, left)


class _DeadlineMixin:
    """Caps connect, send and read by :data:`DEADLINE` (see the module docstring)."""

    socket_timeout: float | None
    socket_connect_timeout: float | None
    _sock: Any

    def _connect(self) -> Any:
        configured = self.socket_connect_timeout
        self.socket_connect_timeout = capped(configured)
        try:
            return super()._connect()  # type: ignore[misc]
        finally:
            self.socket_connect_timeout = configured

    def _apply_deadline(self) -> None:
        sock = self._sock
        if sock is not None:
            sock.settimeout(capped(self.socket_timeout))

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if DEADLINE.get() is not None or getattr(self, "_sk_capped", False):
            self._apply_deadline()
            self._sk_capped = DEADLINE.get() is not None
        super().send_packed_command(command, check_health)  # type: ignore[misc]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        if DEADLINE.get() is not None:
            self._apply_deadline()
            self._sk_capped = True
        return super().read_response(*args, **kwargs)  # type: ignore[misc]


class DeadlineConnection(_DeadlineMixin, Connection):
    pass


class DeadlineSSLConnection(_DeadlineMixin, SSLConnection):
    pass


class DeadlineUnixConnection(_DeadlineMixin, UnixDomainSocketConnection):
    pass


class DeadlineSentinelConnection(_DeadlineMixin, SentinelManagedConnection):
    pass


class DeadlineSentinelSSLConnection(_DeadlineMixin, SentinelManagedSSLConnection):
    pass
