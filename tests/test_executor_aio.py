"""slotkeeper.aio.gather: a throttled asyncio.gather."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from pathlib import Path

import pytest

from slotkeeper import Limiter
from slotkeeper.aio import gather
from tests.support.classic import by_name, max_concurrent, overlap, read_stamps, stamp


async def job(name: str, log_dir: str, hold: float = 0.05, meet: tuple[str, ...] = ()) -> str:
    start = time.monotonic()
    Path(log_dir, f"started-{name}").touch()
    await asyncio.sleep(hold)
    give_up = time.monotonic() + 15
    while meet and time.monotonic() < give_up:
        if any(Path(log_dir, f"started-{m}").exists() for m in meet):
            break
        await asyncio.sleep(0.005)
    stamp(log_dir, name, start, time.monotonic())
    return name


def test_gather_holds_the_bound_and_keeps_order(limiter: Limiter, tmp_path: Path) -> None:
    limiter.create("api", 2)
    d = str(tmp_path)
    names = [f"j{i}" for i in range(8)]

    async def main() -> list[str]:
        # j0 and j1 wait for each other: the bound 2 really admits two at once
        jobs = [job("j0", d, meet=("j1",)), job("j1", d, meet=("j0",))]
        jobs += [job(n, d) for n in names[2:]]
        return await gather(*jobs, names="api", limiter=limiter)

    assert asyncio.run(main()) == names
    stamps = read_stamps(d)
    assert max_concurrent(stamps) == 2
    s = by_name(stamps)
    assert overlap(s["j0"], s["j1"])
    assert limiter.broker.snapshot("api").used == 0


def test_several_names_are_taken_together(limiter: Limiter, tmp_path: Path) -> None:
    limiter.create("a", 1)
    limiter.create("b", 3)
    d = str(tmp_path)

    async def main() -> list[str]:
        return await gather(*(job(f"k{i}", d) for i in range(4)), names=["a", "b"], limiter=limiter)

    assert asyncio.run(main()) == ["k0", "k1", "k2", "k3"]
    assert max_concurrent(read_stamps(d)) == 1
    assert limiter.broker.snapshot("a").counters.acquired == 4
    assert limiter.broker.snapshot("b").counters.acquired == 4


def test_return_exceptions_and_the_slot_comes_back(limiter: Limiter) -> None:
    limiter.create("api", 1)

    async def boom() -> None:
        raise KeyError("x")

    async def ok() -> str:
        return "ok"

    async def main() -> list[object]:
        return await gather(boom(), ok(), names="api", limiter=limiter, return_exceptions=True)

    got = asyncio.run(main())
    assert isinstance(got[0], KeyError) and got[1] == "ok"
    with pytest.raises(KeyError):
        asyncio.run(gather(boom(), names="api", limiter=limiter))
    assert limiter.broker.snapshot("api").used == 0


def test_cancelled_gather_leaves_no_slot_or_ticket(limiter: Limiter, tmp_path: Path) -> None:
    limiter.create("api", 1)
    d = str(tmp_path)

    async def main() -> None:
        g = asyncio.ensure_future(
            gather(*(job(f"c{i}", d, hold=30) for i in range(3)), names="api", limiter=limiter)
        )
        for _ in range(2000):
            snap = limiter.broker.snapshot("api")
            # (the holder's body has started: its acquire no longer blocks the loop, so Redis
            # may show the grant before the coroutine has seen it)
            if snap.used == 1 and snap.n_waiters == 2 and list(Path(d).glob("started-*")):
                break
            await asyncio.sleep(0.01)
        g.cancel()
        with pytest.raises(asyncio.CancelledError):
            await g

    asyncio.run(main())
    # asyncio.gather finishes as soon as one child is cancelled, and asyncio.run then cancels
    # the others again mid-withdrawal: what they could not finish, the runtime's withdrawer
    # thread does in the background, at once (not by TTL: the tickets live 5 s)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        snap = limiter.broker.snapshot("api")
        if snap.used == 0 and snap.n_waiters == 0:
            break
        time.sleep(0.01)
    assert snap.used == 0 and snap.n_waiters == 0
    assert len(list(Path(d).glob("started-*"))) == 1  # the two waiting coroutines never ran


def _gather_in_child(url: str, namespace: str, log_dir: str, who: str) -> None:
    lim = Limiter(url, namespace)
    asyncio.run(gather(*(job(f"{who}-{i}", log_dir) for i in range(6)), names="api", limiter=lim))


def test_gathers_in_two_processes_share_the_limit(limiter: Limiter, tmp_path: Path) -> None:
    limiter.create("api", 2)
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_gather_in_child, args=(limiter.url, limiter.namespace, str(tmp_path), w)
        )
        for w in ("p1", "p2")
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    stamps = read_stamps(tmp_path)
    assert len(stamps) == 12 and len({s.pid for s in stamps}) == 2
    assert max_concurrent(stamps) <= 2
