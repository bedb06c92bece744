"""Limit commands: create, set, ls, show, rm, reset, revoke."""

from __future__ import annotations

import shlex
import sys
from typing import Any

import click

from slotkeeper.broker.errors import InvalidArgument, LimitHeld, LimitNotFound, SlotkeeperError
from slotkeeper.broker.keys import check_limit_name, is_template
from slotkeeper.broker.protocol import check_max_waiters, check_total
from slotkeeper.broker.rates import parse_duration, parse_rate
from slotkeeper.broker.readmodel import LimitStats, ReadModel, ensure_readable
from slotkeeper.broker.render_json import config_dict, limit_detail, limit_summary
from slotkeeper.cli.context import App, json_option, pass_app
from slotkeeper.cli.output import BadInput, emit, warn
from slotkeeper.cli.render_text import capacity, limit_text, limits_table, problem_lines

SHOW_MAX = 1000


def confirm(question: str, yes: bool) -> None:
    """Ask before a destructive change; without a terminal, --yes is required."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.UsageError(f"{question} -- refusing without confirmation: pass --yes")
    click.confirm(question, abort=True, err=True)


def _check_slots_opt(_ctx: click.Context, _p: click.Parameter, v: int | None) -> int | None:
    if v is not None and v < 0:
        raise click.BadParameter("must be >= 0")
    return v


def _check_ttl_opt(_ctx: click.Context, _p: click.Parameter, v: float | None) -> float | None:
    if v is not None and v != 0 and not (0.05 <= v <= 86400 * 30):
        raise click.BadParameter("must be 0 (use the client's default) or 0.05 s .. 30 days")
    return v


# -- create / set ---------------------------------------------------------------------------------


def settings(
    name: str,
    *,
    slots: int | None,
    rate: str | None,
    spread: bool | None,
    max_waiters: int | None,
    total: int | None,
    idle_ttl: str | None,
    creating: bool,
) -> dict[str, Any]:
    """Validate the rate/template/backpressure options before anything is written: bad input is
    one line on stderr and exit status 2."""
    out: dict[str, Any] = {}
    unset: list[str] = []
    try:
        name = check_limit_name(name)
        template = is_template(name)
        if rate is not None and rate.strip().lower() in ("none", "off"):
            if creating:
                raise InvalidArgument("--rate none only makes sense for `set`")
            unset.append("rate")
        elif rate is not None:
            out["rate"] = parse_rate(rate)
        if creating and slots is None and "rate" not in out:
            raise InvalidArgument(f"limit {name!r} needs --slots N, --rate N/P, or both")
        if spread and "rate" not in out and creating:
            raise InvalidArgument("--spread needs --rate")
        if max_waiters is not None:
            if max_waiters == -1 and not creating:
                unset.append("max_waiters")
            else:
                out["max_waiters"] = check_max_waiters(max_waiters)
        if total is not None:
            if not template:
                raise InvalidArgument(
                    f"--total applies to templates only (names ending in '*'), not {name!r}"
                )
            if total == 0:
                unset.append("total")
            else:
                out["total"] = check_total(total)
        if idle_ttl is not None:
            if not template:
                raise InvalidArgument(
                    f"--idle-ttl applies to templates only (names ending in '*'), not {name!r}"
                )
            out["idle_ttl"] = parse_duration(idle_ttl, "--idle-ttl")
    except SlotkeeperError as exc:
        raise BadInput(str(exc)) from None
    if spread is not None:
        out["spread"] = spread
    if unset:
        out["unset"] = unset
    return out


def _rate_opts(fn: Any) -> Any:
    for opt in reversed(
        [
            click.option(
                "--rate",
                "-r",
                metavar="N/P",
                help="At most N units granted in any sliding window P: N/s, N/min, N/h "
                "(e.g. 600/min). `set --rate none` removes it.",
            ),
            click.option(
                "--spread/--no-spread",
                default=None,
                help="Space grants evenly (one unit every P/N) instead of allowing bursts of N.",
            ),
            click.option(
                "--max-waiters",
                type=int,
                metavar="N",
                help="At most N waiters: the next request fails at once with QueueFull "
                "(`set --max-waiters -1` removes the cap).",
            ),
            click.option(
                "--total",
                type=int,
                metavar="N",
                help="Templates: cap on the slots held over all keys made from it (0 removes).",
            ),
            click.option(
                "--idle-ttl",
                metavar="DURATION",
                help="Templates: keys with no holders and no waiters go after this long "
                "(e.g. 1h, 30min, 90s; default 1h).",
            ),
        ]
    ):
        fn = opt(fn)
    return fn


@click.command()
@click.argument("name")
@click.option(
    "--slots",
    "-s",
    type=int,
    callback=_check_slots_opt,
    help="How many slots the limit has (optional with --rate).",
)
@click.option(
    "--ttl",
    type=float,
    callback=_check_ttl_opt,
    help="Lease TTL in seconds for this limit (renewed by heartbeats). "
    "Default: the client's (30 s).",
)
@click.option("--disabled", is_flag=True, help="Create it disabled (admits everyone).")
@click.option("--description", "-d", default="", help="Free text shown by ls/show.")
@_rate_opts
@pass_app
def create(
    app: App,
    name: str,
    slots: int | None,
    ttl: float | None,
    disabled: bool,
    description: str,
    rate: str | None,
    spread: bool | None,
    max_waiters: int | None,
    total: int | None,
    idle_ttl: str | None,
) -> None:
    """Create limit NAME with N slots and/or a rate. A NAME ending in '*' is a template: every
    name with that prefix gets a limit of its own made from it on first use."""
    extra = settings(
        name,
        slots=slots,
        rate=rate,
        spread=spread,
        max_waiters=max_waiters,
        total=total,
        idle_ttl=idle_ttl,
        creating=True,
    )
    extra.pop("unset", None)
    app.broker().create_limit(name, slots, ttl, not disabled, description, **extra)
    r = extra.get("rate")
    what = ", ".join(
        x
        for x in (
            f"{slots} slot(s)" if slots is not None else "",
            f"rate {r}" + (" spread" if extra.get("spread") else "") if r else "",
            f"total {total}" if total else "",
            f"max {max_waiters} waiter(s)" if max_waiters is not None else "",
        )
        if x
    )
    kind = "template" if is_template(name) else "limit"
    emit(
        app,
        {
            "created": name,
            "slots": slots,
            "ttl": ttl or 0,
            "enabled": not disabled,
            "description": description,
            "rate": str(r) if r else None,
            "spread": bool(extra.get("spread")),
            "max_waiters": max_waiters,
            "total": total,
            "template": is_template(name),
        },
        f"created {kind} {name!r}: {what}" + (" (disabled)" if disabled else ""),
    )


@click.command("set")
@click.argument("name")
@click.option("--slots", "-s", type=int, callback=_check_slots_opt, help="New number of slots.")
@click.option(
    "--ttl",
    type=float,
    callback=_check_ttl_opt,
    help="Lease TTL in seconds (0: the client's default).",
)
@click.option("--enable", "enable", is_flag=True, help="Enforce the limit.")
@click.option("--disable", "disable", is_flag=True, help="Admit everyone (still counted).")
@click.option("--description", "-d", default=None, help="Free text shown by ls/show.")
@click.option(
    "--create",
    "create_",
    is_flag=True,
    help="Create the limit if it does not exist (needs --slots or --rate); also repairs a limit "
    "whose config is unreadable.",
)
@_rate_opts
@pass_app
def set_(
    app: App,
    name: str,
    slots: int | None,
    ttl: float | None,
    enable: bool,
    disable: bool,
    description: str | None,
    create_: bool,
    rate: str | None,
    spread: bool | None,
    max_waiters: int | None,
    total: int | None,
    idle_ttl: str | None,
) -> None:
    """Change a limit or template. Lowering slots never evicts holders; raising them grants
    waiters now. Changing a template changes every key made from it."""
    if enable and disable:
        raise click.UsageError("--enable and --disable contradict each other: give one")
    enabled = True if enable else False if disable else None
    extra = settings(
        name,
        slots=slots,
        rate=rate,
        spread=spread,
        max_waiters=max_waiters,
        total=total,
        idle_ttl=idle_ttl,
        creating=False,
    )
    if slots is None and ttl is None and enabled is None and description is None and not extra:
        raise BadInput(
            "nothing to change: give --slots, --ttl, --enable/--disable, --description, --rate, "
            "--spread, --max-waiters, --total or --idle-ttl"
        )
    if create_ and slots is None and "rate" not in extra:
        raise BadInput("--create needs --slots or --rate")
    try:
        created, changed = app.broker().update_limit(
            name,
            slots=slots,
            ttl=ttl,
            enabled=enabled,
            description=description,
            create=create_,
            **extra,
        )
    except LimitNotFound:
        raise LimitNotFoundCli(name, app.namespace) from None
    except InvalidArgument as exc:  # e.g. removing the rate of a limit without slots
        raise BadInput(str(exc)) from None
    snap = app.broker().snapshot(name, 1)
    cfg = config_dict(snap.config)
    if created:
        msg = f"created limit {name!r}: {capacity(snap)}"
    elif changed:
        shown = dict.fromkeys(_FIELD.get(f, f) for f in changed)
        fields = ", ".join(f"{f}={cfg.get(f)}" for f in shown)
        msg = f"updated limit {name!r}: {fields}"
    else:
        msg = f"limit {name!r} unchanged"
    emit(
        app,
        {
            "name": name,
            "created": created,
            "changed": list(dict.fromkeys(_FIELD.get(f, f) for f in changed)),
            "config": cfg,
        },
        msg,
    )


class LimitNotFoundCli(LimitNotFound):
    """A missing limit whose remedy is ``set --create`` (also repairs an unreadable config)."""

    @property
    def create_command(self) -> str:
        ns = "" if self.namespace == "default" else f" --namespace {self.namespace}"
        return f"slotkeeper{ns} set {shlex.quote(self.name)} --slots N --create"


_FIELD = {
    "desc": "description",
    "slots": "slots",
    "ttl": "ttl",
    "enabled": "enabled",
    "rate_n": "rate",
    "rate_p": "rate",
    "spread": "spread",
    "maxw": "max_waiters",
    "total": "total",
    "idle": "idle_ttl",
}


# -- ls -------------------------------------------------------------------------------------------


def report_problems(stats: list[LimitStats]) -> None:
    for line in problem_lines(stats):
        warn(line)


@click.command("ls")
@json_option
@pass_app
def ls(app: App) -> None:
    """List every limit: slots, rate, use, leases, waiters."""
    model = ReadModel(app.broker())
    stats = model.limits()
    report_problems(stats)
    busiest = model.busiest_template_keys(stats)
    data = []
    for st in stats:
        d = limit_summary(st)
        if st.name in busiest:
            d["busiest_keys"] = [{"name": k, "used": u} for k, u in busiest[st.name]]
        data.append(d)
    emit(app, data, limits_table(app.namespace, stats, busiest))


# -- show -----------------------------------------------------------------------------------------


@click.command()
@click.argument("name")
@click.option(
    "--max",
    "max_items",
    type=click.IntRange(1, 100_000),
    default=SHOW_MAX,
    show_default=True,
    help="At most this many holders and waiters.",
)
@json_option
@pass_app
def show(app: App, name: str, max_items: int) -> None:
    """Show a limit: config, counters, holders and waiters in queue order, each with the reason
    it waits."""
    check_limit_name(name)  # a bad name is one error, not also a warning about an unreadable limit
    st = ReadModel(app.broker()).limit(name, max_items)
    if st.ok:  # an unreadable limit is the one error below, not also a warning
        report_problems([st])
    st = ensure_readable(st, app.namespace)
    emit(app, limit_detail(st), lambda: click.echo(limit_text(st)))


# -- rm / reset / revoke --------------------------------------------------------------------------


@click.command("rm")
@click.argument("name")
@click.option("--force", is_flag=True, help="Revoke its leases first (asks unless --yes).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def rm(app: App, name: str, force: bool, yes: bool) -> None:
    """Delete a limit. Refuses while it is held, unless --force. Waiters are told it is gone."""
    broker = app.broker()
    revoked = 0
    for _ in range(10):
        try:
            broker.delete_limit(name)
            break
        except LimitNotFound:
            if name in broker.list_limits():
                raise InvalidArgument(
                    f"limit {name!r} is listed but its config is unreadable: repair it with "
                    f"`slotkeeper set {name!r} --slots N --create`, then rm it"
                ) from None
            raise
        except LimitHeld as exc:
            if not force:
                raise
            if revoked == 0:
                confirm(
                    f"limit {name!r} has {exc.used} slot(s) in use: revoke its leases and "
                    "delete it?",
                    yes,
                )
            revoked += broker.reset(name)
    else:
        raise LimitHeld(name, broker.snapshot(name, 1).used)
    emit(
        app,
        {"deleted": name, "revoked": revoked},
        f"deleted limit {name!r}" + (f" (revoked {revoked} lease(s))" if revoked else ""),
    )


@click.command()
@click.argument("name")
@click.option("--yes", "-y", "--force", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def reset(app: App, name: str, yes: bool) -> None:
    """Revoke every lease of a limit (holders learn at their next heartbeat)."""
    broker = app.broker()
    snap = broker.snapshot(name, 1)
    confirm(f"revoke every lease of {name!r} ({snap.used} slot(s) in use)?", yes)
    n = broker.reset(name)
    emit(app, {"name": name, "revoked": n}, f"revoked {n} lease(s) of {name!r}")


@click.command()
@click.argument("lease_id")
@click.option("--yes", "-y", "--force", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def revoke(app: App, lease_id: str, yes: bool) -> None:
    """Revoke one lease by id (see `show NAME`); its holder learns at its next heartbeat."""
    broker = app.broker()
    rec = broker.lease_record(lease_id)
    if rec is None:
        raise InvalidArgument(f"lease {lease_id!r} is not held (unknown, released or expired)")
    who = f"{rec.host} pid {rec.pid}" + (f" ({rec.label})" if rec.label else "")
    confirm(f"revoke lease {lease_id} on {', '.join(rec.names) or '?'} held by {who}?", yes)
    if not broker.revoke(lease_id):
        raise InvalidArgument(f"lease {lease_id!r} is not held (unknown, released or expired)")
    emit(
        app,
        {"revoked": lease_id, "names": rec.names},
        f"revoked lease {lease_id} on {', '.join(rec.names)}",
    )


COMMANDS = (create, set_, ls, show, rm, reset, revoke)
