"""slotkeeper.dask.Semaphore: distributed.Semaphore's API on a LocalCluster of several worker
processes (no slotkeeper setup on the workers: the pickled Semaphore carries its configuration).
Bounds are checked by the observer over stamps written inside the ``with sem:`` blocks."""

from __future__ import annotations

import asyncio
import os
import pickle
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed")

from slotkeeper import Limiter, limit  # noqa: E402
from slotkeeper.dask import ReleasedTooOften, Semaphore  # noqa: E402
from tests.support.observer import StampWriter, check  # noqa: E402
from tests.support.redisproc import RedisProc  # noqa: E402


@pytest.fixture(scope="module")
def slim(redis_server: RedisProc) -> Limiter:
    return Limiter(redis_server.url, "sem" + uuid.uuid4().hex[:8], ttl=5.0)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    cluster = distributed.LocalCluster(
        n_workers=3, processes=True, threads_per_worker=2, dashboard_address=":0"
    )
    try:
        with distributed.Client(cluster) as c:
            c.wait_for_workers(3, timeout=120)
            yield c
    finally:
        cluster.close()


def hold(i: int, sem: Semaphore, stamps: str, seconds: float) -> int:
    writer = StampWriter(Path(stamps) / f"{os.getpid()}.stamps")
    with sem:
        lid = uuid.uuid4().hex
        writer.write("S", lid, sem.name, 1)
        time.sleep(seconds)
        writer.write("E", lid, "ok")
    writer.close()
    return os.getpid()


def try_acquire(sem: Semaphore, timeout: Any) -> tuple[bool, int]:
    got = sem.acquire(timeout=timeout)
    value = sem.get_value()
    if got:
        sem.release()
    return got, value


def test_bound_held_across_worker_processes(client: Any, slim: Limiter, tmp_path: Path) -> None:
    sem = Semaphore(max_leases=2, name="db-" + uuid.uuid4().hex[:6], limiter=slim)
    futs = client.map(hold, range(12), sem=sem, stamps=str(tmp_path), seconds=0.3, pure=False)
    pids = set(client.gather(futs))
    assert len(pids) >= 2  # ran in several worker processes
    rep = check(tmp_path, {sem.name: 2})
    assert not rep.violations, rep.violations
    assert rep.counts["ok"] == 12
    assert rep.max_use[sem.name] == 2, rep.summary()  # 6 threads contended for 2 leases
    assert sem.get_value() == 0


def test_timeouts_return_false_and_get_value_sees_every_holder(client: Any, slim: Limiter) -> None:
    sem = Semaphore(max_leases=1, name="one-" + uuid.uuid4().hex[:6], limiter=slim)
    assert sem.get_value() == 0
    assert sem.acquire() is True
    assert sem.get_value() == 1
    assert client.submit(try_acquire, sem, 0.2, pure=False).result() == (False, 1)
    assert client.submit(try_acquire, sem, "100ms", pure=False).result() == (False, 1)
    assert sem.acquire(timeout=0) is False
    assert sem.release() is True
    assert client.submit(try_acquire, sem, 0, pure=False).result() == (True, 1)
    assert sem.get_value() == 0


def test_release_without_acquire_raises_runtime_error(slim: Limiter) -> None:
    sem = Semaphore(name="r-" + uuid.uuid4().hex[:6], limiter=slim)
    with pytest.raises(RuntimeError, match="Released too often"):
        sem.release()
    with sem:
        pass
    with pytest.raises(ReleasedTooOften):
        sem.release()


def test_pickles_config_only_and_same_names_share_one_limit(slim: Limiter) -> None:
    name = "shared-" + uuid.uuid4().hex[:6]
    a = Semaphore(max_leases=2, name=name, limiter=slim)
    assert a.acquire()
    b = pickle.loads(pickle.dumps(a))
    assert (b.name, b.max_leases, b.limiter.url) == (name, 2, slim.url)
    with pytest.raises(ReleasedTooOften):
        b.release()  # the copy holds none of the original's leases
    with limit(name, limiter=slim):  # a non-Dask holder of the same limit
        assert a.get_value() == 2
        assert b.acquire(timeout=0.1) is False
    assert b.acquire(timeout=0)
    assert a.get_value() == 2
    a.release()
    b.release()
    with pytest.warns(RuntimeWarning, match="Inconsistent max leases"):
        Semaphore(max_leases=3, name=name, limiter=slim)
    assert slim.broker.limit_slots(name) == 2  # the existing size wins


def test_async_with_and_close(slim: Limiter) -> None:
    sem = Semaphore(max_leases=2, name="a-" + uuid.uuid4().hex[:6], limiter=slim)
    inside = peak = 0

    async def one() -> None:
        nonlocal inside, peak
        async with sem:
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.05)
            inside -= 1

    async def main() -> None:
        s2 = await Semaphore(max_leases=2, name=sem.name, limiter=slim)
        assert await s2.acquire_async(timeout=1)
        assert await s2.release_async()
        await asyncio.gather(*(one() for _ in range(6)))

    asyncio.run(main())
    assert peak == 2
    other = Semaphore(max_leases=2, name=sem.name, limiter=slim)
    assert other.acquire()
    with pytest.warns(RuntimeWarning, match="in use"):
        sem.close()  # someone else still holds it: left in place
    assert sem.get_value() == 1
    other.close()  # gives back its lease, then deletes the limit
    assert sem.name not in slim.broker.list_limits()
