"""Declarative limits: ``apply -f FILE`` (idempotent, --dry-run, --prune) and ``export``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import click

from slotkeeper.broker.client import Broker
from slotkeeper.broker.errors import LimitHeld, SlotkeeperError
from slotkeeper.broker.keys import is_template
from slotkeeper.broker.readmodel import read_limits
from slotkeeper.broker.records import DEFAULT_IDLE_TTL
from slotkeeper.cli.context import App, json_option, pass_app
from slotkeeper.cli.output import emit, warn
from slotkeeper.cli.prefect_gcl import read_limits_file
from slotkeeper.cli.spec import LimitSpec, dump


@dataclass
class Change:
    action: str  # create | update | delete
    name: str
    fields: list[tuple[str, Any, Any]] = field(default_factory=list)
    error: str | None = None

    def line(self) -> str:
        sign = {"create": "+", "update": "~", "delete": "-"}[self.action]
        detail = ", ".join(
            f"{f}: {old!r} -> {new!r}" if self.action == "update" else f"{f}={new!r}"
            for f, old, new in self.fields
        )
        out = f"{sign} {self.action} {self.name}" + (f" ({detail})" if detail else "")
        return out + (f"  FAILED: {self.error}" if self.error else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "name": self.name,
            "fields": {f: {"old": old, "new": new} for f, old, new in self.fields},
            **({"error": self.error} if self.error else {}),
        }


def current_specs(broker: Broker, strict: bool = False) -> dict[str, LimitSpec | None]:
    """Every limit's config (None when unreadable; reported on stderr)."""
    out: dict[str, LimitSpec | None] = {}
    for st in read_limits(broker, sample=1, count=False):
        cfg_problems = [m for m in st.messages() if "field '" in m or st.snapshot is None]
        for m in cfg_problems:
            warn(m)
        if st.snapshot is None or cfg_problems:
            out[st.name] = None
            if strict:
                raise SlotkeeperError(
                    f"limit {st.name!r} is unreadable; not exporting a partial "
                    "file (fix it with `slotkeeper set NAME --slots N --create`)"
                )
        else:
            out[st.name] = LimitSpec.from_config(st.snapshot.config)
    return out


def plan(
    wanted: list[LimitSpec], current: dict[str, LimitSpec | None], prune: bool
) -> list[Change]:
    changes: list[Change] = []
    for spec in wanted:
        fields = [(f, None, v) for f, v in spec.as_dict().items() if f != "name"]
        if spec.name not in current:
            changes.append(Change("create", spec.name, fields))
            continue
        cur = current[spec.name]
        if cur is None:  # unreadable config: rewrite it entirely
            changes.append(Change("update", spec.name, [(f, "?", v) for f, _, v in fields]))
        else:
            d = spec.diff(cur)
            if d:
                changes.append(Change("update", spec.name, d))
    if prune:
        listed = {s.name for s in wanted}
        changes += [Change("delete", n) for n in sorted(current) if n not in listed]
    return changes


def execute(broker: Broker, wanted: list[LimitSpec], changes: list[Change]) -> None:
    by_name = {s.name: s for s in wanted}
    for ch in changes:
        try:
            if ch.action == "delete":
                broker.delete_limit(ch.name)
            else:
                s = by_name[ch.name]
                unset = [
                    f
                    for f, v in (
                        ("slots", s.slots),
                        ("rate", s.rate),
                        ("max_waiters", s.max_waiters),
                    )
                    if v is None
                ]
                if s.total is None and is_template(s.name):
                    unset.append("total")
                broker.update_limit(
                    s.name,
                    slots=s.slots,
                    ttl=s.ttl,
                    enabled=s.enabled,
                    description=s.description,
                    create=True,
                    rate=s.rate,
                    spread=s.spread if s.rate is not None else None,
                    max_waiters=s.max_waiters,
                    total=s.total,
                    idle_ttl=(s.idle_ttl or DEFAULT_IDLE_TTL) if is_template(s.name) else None,
                    unset=unset,
                )
        except LimitHeld as exc:
            ch.error = (
                f"{exc.used} slot(s) in use; not removed (revoke with `slotkeeper rm --force`)"
            )
        except SlotkeeperError as exc:
            ch.error = str(exc)


@click.command()
@click.option(
    "-f",
    "--file",
    "path",
    type=click.File("r"),
    required=True,
    help="YAML or JSON file ('-' for stdin).",
)
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@click.option("--prune", is_flag=True, help="Also delete limits the file does not list.")
@pass_app
def apply(app: App, path: Any, dry_run: bool, prune: bool) -> None:
    """Make the limits match a file (idempotent). Prints what it changed.

    \b
    limits:
      - {name: "gpu:gpu-1", slots: 2, ttl: 30, enabled: true, description: "..."}

    Prefect's global concurrency limits are read too: `prefect gcl ls --output json`
    or the REST API's objects (name, limit, active).
    """
    wanted = read_limits_file(path.read(), getattr(path, "name", "<input>"))
    broker = app.broker()
    changes = plan(wanted, current_specs(broker), prune)
    if not dry_run:
        execute(broker, wanted, changes)
    failed = [c for c in changes if c.error]

    def text() -> None:
        for c in changes:
            click.echo(c.line())
        verb = "would change" if dry_run else "changed"
        if not changes:
            click.echo(f"no changes ({len(wanted)} limit(s) up to date)")
        else:
            click.echo(
                f"{verb} {len(changes) - len(failed)} limit(s)"
                + (" (dry run)" if dry_run else "")
                + (f", {len(failed)} failed" if failed else "")
            )

    emit(app, {"dry_run": dry_run, "changes": [c.as_dict() for c in changes]}, text)
    if failed:
        raise SlotkeeperError(
            f"{len(failed)} change(s) failed: " + "; ".join(f"{c.name}: {c.error}" for c in failed)
        )


@click.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["yaml", "json"]),
    default=None,
    help="Output format (default yaml; json with --json).",
)
@click.option("-o", "--output", type=click.File("w"), default="-", help="Write to a file.")
@json_option
@pass_app
def export(app: App, fmt: str | None, output: Any) -> None:
    """Print every limit as a file that `apply -f` accepts (round-trips)."""
    specs = [s for s in current_specs(app.broker(), strict=True).values() if s is not None]
    text = dump(sorted(specs, key=lambda s: s.name), fmt or ("json" if app.json else "yaml"))
    output.write(text)
