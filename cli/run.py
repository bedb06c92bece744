"""``slotkeeper run NAME... -- CMD``: hold slots around any command (like ``consul lock``).

The SDK heartbeat renews the lease while the command runs. The command's exit status passes
through (a signal death N becomes 128+N). Signals sent to ``slotkeeper run`` are forwarded to the
command. If the lease is lost (expired while Redis was unreachable, or revoked), the command is
terminated (SIGTERM, then SIGKILL after --kill-after) unless --keep-on-lost.

The command's environment gains SLOTKEEPER_LEASE_ID, SLOTKEEPER_LEASE_TOKEN (the fencing token)
and SLOTKEEPER_LEASE_NAMES: the limit names, one per line (LEASE_NAMES_SEP; a limit name is
printable, so it never contains a newline, while commas and spaces are allowed in names).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import click

from slotkeeper.broker.client import Broker
from slotkeeper.broker.connection import ENV_URL, ENV_URL_FILE
from slotkeeper.broker.errors import SlotkeeperError
from slotkeeper.cli.context import App, pass_app
from slotkeeper.cli.output import is_tty, warn
from slotkeeper.lease import Lease
from slotkeeper.limiter import Limiter
from slotkeeper.naming import host_name

CMD_KEY = "slotkeeper.run.command"
FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)
PROGRESS_EVERY = 0.5
TICK = 0.05

LEASE_NAMES_SEP = "\n"  # separates names in SLOTKEEPER_LEASE_NAMES (names are printable)


class RunCommand(click.Command):
    """Splits ``NAME... [OPTIONS] -- CMD ARGS...`` at the first ``--`` before click parses."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            i = args.index("--")
            ctx.meta[CMD_KEY] = args[i + 1 :]
            args = args[:i]
        else:
            ctx.meta[CMD_KEY] = []
        return super().parse_args(ctx, args)


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def handlers(sigs: tuple[int, ...], fn: Callable[[int, FrameType | None], Any]) -> Iterator[None]:
    old = {s: signal.signal(s, fn) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


class Progress:
    """Shows this process's place in the first limit's queue while it waits."""

    def __init__(self, broker: Broker, name: str, tty: bool) -> None:
        self.broker = broker
        self.name = name
        self.tty = tty
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="slotkeeper-run-progress", daemon=True
        )
        self._last = ""

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        if self.tty and self._last:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()

    def line(self) -> str | None:
        snap = self.broker.snapshot(self.name, max_items=1000)
        me = os.getpid(), host_name()
        for i, w in enumerate(snap.waiters):
            if (w.pid, w.host) == me:
                return (
                    f"waiting for {self.name}: position {i + 1} of {snap.n_waiters} in the "
                    f"queue, {snap.used}/{snap.config.slots} slot(s) in use"
                )
        return None

    def _loop(self) -> None:
        while not self._stop.wait(PROGRESS_EVERY):
            try:
                msg = self.line()
            except SlotkeeperError:
                continue
            if msg is None or msg == self._last or self._stop.is_set():
                continue
            self._last = msg
            sys.stderr.write(("\r\x1b[K" + msg) if self.tty else msg + "\n")
            sys.stderr.flush()


