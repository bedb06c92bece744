"""``slotkeeper events``: the namespace's audit trail (grants, releases, expiries, revokes,
timeouts, rejections, limit changes), as a table, JSON lines, or followed live."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from slotkeeper.broker.events import Event, check_cap
from slotkeeper.broker.rates import parse_duration
from slotkeeper.broker.readmodel import ReadModel
from slotkeeper.cli.context import App, json_option, pass_app
from slotkeeper.cli.output import emit, table

FOLLOW_BLOCK_MS = 1000


def _row(ev: Event) -> list[Any]:
    who = " ".join(x for x in (ev.host, str(ev.pid) if ev.pid else "", ev.worker) if x)
    return [
        time.strftime("%H:%M:%S", time.localtime(ev.time_ms / 1000)) + f".{ev.time_ms % 1000:03d}",
        ev.kind,
        ", ".join(ev.names),
        ev.occupy or "",
        ev.lease_id,
        who,
        ev.label,
        ev.detail,
    ]


HEADERS = ["TIME", "EVENT", "LIMITS", "OCCUPY", "LEASE", "HOLDER", "LABEL", "DETAIL"]


def _settings_text(enabled: bool, cap: int) -> str:
    return f"events are {'on' if enabled else 'OFF'} in this namespace (cap {cap})"


@click.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option("--limit", "limit_name", metavar="NAME", help="Only events of this limit.")
@click.option(
    "--since", metavar="DURATION", help="Only events of the last DURATION (30s, 10min, 2h)."
)
@click.option(
    "--count",
    "-c",
    type=click.IntRange(1, 1_000_000),
    default=100,
    show_default=True,
    help="At most this many (the newest) before following.",
)
@click.option(
    "--enable/--disable",
    "enable",
    default=None,
    help="Switch recording on or off for the whole namespace (then exit).",
)
@click.option(
    "--cap", type=int, default=None, help="Keep about this many events (then exit; default 10000)."
)
@json_option
@pass_app
def events(
    app: App,
    follow: bool,
    limit_name: str | None,
    since: str | None,
    count: int,
    enable: bool | None,
    cap: int | None,
) -> None:
    """Show what happened: grants, releases, expiries, revokes, timeouts, rejections, limit
    changes, each with its lease, limits, occupy and holder (host, pid, worker, label).

    With --json, one JSON object per line. --enable/--disable/--cap change the namespace's
    settings (every client and script sees them at once) and print them."""
    model = ReadModel(app.broker())
    if enable is not None or cap is not None:
        on, c = model.set_event_settings(enable, None if cap is None else check_cap(cap))
        emit(app, {"events": on, "cap": c}, _settings_text(on, c))
        return
    since_s = parse_duration(since) if since else None
    past = model.events(limit=limit_name, since_s=since_s, count=count)
    if app.json:
        for ev in past:
            click.echo(json.dumps(ev.as_dict()))
    elif past or not follow:
        on, c = model.event_settings()
        if not on:
            click.echo(_settings_text(on, c) + ": `slotkeeper events --enable` turns them on")
        if past:
            click.echo(table(HEADERS, [_row(ev) for ev in past], right=(3,)))
        elif not follow:
            click.echo("no events" + (f" of {limit_name!r}" if limit_name else ""))
    if not follow:
        return
    last = past[-1].id if past else model.last_event_id()
    printed_header = bool(past)
    try:
        while True:
            for ev in model.events_after(last, FOLLOW_BLOCK_MS):
                last = ev.id
                if limit_name is not None and limit_name not in ev.names:
                    continue
                if app.json:
                    click.echo(json.dumps(ev.as_dict()))
                else:
                    row = table(HEADERS, [_row(ev)], right=(3,)).splitlines()
                    click.echo("\n".join(row if not printed_header else row[1:]))
                    printed_header = True
    except KeyboardInterrupt:
        return
