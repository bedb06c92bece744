"""ThrottledExecutor over threads: the classic example, nested tags, scopes, lifecycle."""

from __future__ import annotations

import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from slotkeeper import (
    InvalidArgument,
    InvalidName,
    InvalidType,
    Limiter,
    LimitNotFound,
    ThrottledExecutor,
    tagged,
    tags,
)
from slotkeeper.throttle import ThrottledCall
from tests.support.classic import (
    CLASSIC,
    by_name,
    check_classic,
    max_concurrent,
    overlap,
    read_stamps,
    say_hi,
    submit_classic,
    work,
)


@pytest.mark.parametrize("case", list(CLASSIC))
def test_classic_example_on_threads(limiter: Limiter, tmp_path: Path, case: str) -> None:
    with ThrottledExecutor(ThreadPoolExecutor(4), CLASSIC[case][0], limiter=limiter) as ex:
        futs = submit_classic(ex, str(tmp_path), case)
        assert sorted(f.result(60) for f in futs) == ["alice", "bob", "chris"]  # type: ignore[attr-defined]
    check_classic(str(tmp_path), case)


def test_nested_tags_every_bound_holds(limiter: Limiter, tmp_path: Path) -> None:
    d = str(tmp_path)
    throttle = {"group A": 1, "group B": 2, "group C": 1}
    expected = {
        "b1": {"group B"},
        "a1": {"group A", "group B"},
        "c1": {"group A", "group B", "group C"},
        "b2": {"group B"},
        "c2": {"group C"},
    }
    with ThrottledExecutor(ThreadPoolExecutor(5), throttle, limiter=limiter) as ex:
        futs = []
        with tags("group B"):
            futs.append(ex.submit(work, "b1", d, 0.1, ("b2",)))
            with tags("group A"):
                futs.append(ex.submit(work, "a1", d, 0.1))
                with tags("group C"):
                    futs.append(ex.submit(work, "c1", d, 0.1))
                    wrapped = ex.wrap(work)
                    assert isinstance(wrapped, ThrottledCall)
                    assert set(wrapped.names) == {ex.limits[t] for t in throttle}
            futs.append(ex.submit(work, "b2", d, 0.1, ("b1",)))
        with tags("group C"):
            futs.append(ex.submit(work, "c2", d, 0.1))
        for f in futs:
            f.result(60)
    stamps = read_stamps(d)
    assert sorted(s.name for s in stamps) == sorted(expected)
    for tag, bound in throttle.items():
        carrying = [s for s in stamps if tag in expected[s.name]]
        assert max_concurrent(carrying) <= bound, (tag, carrying)
    s = by_name(stamps)
    # b1 and b2 (only "group B") waited for each other to start: B's bound is 2, not 1.
    # (Meeting tasks need nothing but B, and every other task finishes without waiting on
    # anyone, so fair queueing cannot deadlock the meeting.)
    assert overlap(s["b1"], s["b2"])


def test_several_throttled_tags_are_taken_in_one_acquire(limiter: Limiter, tmp_path: Path) -> None:
    d = str(tmp_path)
    with ThrottledExecutor(ThreadPoolExecutor(6), {"x": 1, "y": 1}, limiter=limiter) as ex:
        futs = []
        for i in range(3):
            with tags("x"):
                futs.append(ex.submit(work, f"x{i}", d, 0.05))
                with tags("y"):
                    call = ex.wrap(work)
                    assert isinstance(call, ThrottledCall)
                    assert call.names == tuple(sorted(ex.limits.values()))
                    futs.append(ex.submit(work, f"xy{i}", d, 0.05))
            with tags("y"):
                futs.append(ex.submit(work, f"y{i}", d, 0.05))
        for f in futs:
            f.result(60)
    stamps = read_stamps(d)
    assert len(stamps) == 9
    assert max_concurrent([s for s in stamps if "x" in s.name]) == 1
    assert max_concurrent([s for s in stamps if "y" in s.name]) == 1


def test_untagged_and_unthrottled_tasks_run_unwrapped(limiter: Limiter, tmp_path: Path) -> None:
    d = str(tmp_path)
    with ThrottledExecutor(ThreadPoolExecutor(3), {"print": 1}, limiter=limiter) as ex:
        assert ex.wrap(work) is work
        with tags("unrelated"):
            assert ex.wrap(work) is work
        futs = [
            ex.submit(work, n, d, 0.1, tuple({"u1", "u2", "u3"} - {n})) for n in ("u1", "u2", "u3")
        ]
        for f in futs:
            f.result(60)
    assert max_concurrent(read_stamps(d)) >= 2  # they met: nothing throttled them


def test_map_keeps_order_and_throttles(limiter: Limiter, tmp_path: Path) -> None:
    d = str(tmp_path)
    names = [f"n{i}" for i in range(6)]
    with ThrottledExecutor(ThreadPoolExecutor(4), {"print": 2}, limiter=limiter) as ex:
        out = list(ex.map(say_hi, names, [d] * 6, [0.05] * 6))
    assert out == names
    assert max_concurrent(read_stamps(d)) <= 2


def test_run_scope_limits_are_private_and_deleted_on_shutdown(
    limiter: Limiter, tmp_path: Path
) -> None:
    broker = limiter.broker
    limiter.create("print", 7)  # a CLI-made global limit of the same name: never touched
    ex1 = ThrottledExecutor(ThreadPoolExecutor(1), {"print": 1}, limiter=limiter)
    ex2 = ThrottledExecutor(ThreadPoolExecutor(1), {"print": 2}, limiter=limiter)
    n1, n2 = ex1.limits["print"], ex2.limits["print"]
    assert n1 != n2 and n1.startswith(f"run-{ex1.run_id}:")
    assert broker.limit_slots(n1) == 1 and broker.limit_slots(n2) == 2
    assert ex1.submit(say_hi, "a", str(tmp_path), 0.01).result(30) == "a"
    ex1.shutdown()
    names = broker.list_limits()
    assert n1 not in names and n2 in names and "print" in names
    ex2.shutdown()
    assert broker.list_limits() == ["print"]
    assert broker.limit_slots("print") == 7
    assert broker.snapshot("print").used == 0


