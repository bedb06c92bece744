"""The declarative file of ``apply``/``export``: YAML or JSON.

    limits:
      - name: "gpu:gpu-1"
        slots: 2
        ttl: 30            # seconds; 0 or absent: the client's default
        enabled: true      # default true
        description: "..." # default ""

Fields a limit leaves out take these defaults: the file is the whole truth about what it lists.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import yaml

from slotkeeper.broker.errors import InvalidArgument, SlotkeeperError
from slotkeeper.broker.keys import check_name
from slotkeeper.broker.protocol import check_slots, check_ttl
from slotkeeper.broker.records import LimitConfig

FIELDS = ("name", "slots", "ttl", "enabled", "description")


@dataclass(frozen=True)
class LimitSpec:
    name: str
    slots: int
    ttl: float = 0.0
    enabled: bool = True
    description: str = ""

    @classmethod
    def from_config(cls, c: LimitConfig) -> LimitSpec:
        return cls(c.name, c.slots, c.ttl_s, c.enabled, c.description)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ttl"] = int(self.ttl) if float(self.ttl).is_integer() else self.ttl
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
            name = check_name(name)
            if "slots" not in item:
                raise InvalidArgument("slots is required")
            slots = check_slots(item["slots"])
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
        out.append(LimitSpec(name, slots, float(ttl), enabled, desc))
    return out


def dump(specs: list[LimitSpec], fmt: str = "yaml") -> str:
    doc = {"limits": [s.as_dict() for s in specs]}
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False)
