"""``slotkeeper functions load|status``: the Redis Functions library (Redis >= 7) that lets
clients run slotkeeper with FCALL only (no EVAL/EVALSHA/SCRIPT in their ACL)."""

from __future__ import annotations

import click
import redis

from slotkeeper.broker import functions as F
from slotkeeper.broker.connection import redact
from slotkeeper.broker.errors import BrokerError
from slotkeeper.cli.context import App, json_option, pass_app
from slotkeeper.cli.output import emit


@click.group()
def functions() -> None:
    """The slotkeeper Redis Functions library (Redis >= 7)."""


def _client(app: App) -> redis.Redis:
    return app.broker().redis


@functions.command("load")
@click.option("--replace", is_flag=True, help="Replace a library of another slotkeeper version.")
@json_option
@pass_app
def load(app: App, replace: bool) -> None:
    """Load the library (run it as a Redis user allowed FUNCTION LOAD, e.g. at deploy time)."""
    try:
        version = F.load(_client(app), replace=replace)
    except redis.RedisError as exc:
        raise BrokerError(f"FUNCTION LOAD failed: {redact(str(exc))}") from None
    emit(
        app,
        {"library": F.LIBRARY, "version": version, "loaded": True},
        lambda: click.echo(f"loaded function library {F.LIBRARY!r} version {version}"),
    )


@functions.command("status")
@json_option
@pass_app
def status(app: App) -> None:
    """Which library version Redis holds, and the one this slotkeeper needs."""
    try:
        found = F.loaded_version(_client(app))
    except redis.RedisError as exc:
        raise BrokerError(f"cannot read the function library: {redact(str(exc))}") from None
    data = {
        "library": F.LIBRARY,
        "loaded": found,
        "needed": F.version(),
        "current": found == F.version(),
    }

    def text() -> None:
        state = (
            "current"
            if found == F.version()
            else (
                "missing"
                if found is None
                else f"version {found} (run `{F.LOAD_COMMAND} --replace`)"
            )
        )
        click.echo(f"function library {F.LIBRARY!r}: {state}; this slotkeeper needs {F.version()}")

    emit(app, data, text)
