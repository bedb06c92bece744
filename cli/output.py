"""Printing: tables for people, JSON for scripts, one-line warnings on stderr."""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

import click

from slotkeeper.broker.formatting import duration
from slotkeeper.cli.context import App

JSON_DECIMALS = 6  # seconds to the microsecond; binary float noise (0.34999999999999964) goes


def tidy(data: Any) -> Any:
    """``data`` with every float rounded to JSON_DECIMALS places, for printing as JSON."""
    if isinstance(data, float):
        return round(data, JSON_DECIMALS)
    if isinstance(data, dict):
        return {k: tidy(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [tidy(v) for v in data]
    return data


def to_json(data: Any, indent: int | None = None) -> str:
    """JSON for scripts: floats rounded (see ``tidy``), anything else unusual as its str()."""
    return json.dumps(tidy(data), indent=indent, sort_keys=False, default=str)



__all__ = [
    "duration",
    "emit",
    "tidy",
    "to_json",
    "is_tty",
    "one_line",
    "table",
    "ttl_text",
    "warn",
    "width",
]


def emit(app: App, data: Any, text: Callable[[], None] | str | None = None) -> None:
    """Print ``data`` as JSON with ``--json``, else call ``text()`` (or print the string)."""
    if app.json:
        click.echo(to_json(data, indent=2))
    elif callable(text):
        text()
    elif text is not None:
        click.echo(text)


def warn(msg: str) -> None:
    click.echo(f"warning: {one_line(msg)}", err=True)


def one_line(msg: str) -> str:
    return " ".join(str(msg).split())


class BadInput(click.UsageError):
    """Bad input to a command: one line on stderr, exit status 2, nothing written."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {one_line(self.format_message())}", err=True)


def width(s: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    right: Sequence[int] = (),
    indent: str = "",
) -> str:
    """A plain aligned table (``right`` = indexes of right-aligned numeric columns)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(width(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = []
        for i, c in enumerate(r):
            pad = " " * (widths[i] - width(c))
            parts.append(pad + c if i in right else c + pad)
        lines.append(indent + "  ".join(parts).rstrip())
    return "\n".join(lines)


def ttl_text(ttl_s: float) -> str:
    return "default" if ttl_s <= 0 else duration(ttl_s)


def is_tty(stream: Any = None) -> bool:
    stream = stream or sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
