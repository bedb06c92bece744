"""Soak: 16 processes for SLOTKEEPER_SOAK_SECONDS (default 180) doing random multi-limit acquires
(occupy 1-2 over 3 overlapping limits) with random holds, timeouts and asyncio cancellations,
while the test SIGKILLs random workers (respawned) and now and then SIGSTOPs one past its TTL.
An independent observer checks the stamps of every process for over-admission; after all stop
and one TTL passes, every slot is free and the Redis counters add up."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from slotkeeper import Limiter
from tests.support.chaos import Pool
from tests.support.chaos_worker import HOLDING
from tests.support.observer import check
from tests.support.redisproc import RedisProc

SECONDS = float(os.environ.get("SLOTKEEPER_SOAK_SECONDS", "180"))
WORKERS = 16
TTL = 3.0
LIMITS = {"soak-a": 3, "soak-b": 2, "soak-c": 4}
# A killed waiter's ticket (and a killed holder's lease) blocks its slots until its TTL runs out:
# strikes every 1-4 s keep a few such ghosts around at any time without starving everyone.
STRIKE_EVERY = tuple(float(x) for x in os.environ.get("SLOTKEEPER_SOAK_STRIKE", "1,4").split(","))


@pytest.mark.timeout(SECONDS + 300)
def test_soak(tmp_path: Path) -> None:
    rnd = random.Random()
    with RedisProc() as r:
        lim = Limiter(r.url, "soak", ttl=TTL)
        for name, slots in LIMITS.items():
            lim.create(name, slots)
        pool = Pool(
            tmp_path / "run",
            WORKERS,
            {
                "url": r.url,
                "ns": "soak",
                "ttl": TTL,
                "limits": LIMITS,
                "max_names": 3,
                "max_occupy": 2,
                "timeouts": [None, None, 0, 0.05, 0.2, 1.0],
                "hold": [0.0, 0.05],
                "cancel_p": 0.1,
                "idle": 0.02,
                "watch_waiting": 0.05,
            },
        )
        started = time.monotonic()
        try:
            pool.start()
            next_pause = started + 10
            while time.monotonic() - started < SECONDS:
                time.sleep(rnd.uniform(*STRIKE_EVERY))
                pool.resume_due()
                assert not [i for i in pool.dead() if not pool.is_paused(i)], "a worker crashed"
                i = rnd.randrange(WORKERS)
                if pool.is_paused(i):
                    continue
                if time.monotonic() >= next_pause:
                    pool.pause(i, TTL * rnd.uniform(1.2, 2.0))  # loses whatever it holds
                    next_pause = time.monotonic() + rnd.uniform(5, 15)
                else:
                    # most workers wait most of the time: aim half the kills at a holder
                    if rnd.random() < 0.5:
                        pool.wait_phase(i, HOLDING, timeout=1.0)
                    pool.kill(i)  # respawned at once
            forced, failed = pool.stop()
        finally:
            pool.close()
        elapsed = time.monotonic() - started
        rep = check(pool.dir, LIMITS)

        time.sleep(TTL + 0.5)  # every lease of a killed or stuck holder has expired by now
        redis_counts = {}
        for name, slots in LIMITS.items():
            lim.broker.reclaim_all(name)
            snap = lim.broker.snapshot(name)
            c = snap.counters
            redis_counts[name] = {
                "acquired": c.acquired,
                "released": c.released,
                "expired": c.expired,
                "revoked": c.revoked,
                "timed_out": c.timed_out,
            }
            assert snap.used == 0 and snap.n_holder_entries == 0, name
            assert snap.n_waiters == 0, name
            assert c.acquired == c.released + c.expired + c.revoked, (name, c)
            lease = lim.acquire(name, occupy=slots, timeout=0)  # every slot can be taken
            assert lease.release()

    summary = {
        "seconds": round(elapsed),
        "workers": WORKERS,
        "spawned": pool.spawned,
        "acquisitions": rep.counts["S"],
        "released_ok": rep.counts["ok"],
        "lost_leases": rep.counts["lost"] + rep.counts["lost-paused"],
        "killed_while_holding": rep.counts["killed"],
        "timeouts": rep.counts["T"],
        "cancellations": rep.counts["X"],
        "kills": rep.counts["K"],
        "pauses": rep.counts["P"],
        "strikes": dict(pool.strikes),
        "max_use": rep.max_use,
        "violations": len(rep.violations),
        "redis": redis_counts,
    }
    print("SOAK " + json.dumps(summary, sort_keys=True))
    assert failed == [] and forced == 0, (failed, forced)
    assert rep.violations == [], rep.violations[:10]
    assert rep.counts["S"] > 100 and rep.counts["K"] > 0
    assert rep.max_use == LIMITS  # every limit was driven to saturation, never past it
