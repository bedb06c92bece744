"""``apply -f`` on Prefect's global concurrency limits: migrate what a Prefect user already has.

Accepted as they come: ``prefect gcl ls --output json`` (a list), ``prefect gcl inspect NAME
--output json`` (one object), or the REST API's objects (``POST
/api/v2/concurrency_limits/filter``): each with ``name``, ``limit``, ``active`` (default true)
and ``slot_decay_per_second`` (default 0); other keys (``id``, ``created``, ``active_slots``,
``denied_slots``...) are ignored.

Mapping: ``name`` -> name, ``limit`` -> slots, ``active`` -> enabled (a disabled limit admits
everyone, as an inactive Prefect limit does), and ``slot_decay_per_second`` d > 0 (a Prefect rate
limit: N at once, then one every 1/d s) -> ``rate: N/Ps`` with P = N/d seconds rounded to whole
seconds (``limit=10, slot_decay_per_second=2`` -> ``10/5s``), which ``rate_limit`` then uses.
"""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

from slotkeeper.broker.errors import InvalidArgument
from slotkeeper.cli.spec import LimitSpec, parse

PREFECT_KEYS = frozenset({"name", "limit"})


def _is_gcl(item: object) -> bool:
    return isinstance(item, dict) and PREFECT_KEYS <= item.keys() and "slots" not in item


def prefect_limits(doc: object) -> list[dict[str, Any]] | None:
    """The Prefect limit objects in ``doc``, or None if ``doc`` is not in Prefect's shape."""
    if _is_gcl(doc):
        assert isinstance(doc, dict)
        return [doc]
    if isinstance(doc, list) and all(_is_gcl(i) for i in doc):  # `gcl ls` with none: []
        return list(doc)
    return None


def to_limit(item: dict[str, Any], where: str) -> dict[str, Any]:
    """One Prefect limit as an entry of apply's ``limits:`` list."""
    decay = item.get("slot_decay_per_second") or 0
    if isinstance(decay, bool) or not isinstance(decay, int | float) or math.isnan(decay):
        raise InvalidArgument(f"{where}: slot_decay_per_second must be a number")
    active = item.get("active", True)
    out = {"name": item["name"], "slots": item["limit"], "enabled": bool(active)}
    if decay > 0:
        out["rate"] = decay_rate(item["limit"], float(decay), where)
    return out


def decay_rate(limit: object, decay: float, where: str) -> str:
    """Prefect's bucket (``limit`` N at once, refilled at ``decay`` d per second) as a sliding
    window: N units per N/d seconds (whole seconds, at least 1; more units if N/d < 1 s)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidArgument(f"{where}: a decaying limit needs limit >= 1")
    period = max(1, round(limit / decay))
    units = max(limit, round(decay * period))
    return f"{units}/{period}s"


def read_limits_file(text: str, source: str = "<input>") -> list[LimitSpec]:
    """apply's input: Prefect's GCL JSON (converted) or slotkeeper's own file."""
    try:
        doc = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        doc = None  # not Prefect's JSON: parse() reports the error in slotkeeper's terms
    found = prefect_limits(doc)
    if found is None:
        return parse(text, source)
    limits = [to_limit(item, f"{source}: Prefect limit [{i}]") for i, item in enumerate(found)]
    return parse(json.dumps({"limits": limits}), f"{source} (Prefect global concurrency limits)")


__all__ = ["prefect_limits", "read_limits_file", "to_limit"]
