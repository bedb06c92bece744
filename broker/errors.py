"""Every exception slotkeeper raises derives from :class:`SlotkeeperError`.

Stdlib mixins let callers catch them the usual way: an :class:`AcquireTimeout` is a
``TimeoutError``, a bad name is a ``ValueError``.
"""

from __future__ import annotations


class SlotkeeperError(Exception):
    """Base of every slotkeeper error."""


class InvalidArgument(SlotkeeperError, ValueError):
    """A bad argument value (slots < 0, occupy < 1, bad timeout...)."""


class InvalidName(InvalidArgument):
    """A limit or namespace name that slotkeeper does not accept."""


class InvalidType(SlotkeeperError, TypeError):
    """An argument of the wrong type."""


class LimitNotFound(SlotkeeperError, LookupError):
    """The limit does not exist; the message names the command that creates it."""

    def __init__(self, name: str, namespace: str = "default") -> None:
        self.name = name
        self.namespace = namespace
        super().__init__(
            f"limit {name!r} does not exist: create it with `{self.create_command}`, "
            "or pass default_slots=N (auto-create) or strict=False (run unthrottled)"
        )

    @property
    def create_command(self) -> str:
        """The shell command that creates the missing limit."""
        ns = "" if self.namespace == "default" else f" --namespace {self.namespace}"
        return f"slotkeeper{ns} create {_quote(self.name)} --slots N"


class LimitExists(SlotkeeperError):
    """A create of a limit that already exists."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"limit {name!r} already exists (use `slotkeeper set` to change it)")


class LimitHeld(SlotkeeperError):
    """A delete of a limit that still has holders."""

    def __init__(self, name: str, used: int) -> None:
        self.name = name
        self.used = used
        super().__init__(
            f"limit {name!r} has {used} slot(s) in use: wait, or `slotkeeper rm --force` "
            "to revoke the leases first"
        )


class OccupyExceedsLimit(SlotkeeperError, ValueError):
    """``occupy`` is larger than the limit's slots: the request could never be granted."""

    def __init__(self, name: str, occupy: int, slots: int) -> None:
        self.name = name
        self.occupy = occupy
        self.slots = slots
        super().__init__(
            f"occupy={occupy} exceeds limit {name!r} of {slots} slot(s); it could never be granted"
        )


class QueueFull(SlotkeeperError):
    """The request would have been the (N+1)-th waiter of a limit with ``--max-waiters N``: it
    fails at once instead of waiting (backpressure)."""

    def __init__(self, name: str, max_waiters: int) -> None:
        self.name = name
        self.max_waiters = max_waiters
        super().__init__(
            f"limit {name!r} already has {max_waiters} waiter(s) (--max-waiters {max_waiters}): "
            "request rejected"
        )


class NoRate(SlotkeeperError, ValueError):
    """``rate_limit`` on a limit that has no rate."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"limit {name!r} has no rate: give it one (`slotkeeper set {_quote(name)} --rate N/s`) "
            "or use limit()"
        )


class AcquireTimeout(SlotkeeperError, TimeoutError):
    """No slot within the timeout."""


class LeaseLost(SlotkeeperError):
    """The lease expired or was revoked while held: others may have been admitted since."""

    def __init__(self, lease_id: str, names: tuple[str, ...] | list[str] = ()) -> None:
        self.lease_id = lease_id
        self.names = tuple(names)
        super().__init__(
            f"lease {lease_id} on {', '.join(self.names) or '?'} was lost "
            "(expired or revoked) before it was released"
        )


class BrokerUnavailable(SlotkeeperError, ConnectionError):
    """Redis could not be reached (after bounded retries)."""


class BrokerError(SlotkeeperError):
    """Redis answered with an error slotkeeper did not expect (e.g. garbage in its keys)."""


class PermissionDenied(BrokerError):
    """The Redis ACL user may not run a command slotkeeper needs (NOPERM)."""


class LimitUnreadable(SlotkeeperError):
    """A limit exists but its keys cannot be read (garbage in them); the message says what."""

    def __init__(self, name: str, problems: list[str] | tuple[str, ...] = ()) -> None:
        self.name = name
        self.problems = tuple(problems)
        detail = "; ".join(self.problems)
        super().__init__(f"limit {name!r} cannot be read" + (f": {detail}" if detail else ""))


def _quote(name: str) -> str:
    return name if name.replace(":", "").replace("-", "").replace("_", "").isalnum() else repr(name)


class UnsafeDirectory(SlotkeeperError, PermissionError):
    """The embedded broker's state or socket directory is not private to this user (owned by
    another user, or open to group/others, or a symlink): refusing to use it."""


class FunctionLibraryMissing(BrokerError):
    """The slotkeeper Redis Functions library is not loaded, and this Redis user may neither load
    it nor run scripts (the least-privilege ACL): an operator must load it."""


class FunctionLibraryMismatch(BrokerError):
    """Redis holds the slotkeeper function library of another slotkeeper version."""