def _in_terminal_foreground() -> bool:
    """True if we run in the terminal's foreground process group: then a Ctrl-C (SIGINT/SIGQUIT)
    from the terminal already reached the command, and forwarding it would deliver it twice."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def supervise(
    proc: subprocess.Popen[bytes], lost: threading.Event, keep_on_lost: bool, kill_after: float
) -> int:
    """Wait for the command, forwarding signals and stopping it if the lease is lost."""
    pending: list[int] = []
    skip = {signal.SIGINT, signal.SIGQUIT} if _in_terminal_foreground() else set()
    terminated_at: float | None = None
    warned = False
    with handlers(FORWARDED, lambda signum, _f: pending.append(signum)):
        while True:
            try:
                rc = proc.wait(timeout=TICK)
                break
            except subprocess.TimeoutExpired:
                pass
            while pending:
                s = pending.pop(0)
                if s not in skip:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(s)
            if lost.is_set() and not warned:
                warned = True
                if keep_on_lost:
                    warn(
                        "the lease was lost (expired or revoked); the command keeps running "
                        "(--keep-on-lost) without holding a slot"
                    )
                else:
                    warn("the lease was lost (expired or revoked); terminating the command")
                    terminated_at = time.monotonic()
                    with contextlib.suppress(ProcessLookupError):
                        proc.terminate()
            if terminated_at is not None and time.monotonic() - terminated_at > kill_after:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                terminated_at = None
    return rc if rc >= 0 else 128 - rc


@click.command(cls=RunCommand, context_settings={"allow_interspersed_args": True})
@click.argument("names", nargs=-1, required=True)
@click.option(
    "--occupy",
    type=click.IntRange(1, 10_000),
    default=1,
    show_default=True,
    help="Slots to take of every limit.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="Give up after waiting this many seconds (exit 1). Default: wait forever.",
)
@click.option(
    "--ttl",
    type=click.FloatRange(0.05, 86400 * 30),
    default=None,
    help="Lease TTL in seconds (renewed while the command runs).",
)
@click.option(
    "--priority",
    type=click.IntRange(-1000, 1000),
    default=0,
    show_default=True,
    help="Higher waits less.",
)
@click.option(
    "--default-slots",
    type=click.IntRange(min=0),
    default=None,
    help="Create a missing limit with this many slots.",
)
@click.option(
    "--label", default=None, help="Shown by show/top (default: the program's name)."
)
@click.option(
    "--record-args",
    is_flag=True,
    help="Record the whole command line as the label (every reader of the namespace sees it).",
)
@click.option(
    "--pass-url",
    is_flag=True,
    help="Pass SLOTKEEPER_URL / SLOTKEEPER_URL_FILE on to the command (default: removed).",
)
@click.option(
    "--keep-on-lost",
    is_flag=True,
    help="Let the command run on if the lease is lost (default: terminate it).",
)
@click.option(
    "--kill-after",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="After terminating the command for a lost lease, SIGKILL it after this long.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show the queue position while waiting (default: when stderr is a terminal).",
)
@pass_app
def run(
    app: App,
    names: tuple[str, ...],
    occupy: int,
    timeout: float | None,
    ttl: float | None,
    priority: int,
    default_slots: int | None,
    label: str | None,
    record_args: bool,
    pass_url: bool,
    keep_on_lost: bool,
    kill_after: float,
    progress: bool | None,
) -> None:
    """Hold slots of every NAME while CMD runs: slotkeeper run NAME... -- CMD ARGS...

    CMD sees SLOTKEEPER_LEASE_ID, SLOTKEEPER_LEASE_TOKEN and SLOTKEEPER_LEASE_NAMES (one name per
    line)."""
    cmd: list[str] = click.get_current_context().meta.get(CMD_KEY, [])
    if not cmd:
        raise click.UsageError("no command: slotkeeper run NAME... -- CMD ARGS...")
    limiter = Limiter(app.resolved_url(), app.namespace)
    lost = threading.Event()
    tty = is_tty(sys.stderr)
    show = tty if progress is None else progress
    if label is None:  # argv may hold secrets: only the program's name unless asked
        label = "run: " + (shlex.join(cmd) if record_args else os.path.basename(cmd[0]))[:150]

    def on_lost(_lease: Lease) -> None:
        lost.set()

    try:
        with handlers((signal.SIGTERM, signal.SIGHUP), _raise_interrupted):
            ctx = (
                Progress(limiter.broker, limiter.request(names).names[0], tty)
                if show
                else contextlib.nullcontext()
            )
            with ctx:
                lease = limiter.acquire(
                    *names,
                    occupy=occupy,
                    timeout=timeout,
                    priority=priority,
                    ttl=ttl,
                    default_slots=default_slots,
                    on_lost=on_lost,
                    label=label,
                )
    except Interrupted as exc:
        raise click.exceptions.Exit(128 + exc.signum) from None
    env = {
        k: v for k, v in os.environ.items() if pass_url or k not in (ENV_URL, ENV_URL_FILE)
    }
    env.update(
        SLOTKEEPER_LEASE_ID=lease.id,
        SLOTKEEPER_LEASE_TOKEN=str(lease.token),
        SLOTKEEPER_LEASE_NAMES=LEASE_NAMES_SEP.join(lease.names),
    )
    try:
        proc = subprocess.Popen(cmd, env=env)
    except OSError as exc:
        lease.release()
        click.echo(f"error: cannot run {cmd[0]!r}: {exc.strerror or exc}", err=True)
        raise click.exceptions.Exit(127 if isinstance(exc, FileNotFoundError) else 126) from None
    try:
        rc = supervise(proc, lost, keep_on_lost, kill_after)
    finally:
        if proc.poll() is None:  # we are being torn down: do not leave the command behind
            proc.kill()
            proc.wait()
        held = lease.release()
    if not held and not lost.is_set():
        warn("the lease was lost (expired or revoked) before the command finished")
    raise click.exceptions.Exit(rc)