def test_shutdown_without_wait_cleans_up_after_the_last_task(
    limiter: Limiter, tmp_path: Path
) -> None:
    gate = threading.Event()

    @tagged("print")
    def blocked() -> bool:
        return gate.wait(30)

    ex = ThrottledExecutor(ThreadPoolExecutor(2), {"print": 1}, limiter=limiter)
    name = ex.limits["print"]
    fut = ex.submit(blocked)
    ex.shutdown(wait=False)
    with pytest.raises(RuntimeError):
        ex.submit(work, "late", str(tmp_path))
    assert name in limiter.broker.list_limits()  # still running: its limit stays
    gate.set()
    assert fut.result(30) is True
    ex.executor.shutdown(wait=True)
    deadline = threading.Event()
    for _ in range(200):  # the done-callback runs in the worker thread right after the result
        if name not in limiter.broker.list_limits():
            break
        deadline.wait(0.05)
    assert name not in limiter.broker.list_limits()


def test_global_scope_shares_the_named_limit(limiter: Limiter, tmp_path: Path) -> None:
    d = str(tmp_path)
    limiter.create("print", 1)
    # an existing limit keeps its own size: the throttle value 3 is only a creation default
    with ThrottledExecutor(
        ThreadPoolExecutor(4), {"print": 3, "fresh": 2}, limiter=limiter, scope="global"
    ) as ex:
        assert ex.limits == {"print": "print", "fresh": "fresh"}
        assert limiter.broker.limit_slots("fresh") == 2
        futs = [ex.submit(say_hi, f"p{i}", d, 0.05) for i in range(4)]
        for f in futs:
            f.result(60)
    assert max_concurrent(read_stamps(d)) == 1
    assert set(limiter.broker.list_limits()) == {"print", "fresh"}  # never deleted
    assert limiter.broker.limit_slots("print") == 1


def test_global_scope_none_means_must_exist(limiter: Limiter) -> None:
    with pytest.raises(LimitNotFound) as err:
        ThrottledExecutor(ThreadPoolExecutor(1), {"db": None}, limiter=limiter, scope="global")
    assert "create db --slots" in str(err.value)
    limiter.create("db", 2)
    with ThrottledExecutor(
        ThreadPoolExecutor(1), {"db": None}, limiter=limiter, scope="global"
    ) as ex:
        assert ex.limits == {"db": "db"}


def test_templated_tag_resolves_where_the_task_runs(
    limiter: Limiter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLOTKEEPER_WORKER", "wx")
    d = str(tmp_path)
    ex = ThrottledExecutor(ThreadPoolExecutor(3), {"gpu:{worker}": 1}, limiter=limiter)
    run_limit = f"run-{ex.run_id}:gpu:wx"
    assert run_limit not in limiter.broker.list_limits()  # created where {worker} is known
    with tags("gpu:{worker}"):
        futs = [ex.submit(work, f"g{i}", d, 0.05) for i in range(3)]
    for f in futs:
        f.result(60)
    assert limiter.broker.limit_slots(run_limit) == 1
    assert max_concurrent(read_stamps(d)) == 1
    ex.shutdown()
    assert run_limit not in limiter.broker.list_limits()


def test_task_errors_reach_the_future_and_free_the_slot(limiter: Limiter) -> None:
    @tagged("print")
    def boom() -> None:
        raise KeyError("boom")

    with ThrottledExecutor(ThreadPoolExecutor(2), {"print": 1}, limiter=limiter) as ex:
        with pytest.raises(KeyError):
            ex.submit(boom).result(30)
        assert limiter.broker.snapshot(ex.limits["print"]).used == 0


def test_throttled_call_pickles_config_only(limiter: Limiter) -> None:
    ex = ThrottledExecutor(ThreadPoolExecutor(1), {"print": 1}, limiter=limiter)
    call = ex.wrap(say_hi)
    assert isinstance(call, ThrottledCall)
    copy = pickle.loads(pickle.dumps(call))
    assert copy.fn is say_hi and copy.names == call.names
    assert copy.limiter is not None and copy.limiter.namespace == limiter.namespace
    assert copy.limiter.url == limiter.url
    ex.shutdown()


def test_validation(limiter: Limiter) -> None:
    pool = ThreadPoolExecutor(1)
    with pytest.raises(InvalidType):
        ThrottledExecutor(pool, ["print"], limiter=limiter)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        ThrottledExecutor(pool, {"print": -1}, limiter=limiter)
    with pytest.raises(InvalidArgument):
        ThrottledExecutor(pool, {" print": 1}, limiter=limiter)
    with pytest.raises(InvalidName):
        ThrottledExecutor(pool, {"a{b}": 1}, limiter=limiter)
    with pytest.raises(InvalidArgument):
        ThrottledExecutor(pool, {"print": None}, limiter=limiter)  # None needs scope="global"
    with pytest.raises(InvalidArgument):
        ThrottledExecutor(pool, {"print": 1}, limiter=limiter, scope="world")  # type: ignore[arg-type]
    with pytest.raises(InvalidType):
        ThrottledExecutor(object(), {"print": 1}, limiter=limiter)  # type: ignore[arg-type]
    assert limiter.broker.list_limits() == []
    pool.shutdown()
