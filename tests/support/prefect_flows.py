"""Prefect flows for tests/test_prefect.py, run in a child process (own PREFECT_HOME, Prefect's
temporary local server) so Prefect's global state never enters the test process.

    python -m tests.support.prefect_flows URL NAMESPACE OUT_DIR SCENARIO...

Each scenario writes its stamps (tests/support/classic.py) to OUT_DIR/<scenario>/ and, when it
finishes, OUT_DIR/<scenario>/done.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, tags, task
from prefect.task_runners import ThreadPoolTaskRunner

from slotkeeper import Limiter
from slotkeeper import tags as sk_tags
from slotkeeper.prefect import ThrottledTaskRunner
from tests.support.classic import CLASSIC, body, stamp


@task(tags=["print"])
def say_hi(name: str, log_dir: str, hold: float = 0.2, meet: tuple[str, ...] = ()) -> str:
    return body(name, log_dir, hold, meet)


@task
def work(name: str, log_dir: str, hold: float = 0.1, meet: tuple[str, ...] = ()) -> str:
    return body(name, log_dir, hold, meet)


@task(tags=["print"])
async def say_hi_async(name: str, log_dir: str) -> str:
    start = time.monotonic()
    await asyncio.sleep(0.1)
    stamp(log_dir, name, start, time.monotonic())
    return name


ATTEMPTS: dict[str, int] = {}


@task(tags=["print"], retries=1, retry_delay_seconds=0)
def flaky(name: str, log_dir: str) -> str:
    ATTEMPTS[name] = ATTEMPTS.get(name, 0) + 1
    body(f"{name}-try{ATTEMPTS[name]}", log_dir, 0.05)
    if ATTEMPTS[name] == 1:
        raise RuntimeError("first attempt fails")
    return name


def classic(runner: Any, log_dir: str, case: str) -> list[str]:
    meet = CLASSIC[case][1]

    @flow(task_runner=runner)
    def hello() -> list[str]:
        with tags("example"):
            a = say_hi.submit("alice", log_dir, 0.2, meet.get("alice", ()))
            b = say_hi.submit("bob", log_dir, 0.2, meet.get("bob", ()))
        c = say_hi.submit("chris", log_dir, 0.2, meet.get("chris", ()))
        return [a.result(), b.result(), c.result()]

    return hello()


def nested(runner: Any, log_dir: str) -> list[str]:
    """Same shape as the executor test: prefect.tags and slotkeeper tags blocks both count."""

    @flow(task_runner=runner)
    def groups() -> list[str]:
        futs = []
        with tags("group B"):
            futs.append(work.submit("b1", log_dir, 0.1, ("b2",)))
            with sk_tags("group A"):
                futs.append(work.submit("a1", log_dir, 0.1))
                with tags("group C"):
                    futs.append(work.submit("c1", log_dir, 0.1))
            futs.append(work.submit("b2", log_dir, 0.1, ("b1",)))
        with tags("group C"):
            futs.append(work.submit("c2", log_dir, 0.1))
        return [f.result() for f in futs]

    return groups()


def mapped_async_and_retries(runner: Any, log_dir: str) -> list[str]:
    @flow(task_runner=runner)
    def many() -> list[str]:
        m = say_hi.map([f"m{i}" for i in range(4)], log_dir, 0.05)
        x = [say_hi_async.submit(f"x{i}", log_dir) for i in range(3)]
        r = flaky.submit("r", log_dir)
        return [f.result() for f in [*m, *x, r]]

    return many()


def unit_checks(lim: Limiter) -> None:
    """Definition-time behaviour of ThrottledTaskRunner (no flow run)."""
    import pickle

    from slotkeeper import InvalidArgument, InvalidType

    for bad in ({"print": -1}, {" x": 1}, {"x": None}):
        try:
            ThrottledTaskRunner(ThreadPoolTaskRunner(), bad, limiter=lim)
        except InvalidArgument:
            pass
        else:
            raise AssertionError(f"{bad} accepted")
    try:
        ThrottledTaskRunner(object(), {"x": 1})  # type: ignore[arg-type]
    except InvalidType:
        pass
    else:
        raise AssertionError("a non-TaskRunner accepted")
    r = ThrottledTaskRunner(ThreadPoolTaskRunner(3), {"print": 2}, limiter=lim, timeout=30)
    dup = r.duplicate()
    assert dup == r and dup is not r and dup.options == r.options, (dup, r)
    assert dup.name == "throttled-threadpool", dup.name
    copy = pickle.loads(pickle.dumps(r))
    assert copy == r and copy.limiter is not None and copy.limiter.namespace == lim.namespace
    try:
        r.submit(say_hi, {"name": "x", "log_dir": "/nonexistent"})
    except RuntimeError:
        pass  # not started
    else:
        raise AssertionError("submit before start accepted")
    with r:
        names = lim.broker.list_limits()
        assert [n for n in names if n.endswith(":print")], names
        with tags("example"):
            assert r.task_tags(say_hi) == {"print", "example"}
        assert r.throttled(work) is work  # nothing throttled: submitted as is
        t = r.throttled(say_hi)
        assert t is not say_hi and t.name == say_hi.name and t.tags == say_hi.tags
        assert getattr(t.fn, "names", None) == (f"run-{r.plan.run_id}:print",)  # type: ignore[union-attr]
    assert not [n for n in lim.broker.list_limits() if n.endswith(":print")]


def run(url: str, namespace: str, out: Path, scenario: str) -> None:
    lim = Limiter(url, namespace, ttl=5.0)
    d = out / scenario
    d.mkdir(parents=True, exist_ok=True)
    log_dir = str(d)

    def threads(throttle: dict[str, int | None]) -> ThrottledTaskRunner:
        return ThrottledTaskRunner(ThreadPoolTaskRunner(max_workers=5), throttle, limiter=lim)

    def dask(throttle: dict[str, int | None]) -> ThrottledTaskRunner:
        from prefect_dask import DaskTaskRunner

        inner = DaskTaskRunner(
            cluster_kwargs={
                "n_workers": 2,
                "threads_per_worker": 3,
                "processes": True,
                "dashboard_address": ":0",
            }
        )
        return ThrottledTaskRunner(inner, throttle, limiter=lim)

    def ray(throttle: dict[str, int | None]) -> ThrottledTaskRunner:
        """prefect-ray's RayTaskRunner on the Ray cluster the test started (RAY_ADDRESS)."""
        import os

        from prefect_ray import RayTaskRunner

        root = str(Path(__file__).resolve().parents[2])
        inner = RayTaskRunner(
            address=os.environ["RAY_ADDRESS"],
            init_kwargs={"runtime_env": {"env_vars": {"PYTHONPATH": root}}},
        )
        return ThrottledTaskRunner(inner, throttle, limiter=lim)

    runners: dict[str, Callable[[dict[str, int | None]], ThrottledTaskRunner]] = {
        "threads": threads,
        "dask": dask,
        "ray": ray,
    }
    kind, _, what = scenario.partition("-")
    make = runners[kind]
    if what in CLASSIC:
        got = classic(make(CLASSIC[what][0]), log_dir, what)
        assert sorted(got) == ["alice", "bob", "chris"], got
    elif what == "nested":
        got = nested(make({"group A": 1, "group B": 2, "group C": 1}), log_dir)
        assert sorted(got) == ["a1", "b1", "b2", "c1", "c2"], got
    elif what == "unit":
        unit_checks(lim)
    elif what == "mixed":
        got = mapped_async_and_retries(make({"print": 1}), log_dir)
        assert got == ["m0", "m1", "m2", "m3", "x0", "x1", "x2", "r"], got
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    (d / "done").touch()


def main(argv: list[str]) -> None:
    import os

    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url, namespace, out = argv[0], argv[1], Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    (out / "driver.pid").write_text(str(os.getpid()))
    # Prefect's temporary local server, started once here; its URL is exported so the Dask
    # workers (spawned later, inheriting the environment) talk to the same one.
    server = SubprocessASGIServer()
    server.start(timeout=300)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            for scenario in argv[3:]:
                run(url, namespace, out, scenario)
    finally:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
