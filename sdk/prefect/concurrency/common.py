"""What the sync and asyncio drop-ins share: argument mapping, errors, the acquire plan.

How Prefect 3's ``concurrency(...)`` arguments map onto slotkeeper:

* ``names``: one name or a list; an empty one does nothing (as in Prefect). ``{worker}`` and
  ``{host}`` resolve where the code runs (slotkeeper names).
* ``occupy``: slots taken of *every* named limit, atomically; more than a limit's slots raises
  :class:`OccupyTooLarge` at once (a ``ConcurrencySlotAcquisitionError``, as Prefect's 422).
* ``timeout_seconds``: ``None`` waits forever; on timeout
  :class:`AcquireConcurrencySlotTimeoutError` (a ``TimeoutError``, and Prefect's class of that
  name when Prefect is installed).
* ``max_retries``: Prefect re-polls its server after a 423 answer; slotkeeper waits in a FIFO queue
  and is woken by the release itself, so there is nothing to retry. ``max_retries=0`` keeps its
  meaning ("one attempt"): if the slots are not free at once,
  :class:`ConcurrencySlotAcquisitionError` is raised. Other values wait like ``None``.
* ``lease_duration``: the lease TTL in seconds (renewed in the background while the block runs;
  a killed holder's slots come back after at most this long).
* ``strict``: a missing limit raises :class:`ConcurrencyLimitMissing` (a
  ``ConcurrencySlotAcquisitionError`` and a ``slotkeeper.LimitNotFound``); with ``strict=False``
  (default) the missing names are skipped with a warning, as Prefect does, and the block runs
  holding the limits that do exist (unthrottled if none does).
* ``holder``: Prefect's ``ConcurrencyLeaseHolder`` (or a ``{"type": ..., "id": ...}`` dict, or a
  str) becomes the lease's holder label ``type:id`` (``slotkeeper show NAME``).
* ``rate_limit(names, occupy, timeout_seconds, strict)`` takes ``occupy`` units of every named
  limit's rate (``slotkeeper create api --rate 10/10s``), nothing to release; a limit without a
  rate raises :class:`ConcurrencySlotAcquisitionError`, as Prefect does for a limit without a
  slot decay. Missing limits, ``strict`` and timeouts behave as for ``concurrency``.
* ``raise_on_lease_renewal_failure`` (default: ``strict``): if the lease was lost while the block
  ran (expired or revoked), ``slotkeeper.LeaseLost`` is raised when the block exits. Prefect
  cancels the block at once instead; slotkeeper does not interrupt running code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from slotkeeper.broker.errors import (
    AcquireTimeout,
    InvalidType,
    LeaseLost,
    LimitNotFound,
    NoRate,
    OccupyExceedsLimit,
    SlotkeeperError,
)
from slotkeeper.lease import Lease
from slotkeeper.limiter import Limiter, get_limiter
from slotkeeper.naming import check_template, resolve

log = logging.getLogger("slotkeeper")

DEFAULT_LEASE = 300.0  # s: Prefect's default lease_duration


def _prefect_errors() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """Prefect's own error classes, when Prefect is installed (to subclass them)."""
    try:
        from prefect.concurrency.asyncio import (
            AcquireConcurrencySlotTimeoutError as PrefectTimeout,
        )
        from prefect.concurrency.asyncio import (
            ConcurrencySlotAcquisitionError as PrefectAcquisitionError,
        )
    except ImportError:  # no Prefect (or another version): slotkeeper's own classes only
        return (), ()
    return (PrefectAcquisitionError,), (PrefectTimeout,)


_ACQ_BASES, _TIMEOUT_BASES = _prefect_errors()


class ConcurrencySlotAcquisitionError(SlotkeeperError, *_ACQ_BASES):  # type: ignore[misc]
    """The slots could not be acquired (also Prefect's class of this name, if installed)."""


class ConcurrencyLimitMissing(ConcurrencySlotAcquisitionError, LimitNotFound):
    """``strict=True`` and a named limit does not exist."""


class OccupyTooLarge(ConcurrencySlotAcquisitionError, OccupyExceedsLimit):
    """``occupy`` is larger than a limit's slots (Prefect answers 422 for this)."""


class AcquireConcurrencySlotTimeoutError(AcquireTimeout, *_TIMEOUT_BASES):  # type: ignore[misc]
    """No slots within ``timeout_seconds`` (a ``TimeoutError``; also Prefect's class)."""


def check_names(names: object) -> tuple[str, ...]:
    """A str or a list of str, as Prefect accepts them."""
    if isinstance(names, str):
        return (names,) if names else ()
    if names is None:
        return ()
    if not isinstance(names, Sequence):
        raise InvalidType("names must be a str or a list of str")
    out = tuple(names)
    for n in out:
        if not isinstance(n, str):
            raise InvalidType(f"limit names must be str, not {type(n).__name__}")
    return out


