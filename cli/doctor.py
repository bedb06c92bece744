"""``slotkeeper doctor``: check the Redis settings that silently break a limiter."""

from __future__ import annotations

import click

from slotkeeper.broker import doctor as checks
from slotkeeper.cli.context import App, json_option, pass_app
from slotkeeper.cli.output import emit, table

EXIT_DANGER = 3

MARK = {
    checks.Level.OK: "ok",
    checks.Level.NOTE: "note",
    checks.Level.WARN: "WARN",
    checks.Level.DANGER: "DANGER",
    checks.Level.UNKNOWN: "?",
}


def render(report: checks.Report) -> str:
    rows = [[MARK[c.level], c.name, c.summary] for c in report.checks]
    out = table(["", "CHECK", "FINDING"], rows)
    fixes = [
        f"  {c.name}: {c.fix}" for c in report.checks if c.fix and c.level is not checks.Level.OK
    ]
    if fixes:
        out += "\n\nhow to fix:\n" + "\n".join(fixes)
    if report.dangerous:
        out += "\n\nDANGER: slotkeeper's guarantees do not hold with this Redis until fixed."
    return out


@click.command()
@json_option
@pass_app
def doctor(app: App) -> None:
    """Check Redis for what silently breaks a limiter: eviction policy, persistence, version,
    replicas, ACL permissions, latency, clock jumps, memory headroom.

    Reads only INFO (never CONFIG) and probes permissions on one key of the namespace. Exit
    status: 0 fine (warnings allowed), 3 a dangerous setting, 1 could not check."""
    report = checks.run(app.broker())
    emit(app, report.as_dict(), render(report))
    if report.dangerous:
        raise click.exceptions.Exit(EXIT_DANGER)
