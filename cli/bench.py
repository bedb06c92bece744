"""``slotkeeper bench``: slotkeeper vs a minimal Lua reference semaphore vs the raw round trip."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from slotkeeper.bench import ALL_WORKLOADS, BenchConfig, run_bench
from slotkeeper.bench.rates import RATE_WORKLOADS, render_rates, run_rates
from slotkeeper.bench.report import render, targets, write_json
from slotkeeper.bench.server import PrivateRedis
from slotkeeper.broker.connection import redact


def _ints(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(x.replace("_", "")) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


@click.command("bench")
@click.option(
    "--url",
    default=None,
    metavar="URL",
    help="Redis to measure against (default: a private redis-server started for the run "
    "and stopped after). Keys go to unique skbench-* namespaces and are deleted.",
)
@click.option("--quick", is_flag=True, help="Short runs (seconds, not minutes): a smoke check.")
@click.option(
    "--json",
    "json_path",
    default=None,
    metavar="PATH",
    help="Also write the full result as JSON to PATH ('-' = stdout, table to stderr).",
)
@click.option(
    "--workloads",
    default=",".join(ALL_WORKLOADS),
    show_default=True,
    help="Comma-separated subset of W1..W5, and of R1,R2,R3,T1 (rates and templates; not run "
    "by default).",
)
@click.option(
    "--levels",
    default=None,
    metavar="N,N,...",
    help="W5 live-lease levels (default 10,1000,10000,100000; quick 10,1000).",
)
@click.option(
    "--reclaim",
    default=None,
    metavar="N,N,...",
    help="W5 expired leases to reclaim (default 10000,100000; quick 2000).",
)
@click.option(
    "--repeats",
    default=None,
    type=click.IntRange(1, 20),
    help="W1 runs per implementation; the median run is reported (default 3).",
)
def bench(
    url: str | None,
    quick: bool,
    json_path: str | None,
    workloads: str,
    levels: str | None,
    reclaim: str | None,
    repeats: int | None,
) -> None:
    """Measure slotkeeper next to a hand-written Lua ZSET semaphore (the reference) and raw
    PING/EVALSHA round trips (the floor), on the same Redis, and check the performance targets
    (the README's Performance table).

    W1 uncontended cycles; W2 4 processes on 2 slots; W3 release->grant handoff; W4 a SIGKILLed
    holder; W5 10..100,000 live leases over 100 limits, memory, reclaim of expired leases.
    """
    everything = tuple(w.strip().upper() for w in workloads.split(",") if w.strip())
    unknown = [w for w in everything if w not in ALL_WORKLOADS + RATE_WORKLOADS]
    if unknown or not everything:
        raise click.BadParameter(
            f"unknown workloads {unknown}; choose from "
            f"{','.join(ALL_WORKLOADS + RATE_WORKLOADS)}",
            param_hint="--workloads",
        )
    chosen = tuple(w for w in everything if w in ALL_WORKLOADS)
    rate_chosen = tuple(w for w in everything if w in RATE_WORKLOADS)
    config = BenchConfig.quick_config(chosen) if quick else BenchConfig(workloads=chosen)
    lv, rc = _ints(levels), _ints(reclaim)
    if lv:
        config.w5_levels = lv
    if rc:
        config.w5_reclaim = rc
    if repeats:
        config.w1_repeats = repeats
    to_stdout = json_path == "-"
    out = sys.stderr if to_stdout else sys.stdout

    def go(target: str, private: bool) -> dict[str, Any]:
        click.echo(
            f"slotkeeper bench against {redact(target)}"
            f"{' (private redis-server)' if private else ''}",
            err=True,
        )
        with click.progressbar(
            length=config.steps(),
            label="bench",
            file=sys.stderr,
            item_show_func=lambda s: s or "",
            show_eta=False,
        ) as bar:
            return run_bench(target, config, tick=lambda what: bar.update(1, what), private=private)

    def both(target: str, private: bool) -> dict[str, Any]:
        res: dict[str, Any] = go(target, private) if chosen else {}
        if rate_chosen:
            click.echo(f"rate workloads {','.join(rate_chosen)} ...", err=True)
            res["rates"] = run_rates(target, rate_chosen, quick)
        return res

    if url:
        result = both(url, private=False)
    else:
        with PrivateRedis() as private_url:
            result = both(private_url, private=True)
    if chosen:
        click.echo(render(result), file=out)
    if rate_chosen:
        click.echo(render_rates(result["rates"]), file=out)
    if to_stdout:
        result = dict(result, targets=targets(result)) if chosen else result
        click.echo(json.dumps(result, indent=2, default=str))
    elif json_path:
        write_json(result, json_path)
        click.echo(f"results written to {json_path}", file=out)
