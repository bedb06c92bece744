"""The context object every command receives: where the broker is, and how to print."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from slotkeeper.broker import embedded
from slotkeeper.broker.client import Broker
from slotkeeper.broker.connection import configured_namespace, configured_url, redact
from slotkeeper.broker.keys import check_namespace

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class App:
    """Global options (``--url``, ``--namespace``, ``--json``) and a lazily made Broker."""

    url: str | None = None
    namespace: str = "default"
    json: bool = False
    _broker: Broker | None = field(default=None, repr=False)

    @classmethod
    def from_options(cls, url: str | None, namespace: str | None, json: bool) -> App:
        return cls(configured_url(url), check_namespace(configured_namespace(namespace)), json)

    @property
    def embedded(self) -> bool:
        return self.url is None

    def resolved_url(self) -> str:
        """The broker URL, starting the embedded broker when no URL is configured."""
        return self.url or embedded.ensure_running()

    @property
    def display_url(self) -> str:
        """Where the broker is, safe to print (passwords redacted)."""
        return redact(self.url) if self.url else f"{embedded.url()} (embedded)"

    def broker(self) -> Broker:
        if self._broker is None:
            self._broker = Broker.from_url(self.resolved_url(), self.namespace)
        return self._broker

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()
            self._broker = None


pass_app = click.make_pass_decorator(App)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.ensure_object(App).json = True
    return value


def json_option(fn: F) -> F:
    """``--json`` on a read command (same as the global ``slotkeeper --json``)."""
    return click.option(
        "--json",
        "json_out",
        is_flag=True,
        expose_value=False,
        callback=_set_json,
        help="Print JSON instead of a table.",
    )(fn)
