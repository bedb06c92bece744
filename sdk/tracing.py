"""OpenTelemetry spans around acquire and hold, when the ``otel`` extra is installed.

``slotkeeper.acquire``: from the call to its outcome, with ``slotkeeper.names``, ``.occupy``,
``.namespace``, ``.position_at_entry`` (0: granted at once), ``.waited_ms`` and ``.outcome``
(granted, timeout, rejected, unthrottled, error); ``slotkeeper.hold``: from the grant to the release
(``.outcome`` released or lost), both children of the caller's current span, so waits show up in
the traces a service already has. Without opentelemetry installed nothing here does any work: the
acquire path checks one module constant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import trace as _otel
except ImportError:  # the extra is not installed: no spans, no cost
    _otel = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from slotkeeper.pending import PendingRequest

ENABLED = _otel is not None
TRACER_NAME = "slotkeeper"


def _tracer() -> Any:
    assert _otel is not None
    return _otel.get_tracer(TRACER_NAME)


def start_acquire(names: tuple[str, ...], occupy: int, namespace: str, label: str) -> Any:
    """The acquire span (None when tracing is off)."""
    if _otel is None:
        return None
    attrs: dict[str, Any] = {
        "slotkeeper.names": list(names),
        "slotkeeper.occupy": occupy,
        "slotkeeper.namespace": namespace,
    }
    if label:
        attrs["slotkeeper.label"] = label
    return _tracer().start_span("slotkeeper.acquire", attributes=attrs)


def end_acquire(span: Any, pending: PendingRequest, outcome: str,
                error: BaseException | None = None) -> None:  # fmt: skip
    if span is None or _otel is None:
        return
    span.set_attribute("slotkeeper.outcome", outcome)
    span.set_attribute("slotkeeper.waited_ms", round(pending.waited * 1000, 3))
    span.set_attribute("slotkeeper.position_at_entry", pending.position_at_entry or 0)
    if pending.ticket_id:
        span.set_attribute("slotkeeper.ticket_id", pending.ticket_id)
    if error is not None:
        span.record_exception(error)
        span.set_status(_otel.Status(_otel.StatusCode.ERROR, type(error).__name__))
    span.end()


def start_hold(lease_id: str, names: tuple[str, ...], occupy: int, token: int) -> Any:
    if _otel is None:
        return None
    return _tracer().start_span(
        "slotkeeper.hold",
        attributes={
            "slotkeeper.lease_id": lease_id,
            "slotkeeper.names": list(names),
            "slotkeeper.occupy": occupy,
            "slotkeeper.token": token,
        },
    )


def end_hold(span: Any, outcome: str) -> None:
    if span is None or _otel is None:
        return
    span.set_attribute("slotkeeper.outcome", outcome)
    if outcome == "lost":
        span.set_status(_otel.Status(_otel.StatusCode.ERROR, "lease lost"))
    span.end()
