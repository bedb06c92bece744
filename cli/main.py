"""``slotkeeper``: the command line. One click group; commands live in small modules.

Errors are one line on stderr with exit status 1 (usage errors: 2), never a traceback
(set SLOTKEEPER_DEBUG=1 to see one); passwords in URLs are never printed.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from slotkeeper.broker.connection import ENV_NAMESPACE, ENV_URL, redact
from slotkeeper.broker.errors import LimitNotFound, SlotkeeperError
from slotkeeper.cli.context import App
from slotkeeper.cli.output import one_line


class CliError(click.ClickException):
    """A one-line error on stderr, exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {one_line(self.format_message())}", err=True)


class SlotkeeperGroup(click.Group):
    """Turns every error into one line on stderr (exit 1) instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except LimitNotFound as exc:  # the SDK's message suggests SDK arguments: say the command
            raise CliError(
                f"limit {exc.name!r} does not exist: create it with `{exc.create_command}`"
            ) from None
        except SlotkeeperError as exc:
            raise CliError(redact(str(exc))) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            raise click.exceptions.Exit(130) from None
        except BrokenPipeError:
            raise click.exceptions.Exit(1) from None
        except Exception as exc:
            if os.environ.get("SLOTKEEPER_DEBUG"):
                raise
            raise CliError(
                f"{type(exc).__name__}: {redact(str(exc))} (SLOTKEEPER_DEBUG=1 shows the traceback)"
            ) from None
        finally:
            app = ctx.find_object(App)
            if app is not None:
                app.close()


@click.group(
    cls=SlotkeeperGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--url",
    envvar=ENV_URL,
    metavar="URL",
    help="Redis URL (redis://, rediss://, unix://, redis+sentinel://, redis+cluster://). Default: "
    "$SLOTKEEPER_URL, else the embedded broker.",
)
@click.option(
    "--namespace",
    "-n",
    envvar=ENV_NAMESPACE,
    metavar="NS",
    help="Namespace of limits. Default: $SLOTKEEPER_NAMESPACE, else 'default'.",
)
@click.option("--json", "json_out", is_flag=True, help="Print JSON (read commands).")
@click.version_option(package_name="slotkeeper", prog_name="slotkeeper")
@click.pass_context
def cli(ctx: click.Context, url: str | None, namespace: str | None, json_out: bool) -> None:
    """Distributed concurrency limits on Redis: leased, fair, push-woken slots.

    \b
    slotkeeper create gpu:gpu-1 --slots 2     # a limit of 2 slots
    slotkeeper run gpu:gpu-1 -- python train.py
    slotkeeper ls / show NAME / top
    slotkeeper daemon                         # reclaim + Prometheus /metrics
    slotkeeper demo                           # the classic throttling example
    """
    ctx.obj = App.from_options(url, namespace, json_out)


def _register() -> None:
    from slotkeeper.cli import (
        apply,
        daemon,
        demo,
        doctor,
        events,
        functions,
        limits,
        run,
        server,
        top,
    )

    for cmd in (
        *limits.COMMANDS,
        apply.apply,
        apply.export,
        run.run,
        top.top,
        demo.demo,
        server.server,
        daemon.daemon,
        functions.functions,
        doctor.doctor,
        events.events,
    ):
        cli.add_command(cmd)
    try:
        from slotkeeper.cli.bench import bench  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return
    cli.add_command(bench)


_register()


def main() -> None:
    try:
        cli.main(prog_name="slotkeeper")
    except KeyboardInterrupt:  # outside any command (e.g. while parsing)
        sys.exit(130)


if __name__ == "__main__":
    main()
