"""The declarative file of ``apply``/``export``: YAML or JSON.

    limits:
      - name: "gpu:gpu-1"
        slots: 2
        ttl: 30            # seconds; 0 or absent: the client's default
        enabled: true      # default true
        description: "..." # default ""
      - name: api
        rate: 600/min      # N/s, N/min, N/h; a limit needs slots, a rate, or both
        spread: false      # default false: one unit every period/N instead of bursts
        max_waiters: 100   # default: no cap (QueueFull beyond it)
      - name: "tenant:*"   # a template: per-key limits made on first use
        slots: 2
        total: 20          # templates only: cap on the sum over all keys
        idle_ttl: 1h       # templates only: keys go after this long idle (default 1h)

Fields a limit leaves out take these defaults: the file is the whole truth about what it lists.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import yaml

from slotkeeper.broker.errors import InvalidArgument, SlotkeeperError
from slotkeeper.broker.keys import check_limit_name, is_template
from slotkeeper.broker.protocol import check_max_waiters, check_slots, check_total, check_ttl
from slotkeeper.broker.rates import duration_text, parse_duration, parse_rate
from slotkeeper.broker.records import DEFAULT_IDLE_TTL, LimitConfig

FIELDS = (
    "name",
    "slots",
    "ttl",
    "enabled",
    "description",
    "rate",
    "spread",
    "max_waiters",
    "total",
    "idle_ttl",
)
OPTIONAL = ("rate", "spread", "max_waiters", "total", "idle_ttl")  # written only when set


@dataclass(frozen=True)
class LimitSpec:
    name: str
    slots: int | None
    ttl: float = 0.0
    enabled: bool = True
    description: str = ""
    rate: str | None = None  # canonical text, e.g. "600/min"
    spread: bool = False
    max_waiters: int | None = None
    total: int | None = None
    idle_ttl: float | None = None  # templates: seconds (None: the default, 1 h)

    @classmethod
    def from_config(cls, c: LimitConfig) -> LimitSpec:
        idle = c.idle_ttl_s if c.is_template and c.idle_ttl_s != DEFAULT_IDLE_TTL else None
        return cls(
            c.name,
            c.slots,
            c.ttl_s,
            c.enabled,
            c.description,
            str(c.rate) if c.rate else None,
            c.spread,
            c.max_waiters,
            c.total,
            idle,
        )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ttl"] = int(self.ttl) if float(self.ttl).is_integer() else self.ttl
        if self.slots is None:
            del d["slots"]
        if self.idle_ttl is not None:
            d["idle_ttl"] = duration_text(self.idle_ttl)
        for f in OPTIONAL:
            if d.get(f) in (None, False):
                d.pop(f, None)
        return d

    def diff(self, current: LimitSpec) -> list[tuple[str, Any, Any]]:
        """(field, old, new) for every field that differs."""
        out = []
        for f in FIELDS[1:]:
            old, new = getattr(current, f), getattr(self, f)
            if f == "ttl":
                if int(round(old * 1000)) == int(round(new * 1000)):
                    continue
            elif old == new:
                continue
            out.append((f, old, new))
        return out


def _where(i: int, name: Any = None) -> str:
    return f"limits[{i}]" + (f" ({name!r})" if isinstance(name, str) else "")


def parse(text: str, source: str = "<input>") -> list[LimitSpec]:
    """Parse and validate a whole file before anything is changed."""
    try:
        doc = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise InvalidArgument(
            f"{source}:{where} not valid YAML/JSON: {getattr(exc, 'problem', None) or exc}"
        ) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{source}: expected a mapping with a 'limits' list")
    extra = set(doc) - {"limits"}
    if extra:
        raise InvalidArgument(f"{source}: unknown top-level key(s): {', '.join(map(str, extra))}")
    items = doc.get("limits") or []
    if not isinstance(items, list):
        raise InvalidArgument(f"{source}: 'limits' must be a list")
    out: list[LimitSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidArgument(f"{source}: {_where(i)} must be a mapping")
        name = item.get("name")
        unknown = set(item) - set(FIELDS)
        if unknown:
            raise InvalidArgument(
                f"{source}: {_where(i, name)}: unknown field(s) "
                f"{', '.join(sorted(map(str, unknown)))}; allowed: "
                f"{', '.join(FIELDS)}"
            )
        try:
            name = check_limit_name(name)
            if item.get("slots") is None and item.get("rate") is None:
                raise InvalidArgument("slots is required (or a rate)")
            slots = None if item.get("slots") is None else check_slots(item["slots"])
            rate = None if item.get("rate") is None else str(parse_rate(str(item["rate"])))
            spread = item.get("spread", False)
            if not isinstance(spread, bool):
                raise InvalidArgument("spread must be true or false")
            if spread and rate is None:
                raise InvalidArgument("spread needs a rate")
            mw = item.get("max_waiters")
            mw = None if mw is None else check_max_waiters(mw)
            total = item.get("total")
            idle = item.get("idle_ttl")
            if (total is not None or idle is not None) and not is_template(name):
                raise InvalidArgument(
                    "total and idle_ttl apply to templates only (names ending in '*')"
                )
            total = None if total is None else check_total(total)
            idle = None if idle is None else parse_duration(idle, "idle_ttl")
            idle = None if idle == DEFAULT_IDLE_TTL else idle
            ttl = item.get("ttl", 0) or 0
            ttl = 0.0 if ttl == 0 else check_ttl(ttl)
            enabled = item.get("enabled", True)
            if not isinstance(enabled, bool):
                raise InvalidArgument("enabled must be true or false")
            desc = item.get("description", "")
            desc = "" if desc is None else desc
            if not isinstance(desc, str):
                raise InvalidArgument("description must be a string")
        except SlotkeeperError as exc:
            raise InvalidArgument(f"{source}: {_where(i, name)}: {exc}") from None
        if name in seen:
            raise InvalidArgument(f"{source}: limit {name!r} is listed twice")
        seen.add(name)
        out.append(LimitSpec(name, slots, float(ttl), enabled, desc, rate, spread, mw, total, idle))
    return out


def dump(specs: list[LimitSpec], fmt: str = "yaml") -> str:
    doc = {"limits": [s.as_dict() for s in specs]}
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False)
