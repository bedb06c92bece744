"""``slotkeeper demo``: the classic Prefect 0.x task-throttling example, on slotkeeper.

alice and bob are tagged "example" and "print", chris "print"; each prints "<name> was here" ten
times with a random pause. They run under no throttle, {"print": 1}, {"print": 2} and
{"example": 1} through ``ThrottledExecutor`` (run-scoped limits, deleted afterwards) with
``tags(...)`` blocks; each run ends with a timeline of who held a slot when, and a verdict
measured from the tasks' own [start, end] stamps.
"""

from __future__ import annotations

import random
import secrets
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import click

from slotkeeper.broker.errors import SlotkeeperError
from slotkeeper.cli.context import App, json_option, pass_app
from slotkeeper.cli.output import emit
from slotkeeper.cli.timeline import Stamp, chart, max_concurrent
from slotkeeper.executor import ThrottledExecutor
from slotkeeper.limiter import Limiter
from slotkeeper.tags import tags

PEOPLE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("alice", ("example", "print")),
    ("bob", ("example", "print")),
    ("chris", ("print",)),
)
THROTTLES: tuple[dict[str, int], ...] = ({}, {"print": 1}, {"print": 2}, {"example": 1})
LINES = 10
PAUSE = (0.02, 0.12)
QUICK_PAUSE = (0.002, 0.01)
TAGS = ("print", "example")


@dataclass
class RunResult:
    throttle: dict[str, int]
    stamps: list[Stamp]
    max_concurrent: dict[str, int]
    ok: bool
    seconds: float

    def verdict(self) -> str:
        parts = []
        for tag in TAGS:
            n = self.max_concurrent[tag]
            if tag in self.throttle:
                bound = self.throttle[tag]
                mark = "held" if n <= bound else "VIOLATED"
                parts.append(f"{tag}: at most {n} at once (bound {bound}) -> {mark}")
            else:
                parts.append(f"{tag}: up to {n} at once (unthrottled)")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "throttle": self.throttle,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "max_concurrent": self.max_concurrent,
            "verdict": self.verdict(),
            "stamps": [asdict(s) for s in self.stamps],
        }


def throttle_text(throttle: dict[str, int]) -> str:
    if not throttle:
        return "no throttle"
    return "throttle {" + ", ".join(f'"{k}": {v}' for k, v in throttle.items()) + "}"


_PRINT_LOCK = threading.Lock()


class Task:
    """The body of one person's task: print "<name> was here" with pauses, stamping when it ran
    (after its slots were granted, before they are released). A picklable callable class."""

    def __init__(
        self, who: str, tags: tuple[str, ...], pauses: list[float], t0: float, quiet: bool
    ) -> None:
        self.who = who
        self.tags = tags
        self.pauses = pauses
        self.t0 = t0
        self.quiet = quiet
        self.__name__ = f"demo-{who}"

    def __call__(self) -> Stamp:
        start = time.time() - self.t0
        for p in self.pauses:
            if not self.quiet:
                with _PRINT_LOCK:
                    click.echo(f"{self.who} was here")
            time.sleep(p)
        return Stamp(self.who, self.tags, start, time.time() - self.t0)


class Demo:
    """Runs the example through ``ThrottledExecutor`` (run-scoped limits, deleted afterwards)."""

    def __init__(
        self, limiter: Limiter, pause: tuple[float, float], rng: random.Random, quiet: bool
    ) -> None:
        self.limiter = limiter
        self.pause = pause
        self.rng = rng
        self.quiet = quiet
        self.run_id = "demo-" + secrets.token_hex(3)

    def run(self, index: int, throttle: dict[str, int]) -> RunResult:
        pool = ThreadPoolExecutor(max_workers=len(PEOPLE))
        t0 = time.time()
        with ThrottledExecutor(
            pool, throttle=throttle, limiter=self.limiter, run_id=f"{self.run_id}-{index}"
        ) as ex:
            futures = []
            for who, person_tags in PEOPLE:
                pauses = [self.rng.uniform(*self.pause) for _ in range(LINES)]
                with tags(*person_tags):
                    futures.append(ex.submit(Task(who, person_tags, pauses, t0, self.quiet)))
            stamps = [f.result() for f in futures]
        seconds = time.time() - t0
        mc = {tag: max_concurrent(stamps, tag) for tag in TAGS}
        ok = all(mc[tag] <= bound for tag, bound in throttle.items())
        return RunResult(dict(throttle), stamps, mc, ok, seconds)


@click.command()
@click.option("--quick", is_flag=True, help="Shorter pauses (a few seconds in all).")
@click.option("--seed", type=int, default=None, help="Seed the random pauses.")
@click.option(
    "--width",
    type=click.IntRange(20, 200),
    default=60,
    show_default=True,
    help="Width of the timeline charts.",
)
@json_option
@pass_app
def demo(app: App, quick: bool, seed: int | None, width: int) -> None:
    """The classic throttling example: alice, bob and chris under four throttles."""
    limiter = Limiter(app.resolved_url(), app.namespace, ttl=10)
    d = Demo(limiter, QUICK_PAUSE if quick else PAUSE, random.Random(seed), quiet=app.json)
    enc = (getattr(sys.stdout, "encoding", "") or "").lower()
    unicode = "utf" in enc
    if not app.json:
        click.echo(f"slotkeeper demo on {app.display_url}, namespace {app.namespace!r}")
        click.echo(
            f"alice and bob are tagged example+print, chris print; each prints {LINES} lines."
        )
    results = []
    for i, throttle in enumerate(THROTTLES, 1):
        if not app.json:
            click.echo(f"\n=== run {i}: {throttle_text(throttle)} ===")
        r = d.run(i, throttle)
        results.append(r)
        if not app.json:
            click.echo(f"\nwho held a slot when ({r.seconds:.2f}s):")
            click.echo(chart(r.stamps, width, unicode))
            click.echo(f"verdict: {r.verdict()}")
    ok = all(r.ok for r in results)
    emit(
        app,
        {"namespace": app.namespace, "ok": ok, "runs": [r.as_dict() for r in results]},
        "\nall bounds held" if ok else "\nA BOUND WAS VIOLATED",
    )
    if not ok:
        raise SlotkeeperError("a throttle bound was violated (see the verdicts)")
