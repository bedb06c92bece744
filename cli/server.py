"""``server start|stop|status``: the embedded broker (a private redis-server on a unix socket)."""

from __future__ import annotations

from dataclasses import asdict

import click

from slotkeeper.broker import embedded
from slotkeeper.cli.context import App, json_option, pass_app
from slotkeeper.cli.output import emit, warn


def _note_url(app: App) -> None:
    if app.url is not None:
        warn(
            "a broker URL is configured (--url / SLOTKEEPER_URL): commands use it, "
            "not the embedded broker"
        )


def _status_text(st: embedded.Status) -> str:
    if not st.running:
        return f"embedded broker: not running (state in {st.state_dir})"
    return (
        f"embedded broker: running, pid {st.pid}, redis {st.version}\n"
        f"url:   {st.url}\nstate: {st.state_dir}"
    )


@click.group()
def server() -> None:
    """Manage the embedded broker (used when no URL is configured)."""


@server.command()
@json_option
@pass_app
def start(app: App) -> None:
    """Start the embedded broker (no-op if it runs)."""
    _note_url(app)
    embedded.ensure_running()
    st = embedded.status()
    emit(app, asdict(st), _status_text(st))


@server.command()
@json_option
@pass_app
def stop(app: App) -> None:
    """Stop the embedded broker (limits persist in its AOF)."""
    _note_url(app)
    was = embedded.stop()
    emit(
        app,
        {"stopped": was},
        "embedded broker stopped" if was else "embedded broker was not running",
    )


@server.command()
@json_option
@pass_app
def status(app: App) -> None:
    """Is the embedded broker running? Where?"""
    _note_url(app)
    st = embedded.status()
    emit(app, asdict(st), _status_text(st))
