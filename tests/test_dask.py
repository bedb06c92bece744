"""Dask: the classic example on a LocalCluster (processes), worker-scoped limits, secede, plugin.

One LocalCluster (processes=True, two workers named w1 and w2, four threads each) serves the
whole module."""

from __future__ import annotations

import os
import pickle
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed")

import slotkeeper.dask as skd  # noqa: E402
from slotkeeper import Limiter, ThrottledExecutor, get_limiter  # noqa: E402
from slotkeeper.naming import ENV_WORKER  # noqa: E402
from tests.support.classic import (  # noqa: E402
    CLASSIC,
    by_name,
    check_classic,
    download,
    max_concurrent,
    model,
    model_inline,
    read_stamps,
    save,
    stamp,
    submit_classic,
)
from tests.support.redisproc import RedisProc  # noqa: E402


def named_cluster(processes: bool, names: tuple[str, ...] = ("w1", "w2"), threads: int = 4) -> Any:
    """A LocalCluster whose workers are named ``names`` (SpecCluster keys are the names)."""
    cluster = distributed.LocalCluster(
        n_workers=0, processes=processes, threads_per_worker=threads, dashboard_address=":0"
    )
    template = next(iter(cluster.new_worker_spec().values()))
    for name in names:
        cluster.worker_spec[name] = dict(template)
    cluster.scale(len(names))
    return cluster


@pytest.fixture(scope="module")
def dlim(redis_server: RedisProc) -> Limiter:
    return Limiter(redis_server.url, "dask" + uuid.uuid4().hex[:8], ttl=5.0)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    c = named_cluster(processes=True)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def client(cluster: Any, dlim: Limiter) -> Iterator[Any]:
    with distributed.Client(cluster) as c:
        c.wait_for_workers(2, timeout=120)
        skd.install(c, dlim)
        yield c


@pytest.mark.parametrize("case", list(CLASSIC))
def test_classic_example_on_a_local_cluster(
    client: Any, dlim: Limiter, tmp_path: Path, case: str
) -> None:
    # the "example=1" run also exercises secede: bob/alice wait outside the worker's thread pool
    ex = ThrottledExecutor(
        client.get_executor(pure=False), CLASSIC[case][0], limiter=dlim, secede=case == "example=1"
    )
    with ex:
        futs = submit_classic(ex, str(tmp_path), case)
        assert sorted(f.result(120) for f in futs) == ["alice", "bob", "chris"]  # type: ignore[attr-defined]
    check_classic(str(tmp_path), case)
    assert os.getpid() not in {s.pid for s in read_stamps(tmp_path)}  # ran on the workers
    assert not [n for n in dlim.broker.list_limits() if n.startswith(f"run-{ex.run_id}:")]


@pytest.mark.parametrize("style", ["limit-inside-task", "limited-wrapper-seceding"])
def test_worker_scoped_limits_image_pipeline(
    client: Any, dlim: Limiter, tmp_path: Path, style: str
) -> None:
    d = str(tmp_path)
    bounds = {"w1": 1, "w2": 2}
    for w, n in bounds.items():
        dlim.set(f"gpu:{w}", slots=n, create=True)
    before = {w: dlim.broker.snapshot(f"gpu:{w}").counters.acquired for w in bounds}
    if style == "limit-inside-task":
        model_task: Any = model_inline  # `with limit("gpu:{worker}")` + the plugin's default
    else:
        model_task = skd.limited("gpu:{worker}", timeout=120, secede=True)(model)
    items = range(20)
    downloads = tuple(f"download-{i}" for i in items)
    saves = tuple(f"save-{i}" for i in items)
    results = []
    for i in items:
        got = client.submit(download, i, d, tuple(set(downloads) - {f"download-{i}"}), pure=False)
        done = client.submit(model_task, got, d, pure=False)
        results.append(client.submit(save, done, d, tuple(set(saves) - {f"save-{i}"}), pure=False))
    assert client.gather(results) == [f"processed-{i}" for i in items]
    stamps = read_stamps(d)
    models = [s for s in stamps if s.kind == "model"]
    assert len(models) == 20 and {s.worker for s in models} <= set(bounds)
    for w, n in bounds.items():
        on_w = [s for s in models if s.worker == w]
        assert max_concurrent(on_w) <= n, (w, on_w)
        # each model call took the slot of the limit of the worker it ran on
        acquired = dlim.broker.snapshot(f"gpu:{w}").counters.acquired - before[w]
        assert acquired == len(on_w)
    # downloads and saves are not throttled: each waited for another one to start
    assert max_concurrent([s for s in stamps if s.kind == "download"]) >= 2
    assert max_concurrent([s for s in stamps if s.kind == "save"]) >= 2


def _hold_until(marker: str, log_dir: str) -> str:
    start = time.monotonic()
    give_up = start + 60
    while not Path(marker).exists() and time.monotonic() < give_up:
        time.sleep(0.01)
    stamp(log_dir, "holder", start, time.monotonic())
    return "held"


def _quick(marker: str, log_dir: str) -> str:
    start = time.monotonic()
    Path(marker).touch()
    stamp(log_dir, "quick", start, time.monotonic())
    return "quick"


