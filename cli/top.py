"""``slotkeeper top``: a live view of every limit until Ctrl-C."""

from __future__ import annotations

import time
from dataclasses import dataclass

import click

from slotkeeper.broker.errors import BrokerUnavailable
from slotkeeper.broker.readmodel import LimitStats, ReadModel
from slotkeeper.broker.render_json import limit_summary
from slotkeeper.cli.context import App, json_option, pass_app
from slotkeeper.cli.output import is_tty, to_json
from slotkeeper.cli.render_text import top_table

CLEAR = "\x1b[H\x1b[2J"


@dataclass
class Sample:
    at: float
    counters: dict[str, tuple[int, int]]  # name -> (acquired, expired)


def sample(stats: list[LimitStats]) -> Sample:
    return Sample(
        time.monotonic(),
        {
            st.name: (st.snapshot.counters.acquired, st.snapshot.counters.expired)
            for st in stats
            if st.snapshot is not None
        },
    )


def rates(prev: Sample | None, cur: Sample, name: str) -> tuple[float | None, float | None]:
    if prev is None or name not in prev.counters or name not in cur.counters:
        return None, None
    dt = cur.at - prev.at
    if dt <= 0:
        return None, None
    (a0, e0), (a1, e1) = prev.counters[name], cur.counters[name]
    return max(0, a1 - a0) / dt, max(0, e1 - e0) / dt


def render(
    app: App, stats: list[LimitStats], prev: Sample | None, cur: Sample, refresh: float | None
) -> str:
    """One view; ``refresh`` is the interval of a live view (None: printed once)."""
    head = (
        f"slotkeeper top  {app.display_url}  namespace {app.namespace}  {time.strftime('%H:%M:%S')}"
    )
    if refresh is not None:
        head += f"  (every {refresh:g}s, Ctrl-C quits)"
    return top_table(head, stats, {st.name: rates(prev, cur, st.name) for st in stats})


@click.command()
@click.option(
    "--interval",
    "-i",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option("--once", is_flag=True, help="Print one view and exit.")
@click.option(
    "--iterations", type=click.IntRange(min=1), default=None, help="Exit after this many refreshes."
)
@json_option
@pass_app
def top(app: App, interval: float, once: bool, iterations: int | None) -> None:
    """Live view of all limits: use, waiters, wait p95, acquire and expiry rates (Ctrl-C quits).

    With --json, one JSON object per refresh (a line each)."""
    if once:
        iterations = 1
    model = ReadModel(app.broker())
    tty = is_tty() and not app.json
    prev: Sample | None = None
    n = 0
    try:
        while True:
            try:
                stats = model.limits()
                error = None
            except BrokerUnavailable as exc:
                if iterations == 1:
                    raise
                stats, error = [], str(exc)
            cur = sample(stats)
            if app.json:
                limits = []
                for st in stats:
                    d = limit_summary(st)
                    d["acquired_per_second"], d["expired_per_second"] = rates(prev, cur, st.name)
                    limits.append(d)
                click.echo(
                    to_json(
                        {
                            "time": time.time(),
                            "namespace": app.namespace,
                            "error": error,
                            "limits": limits,
                        }
                    )
                )
            else:
                text = render(app, stats, prev, cur, None if iterations == 1 else interval)
                if error:
                    text = text.split("\n\n")[0] + f"\n\nRedis unreachable: {error}"
                click.echo((CLEAR if tty else "") + text + ("" if tty else "\n"))
            prev = cur if stats else prev
            n += 1
            if iterations is not None and n >= iterations:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return
