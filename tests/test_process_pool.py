"""ThrottledExecutor over process pools (fork, spawn, forkserver), crashes, and several processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from slotkeeper import Limiter, ThrottledExecutor, configure, tags
from tests.support.classic import (
    CLASSIC,
    check_classic,
    default_limiter_task,
    hold_forever,
    max_concurrent,
    read_stamps,
    run_shared_executor,
    submit_classic,
)

METHODS = ["fork", "spawn", "forkserver"]


def pool(method: str, n: int = 3) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(n, mp_context=multiprocessing.get_context(method))


@pytest.mark.parametrize("case", list(CLASSIC))
@pytest.mark.parametrize("method", METHODS)
def test_classic_example_on_processes(
    limiter: Limiter, tmp_path: Path, method: str, case: str
) -> None:
    with ThrottledExecutor(pool(method), CLASSIC[case][0], limiter=limiter) as ex:
        futs = submit_classic(ex, str(tmp_path), case)
        assert sorted(f.result(120) for f in futs) == ["alice", "bob", "chris"]  # type: ignore[attr-defined]
    check_classic(str(tmp_path), case)
    assert len({s.pid for s in read_stamps(tmp_path)} - {os.getpid()}) >= 1  # ran in children
    assert limiter.broker.list_limits() == []  # run-scoped limits are gone


def _wait_for_pid(path: Path) -> int:
    for _ in range(1200):
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError("the task never started")


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_killed_child_frees_its_slot_by_ttl(limiter: Limiter, tmp_path: Path, method: str) -> None:
    limiter.create("gpu", 1)
    pid_file = tmp_path / "pid"
    ex = ThrottledExecutor(pool(method, 2), {"gpu": 1}, limiter=limiter, scope="global", ttl=1.5)
    with tags("gpu"):
        fut = ex.submit(hold_forever, str(pid_file))
    pid = _wait_for_pid(pid_file)
    snap = limiter.broker.snapshot("gpu")
    assert snap.used == 1 and [h.pid for h in snap.holders] == [pid]
    os.kill(pid, signal.SIGKILL)
    assert isinstance(fut.exception(60), BrokenProcessPool)
    ex.shutdown()
    # nobody releases the dead child's lease: it comes back by TTL (no daemon running)
    lease = limiter.acquire("gpu", timeout=60)
    assert lease.throttled and not lease.lost
    lease.release()


def test_broken_pool_still_deletes_run_scoped_limits(limiter: Limiter, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    ex = ThrottledExecutor(pool("spawn", 1), {"gpu": 1}, limiter=limiter, ttl=30)
    name = ex.limits["gpu"]
    with tags("gpu"):
        fut = ex.submit(hold_forever, str(pid_file))
    os.kill(_wait_for_pid(pid_file), signal.SIGKILL)
    assert isinstance(fut.exception(60), BrokenProcessPool)
    assert limiter.broker.snapshot(name).used == 1  # the dead child's lease, 30 s TTL
    ex.shutdown()  # every task of the run is done: the orphan lease is revoked, the limit deleted
    assert limiter.broker.list_limits() == []


def test_two_executors_in_two_processes_share_one_global_limit(
    limiter: Limiter, tmp_path: Path
) -> None:
    limiter.create("shared", 2)
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=run_shared_executor,
            args=(limiter.url, limiter.namespace, str(tmp_path), who, 10),
        )
        for who in ("p1", "p2")
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    stamps = read_stamps(tmp_path)
    assert len(stamps) == 20
    assert len({s.pid for s in stamps}) == 2  # two processes, each with its own executor
    assert max_concurrent(stamps) <= 2
    assert limiter.broker.list_limits() == ["shared"]
    assert limiter.broker.snapshot("shared").used == 0


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_configure_reaches_spawned_children(
    limiter: Limiter, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """spawn children inherit the environment configure() exported. forkserver children inherit
    the environment of the fork server, started once per process (maybe before configure()):
    the documented way there is the pool initializer."""
    import slotkeeper.limiter as limiter_module

    monkeypatch.setattr(limiter_module, "_default", None)  # restored after the test
    monkeypatch.setenv("SLOTKEEPER_URL", "placeholder")  # so monkeypatch restores the env too
    monkeypatch.setenv("SLOTKEEPER_NAMESPACE", "placeholder")
    configure(limiter.url, limiter.namespace)  # exports SLOTKEEPER_URL / _NAMESPACE
    limiter.create("cfg", 1)
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        inner = ProcessPoolExecutor(
            2, mp_context=ctx, initializer=configure, initargs=(limiter.url, limiter.namespace)
        )
    else:
        inner = ProcessPoolExecutor(2, mp_context=ctx)
    with ThrottledExecutor(inner, {"print": 1}) as ex:  # no limiter: the default one
        assert ex.limiter.namespace == limiter.namespace
        with tags("print"):
            futs = [ex.submit(default_limiter_task) for _ in range(3)]
        assert [f.result(120) for f in futs] == [(limiter.namespace, limiter.namespace)] * 3
    assert limiter.broker.snapshot("cfg").counters.acquired == 3
    assert limiter.broker.list_limits() == ["cfg"]