def holder_label(holder: object) -> str | None:
    """Prefect's ``ConcurrencyLeaseHolder(type=..., id=...)``, a dict of those keys, or a str."""
    if holder is None:
        return None
    if isinstance(holder, str):
        return holder
    if isinstance(holder, dict):
        kind, ident = holder.get("type"), holder.get("id")
    else:
        kind, ident = getattr(holder, "type", None), getattr(holder, "id", None)
    if kind is None or ident is None:
        raise InvalidType("holder must have 'type' and 'id' (Prefect's ConcurrencyLeaseHolder)")
    return f"{kind}:{ident}"


@dataclass
class Plan:
    """One ``concurrency(...)`` call's request. ``attempt`` builds the keywords of an acquire;
    ``failed`` turns a slotkeeper error into Prefect's behaviour (and may drop a missing name)."""

    limiter: Limiter
    names: tuple[str, ...]  # resolved ({worker} -> this worker) where the code runs
    occupy: int
    timeout: float | None
    ttl: float
    strict: bool
    label: str | None
    raise_on_lost: bool
    one_attempt: bool = False  # max_retries=0: no slot free at once is an acquisition error

    @classmethod
    def make(
        cls,
        names: object,
        occupy: int,
        timeout_seconds: float | None,
        max_retries: int | None,
        lease_duration: float,
        strict: bool,
        holder: Any,
        raise_on_lease_renewal_failure: bool | None,
    ) -> Plan:
        if max_retries is not None and (
            isinstance(max_retries, bool) or not isinstance(max_retries, int)
        ):
            raise InvalidType("max_retries must be None or an int")
        one_attempt = max_retries is not None and max_retries <= 0
        timeout = 0.0 if one_attempt else timeout_seconds
        raise_on_lost = (
            strict if raise_on_lease_renewal_failure is None else raise_on_lease_renewal_failure
        )
        lim = get_limiter()
        return cls(
            limiter=lim,
            names=tuple(resolve(check_template(n), lim.worker) for n in check_names(names)),
            occupy=occupy,
            timeout=timeout,
            ttl=lease_duration,
            strict=bool(strict),
            label=holder_label(holder),
            raise_on_lost=bool(raise_on_lost),
            one_attempt=one_attempt,
        )

    def kwargs(self) -> dict[str, Any]:
        return dict(occupy=self.occupy, timeout=self.timeout, ttl=self.ttl, label=self.label)

    def failed(self, exc: SlotkeeperError, what: str = "concurrency") -> None:
        """Re-raise ``exc`` as Prefect would; or, for a missing limit with ``strict=False``,
        drop that name (warning once) so the caller retries with the rest."""
        if isinstance(exc, LimitNotFound) and exc.name in self.names:
            if self.strict:
                raise ConcurrencyLimitMissing(exc.name, exc.namespace) from exc
            log.warning(
                "%s limit %r does not exist - skipping it (strict=False); create it with "
                "`slotkeeper create %s %s`",
                what,
                exc.name,
                exc.name,
                "--rate N/P" if what == "rate" else "--slots N",
            )
            self.names = tuple(n for n in self.names if n != exc.name)
            return
        if isinstance(exc, NoRate):  # Prefect: 422, rate limiting needs a slot decay
            raise ConcurrencySlotAcquisitionError(
                f"{exc} (rate_limit() needs limits with a rate, as Prefect's need a slot decay)"
            ) from exc
        if isinstance(exc, OccupyExceedsLimit):
            raise OccupyTooLarge(exc.name, exc.occupy, exc.slots) from exc
        if isinstance(exc, AcquireTimeout):
            if self.one_attempt:
                raise ConcurrencySlotAcquisitionError(
                    f"Unable to acquire concurrency slots on {list(self.names)!r} "
                    "(max_retries=0 and no slot free)"
                ) from exc
            raise AcquireConcurrencySlotTimeoutError(
                f"Attempt to acquire concurrency slots timed out after {self.timeout:g} second(s)"
            ) from exc
        raise exc


def judge(lease: Lease, held: bool, failed: bool, raise_on_lost: bool) -> None:
    """After the release: ``LeaseLost`` if the lease was lost while the block ran (and it did
    not fail by itself), when ``raise_on_lease_renewal_failure`` asks for it."""
    if not held and lease.throttled and raise_on_lost and not failed:
        raise LeaseLost(lease.id, lease.names)


def finish(lease: Lease | None, failed: bool, raise_on_lost: bool) -> None:
    if lease is not None:
        judge(lease, lease.release(), failed, raise_on_lost)


async def finish_async(lease: Lease | None, failed: bool, raise_on_lost: bool) -> None:
    if lease is not None:
        judge(lease, await lease.release_async(), failed, raise_on_lost)


__all__ = [
    "AcquireConcurrencySlotTimeoutError",
    "ConcurrencyLimitMissing",
    "ConcurrencySlotAcquisitionError",
    "DEFAULT_LEASE",
    "OccupyTooLarge",
    "Plan",
    "check_names",
    "finish",
    "finish_async",
    "holder_label",
]
