"""Audit events: what the scripts append to the namespace's capped stream ``sk:{ns}:events``.

Every grant, release, expiry, revoke, timeout, rejection and limit change is written by the script
that causes it (lua/_lib.lua ``emit``), so the record can never disagree with what happened. One
stream entry per event; its id is the server time in ms. Fields (short, like the lease records):

====  ==============================================================================
``k``  kind: grant, release, expire, revoke, timeout, reject, cancel, limit
``i``  lease or ticket id ('' for limit changes)
``n``  limit names, joined by newlines (a name is printable: it never holds one)
``o``  occupy (slots per limit)
``m``  holder metadata, msgpack ``{h host, p pid, w worker, l label}`` ('' if none)
``x``  detail: ms waited (grant), reason (reject), the change (limit)
====  ==============================================================================

The stream is capped (``XADD MAXLEN ~ cap``, default :data:`DEFAULT_CAP`) and can be switched off
per namespace (``slotkeeper events --disable``); both settings live in ``sk:{ns}:settings``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from slotkeeper.broker.errors import InvalidArgument

DEFAULT_CAP = 10_000
MAX_CAP = 10_000_000
KINDS = ("grant", "release", "expire", "revoke", "timeout", "reject", "cancel", "limit")


def check_cap(cap: object) -> int:
    if isinstance(cap, bool) or not isinstance(cap, int):
        raise InvalidArgument(f"the events cap must be an int, not {type(cap).__name__}")
    if not 1 <= cap <= MAX_CAP:
        raise InvalidArgument(f"the events cap must be between 1 and {MAX_CAP}, got {cap}")
    return cap


@dataclass(frozen=True)
class Event:
    id: str  # stream entry id: '<ms>-<seq>'
    time_ms: int
    kind: str
    lease_id: str
    names: tuple[str, ...]
    occupy: int
    host: str = ""
    pid: int = 0
    worker: str = ""
    label: str = ""
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time_ms / 1000.0,
            "kind": self.kind,
            "lease_id": self.lease_id,
            "names": list(self.names),
            "occupy": self.occupy,
            "host": self.host,
            "pid": self.pid,
            "worker": self.worker,
            "label": self.label,
            "detail": self.detail,
        }


def _s(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def parse_entry(entry_id: Any, fields: Any) -> Event:
    """One stream entry as an Event (garbage fields read as empty, never raise)."""
    eid = _s(entry_id)
    if isinstance(fields, dict):
        flat = {_s(k): v for k, v in fields.items()}
    else:
        items = list(fields or [])
        flat = {_s(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}
    meta: dict[str, Any] = {}
    raw = flat.get("m")
    if isinstance(raw, bytes) and raw:
        try:
            unpacked = msgpack.unpackb(raw, raw=False, strict_map_key=False)
            meta = unpacked if isinstance(unpacked, dict) else {}
        except Exception:
            meta = {}
    try:
        occupy = int(_s(flat.get("o", "0")) or 0)
    except ValueError:
        occupy = 0
    try:
        pid = int(meta.get("p") or 0)
    except (TypeError, ValueError):
        pid = 0
    names = _s(flat.get("n", ""))
    return Event(
        id=eid,
        time_ms=int(eid.split("-", 1)[0]) if eid.split("-", 1)[0].isdigit() else 0,
        kind=_s(flat.get("k", "?")),
        lease_id=_s(flat.get("i", "")),
        names=tuple(names.split("\n")) if names else (),
        occupy=occupy,
        host=_s(meta.get("h", "")),
        pid=pid,
        worker=_s(meta.get("w", "")),
        label=_s(meta.get("l", "")),
        detail=_s(flat.get("x", "")),
    )


def parse_entries(reply: Any) -> list[Event]:
    """XRANGE / XREVRANGE reply -> events."""
    return [parse_entry(eid, fields) for eid, fields in (reply or [])]


def parse_xread(reply: Any) -> list[Event]:
    """XREAD reply for one stream -> events (empty on timeout)."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        streams = list(reply.values())
        return parse_entries(streams[0][0] if streams and streams[0] else [])
    return parse_entries(reply[0][1])