def _noop(i: int) -> int:
    return i


def test_secede_frees_the_worker_thread_while_waiting(
    client: Any, dlim: Limiter, tmp_path: Path
) -> None:
    d, marker = str(tmp_path), str(tmp_path / "quick-ran")
    name = "secede-" + uuid.uuid4().hex[:6]
    dlim.create(name, 1)
    on_w1: dict[str, Any] = dict(workers=["w1"], allow_other_workers=False, pure=False)
    holder = client.submit(skd.limited(name, limiter=dlim)(_hold_until), marker, d, **on_w1)
    for _ in range(1200):
        if dlim.broker.snapshot(name).used == 1:
            break
        time.sleep(0.05)
    # four waiters would fill w1's four threads (with the holder's: five) if they did not secede
    waiter = skd.limited(name, limiter=dlim, secede=True, timeout=120)(_noop)
    waiters = [client.submit(waiter, i, **on_w1) for i in range(4)]
    for _ in range(1200):
        if dlim.broker.snapshot(name).n_waiters == 4:
            break
        time.sleep(0.05)
    assert dlim.broker.snapshot(name).n_waiters == 4
    quick = client.submit(_quick, marker, d, **on_w1)
    assert quick.result(120) == "quick" and holder.result(120) == "held"
    assert client.gather(waiters) == [0, 1, 2, 3]
    s = by_name(read_stamps(d))
    assert s["quick"].end < s["holder"].end  # quick ran on w1 while the waiters waited
    assert dlim.broker.snapshot(name).used == 0


def _identity() -> tuple[str, str | None, str | None, str]:
    lim = get_limiter()
    return lim.namespace, lim.worker, os.environ.get(ENV_WORKER), distributed.get_worker().name


def test_plugin_via_scheduler_address_configures_every_worker(
    cluster: Any, client: Any, dlim: Limiter, redis_server: RedisProc
) -> None:
    other = Limiter(redis_server.url, "other" + uuid.uuid4().hex[:6])
    try:
        with distributed.Client(cluster.scheduler_address) as c2:  # an existing scheduler
            plugin = skd.install(c2, other)
            assert plugin.url == other.url and plugin.namespace == other.namespace
            for w in ("w1", "w2"):
                got = c2.submit(_identity, workers=[w], pure=False).result(60)
                assert got == (other.namespace, w, w, w)
    finally:
        skd.install(client, dlim)  # the module's configuration back
    got = client.submit(_identity, workers=["w2"], pure=False).result(60)
    assert got == (dlim.namespace, "w2", "w2", "w2")


def test_from_env_prefers_the_worker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeWorker:
        name = "dask-name"

    assert skd.from_env(FakeWorker()) == "dask-name"
    monkeypatch.setenv(ENV_WORKER, "env-name")
    assert skd.from_env(FakeWorker()) == "env-name"


def test_several_workers_in_one_process_keep_their_own_identity(
    redis_server: RedisProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    import slotkeeper.limiter as limiter_module

    saved = limiter_module._default
    for var in ("SLOTKEEPER_URL", "SLOTKEEPER_NAMESPACE", ENV_WORKER):
        monkeypatch.setenv(var, "placeholder")  # monkeypatch restores (removes) them afterwards
        monkeypatch.delenv(var)
    lim = Limiter(redis_server.url, "threads" + uuid.uuid4().hex[:6])
    c = named_cluster(processes=False, names=("t1", "t2"), threads=2)
    try:
        with distributed.Client(c) as client:
            client.wait_for_workers(2, timeout=60)
            skd.install(client, lim)
            for w in ("t1", "t2"):
                ns, worker, env, _ = client.submit(_identity, workers=[w], pure=False).result(60)
                assert (ns, worker) == (lim.namespace, w)
                assert env is None  # two identities in one process: none exported
            assert set(skd.worker_names().values()) == {"t1", "t2"}
    finally:
        c.close()
        limiter_module._default = saved


# -- pickling of limited() tasks ------------------------------------------------------------------


@skd.limited("x", occupy=1)
def decorated(v: int) -> int:
    return v + 1


def test_decorated_task_pickles_by_reference_and_wrapped_one_by_value(limiter: Limiter) -> None:
    assert pickle.loads(pickle.dumps(decorated)) is decorated
    assert decorated.__name__ == "decorated" and decorated.__wrapped__ is not None  # type: ignore[attr-defined]
    wrapped = skd.limited("y", limiter=limiter, timeout=5)(_noop)
    copy = pickle.loads(pickle.dumps(wrapped))
    assert isinstance(copy, skd.LimitedTask) and copy.fn is _noop and copy.names == ("y",)
    limiter.create("y", 1)
    assert copy(41) == 41  # holds "y" around the call, outside Dask too
    assert limiter.broker.snapshot("y").counters.acquired == 1


def test_limited_validates_at_decoration() -> None:
    with pytest.raises(ValueError):
        skd.limited(" bad")(_noop)
    with pytest.raises(ValueError):
        skd.limited("ok", occupy=0)(_noop)
