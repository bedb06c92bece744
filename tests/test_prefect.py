"""Prefect 3 (the `prefect` extra): ThrottledTaskRunner around ThreadPoolTaskRunner and
prefect-dask's DaskTaskRunner.

The flows run in ONE child process (tests/support/prefect_flows.py) with its own PREFECT_HOME and
Prefect's temporary local server, so Prefect's global state stays out of the test process; each
test then checks one scenario's stamps with the independent observer."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from slotkeeper import Limiter
from tests.support.classic import (
    CLASSIC,
    by_name,
    check_classic,
    max_concurrent,
    overlap,
    read_stamps,
)
from tests.support.redisproc import RedisProc

ROOT = Path(__file__).resolve().parent.parent
THREADS = [f"threads-{case}" for case in CLASSIC] + ["threads-nested", "threads-mixed"]
DASK = ["dask-print=1", "dask-example=1"]
SCENARIOS = ["threads-unit", *THREADS, *DASK]


@pytest.fixture(scope="module")
def flows(
    redis_server: RedisProc, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Limiter]:
    for mod in ("prefect", "prefect_dask"):  # the `prefect` extra: a missing one is a failure
        assert importlib.util.find_spec(mod) is not None, f"{mod} is not installed"
    base = tmp_path_factory.mktemp("prefect")
    out = base / "out"
    lim = Limiter(redis_server.url, "prefect" + uuid.uuid4().hex[:8])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(base / "home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_LOGGING_TO_API_ENABLED="false",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.prefect_flows",
            lim.url,
            lim.namespace,
            str(out),
            *SCENARIOS,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out, lim


def scenario_dir(flows: tuple[Path, Limiter], name: str) -> str:
    d = flows[0] / name
    assert (d / "done").exists(), f"scenario {name} did not finish"
    return str(d)


def test_runner_definition_and_lifecycle(flows: tuple[Path, Limiter]) -> None:
    scenario_dir(flows, "threads-unit")  # its assertions ran in the child (see unit_checks)


@pytest.mark.parametrize("case", list(CLASSIC))
def test_classic_example_on_thread_pool_task_runner(flows: tuple[Path, Limiter], case: str) -> None:
    check_classic(scenario_dir(flows, f"threads-{case}"), case)


@pytest.mark.parametrize("case", ["print=1", "example=1"])
def test_classic_example_on_dask_task_runner(flows: tuple[Path, Limiter], case: str) -> None:
    d = scenario_dir(flows, f"dask-{case}")
    check_classic(d, case)
    driver = int((flows[0] / "driver.pid").read_text())
    assert driver not in {s.pid for s in read_stamps(d)}  # ran on the Dask workers


def test_nested_prefect_and_slotkeeper_tags(flows: tuple[Path, Limiter]) -> None:
    d = scenario_dir(flows, "threads-nested")
    expected = {
        "b1": {"group B"},
        "a1": {"group A", "group B"},
        "c1": {"group A", "group B", "group C"},
        "b2": {"group B"},
        "c2": {"group C"},
    }
    stamps = read_stamps(d)
    assert sorted(s.name for s in stamps) == sorted(expected)
    for tag, bound in {"group A": 1, "group B": 2, "group C": 1}.items():
        assert max_concurrent([s for s in stamps if tag in expected[s.name]]) <= bound, tag
    s = by_name(stamps)
    assert overlap(s["b1"], s["b2"])  # they waited for each other: B's bound is 2


def test_map_async_tasks_and_retries_hold_the_bound(flows: tuple[Path, Limiter]) -> None:
    stamps = read_stamps(scenario_dir(flows, "threads-mixed"))
    names = sorted(s.name for s in stamps)
    assert names == sorted(["m0", "m1", "m2", "m3", "x0", "x1", "x2", "r-try1", "r-try2"])
    assert max_concurrent(stamps) == 1  # all tagged "print", throttle {"print": 1}


def test_run_scoped_limits_are_deleted_after_each_flow_run(flows: tuple[Path, Limiter]) -> None:
    for name in SCENARIOS:
        scenario_dir(flows, name)
    lim = flows[1]
    assert lim.broker.list_limits() == []
