"""A worker process for the fault and soak tests: ``python -m tests.support.chaos_worker JSON``.

Loops until the stop file exists: picks random limits (1..k names), occupy, timeout and hold time,
acquires (sync ``with limit(...)``, or ``async with`` cancelled from outside by
``asyncio.wait_for``), holds, releases, and stamps everything (tests/support/observer.py).
Its current phase is published in one byte of a shared mmap'd file so the parent can strike at a
chosen moment: 0 idle, 1 acquiring (first round trip), 2 waiting (ticket queued), 3 holding,
4 releasing.
"""

from __future__ import annotations

import asyncio
import json
import mmap
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

from slotkeeper import AcquireTimeout, BrokerUnavailable, LeaseLost, Limiter, limit
from tests.support.observer import StampWriter

IDLE, ACQUIRING, WAITING, HOLDING, RELEASING = 0, 1, 2, 3, 4
PHASES = {
    IDLE: "idle",
    ACQUIRING: "acquiring",
    WAITING: "waiting",
    HOLDING: "holding",
    RELEASING: "releasing",
}


class Phase:
    """One byte of a shared file: this worker's phase, read by the parent."""

    def __init__(self, path: str, index: int) -> None:
        self.fd = os.open(path, os.O_RDWR)
        self.map = mmap.mmap(self.fd, 0)
        self.index = index
        self.lock = threading.Lock()

    def set(self, value: int, only_if: int | None = None) -> None:
        with self.lock:
            if only_if is None or self.map[self.index] == only_if:
                self.map[self.index] = value


class Worker:
    def __init__(self, a: dict[str, Any]) -> None:
        self.a = a
        self.lim = Limiter(a["url"], a["ns"], ttl=a["ttl"])
        self.rnd = random.Random(a["seed"])
        self.stamps = StampWriter(Path(a["dir"]) / f"{os.getpid()}.stamps")
        self.phase = Phase(a["phase_file"], a["index"])
        self.stop = Path(a["stop_file"])

    def watch_waiting(self, every: float) -> None:
        """Flip ACQUIRING to WAITING while this process has a ticket queued."""
        rt = self.lim.runtime
        while True:
            if rt._waiting:
                self.phase.set(WAITING, only_if=ACQUIRING)
            time.sleep(every)

    def pick(self) -> tuple[list[str], int, float | None, float]:
        a, rnd = self.a, self.rnd
        limits: dict[str, int] = a["limits"]
        names = rnd.sample(sorted(limits), rnd.randint(1, a.get("max_names", len(limits))))
        occ = rnd.randint(1, min([a.get("max_occupy", 1), *[limits[n] for n in names]]))
        timeout = rnd.choice(a.get("timeouts", [None]))
        hold = rnd.uniform(*a.get("hold", (0.0, 0.05)))
        return names, occ, timeout, hold

    def run(self) -> None:
        watch = self.a.get("watch_waiting", 0.001)  # 0: don't tell waiting from acquiring
        if watch:
            threading.Thread(target=self.watch_waiting, args=(watch,), daemon=True).start()
        cancel_p = self.a.get("cancel_p", 0.0)
        while not self.stop.exists():
            names, occ, timeout, hold = self.pick()
            if self.rnd.random() < cancel_p:
                self.cycle_async(names, occ, hold, cancel_after=self.rnd.uniform(0.01, 0.3))
            else:
                self.cycle(names, occ, timeout, hold)
            self.phase.set(IDLE)
            time.sleep(self.rnd.uniform(0, self.a.get("idle", 0.01)))

    def cycle(self, names: list[str], occ: int, timeout: float | None, hold: float) -> None:
        lk = limit(*names, occupy=occ, timeout=timeout, limiter=self.lim)
        self.phase.set(ACQUIRING)
        entered: list[Any] = []
        try:
            with lk as lease:
                self.stamps.write("S", lease.id, "|".join(names), occ)
                entered[:] = [lease.id, 0.0]
                self.phase.set(HOLDING)
                try:
                    time.sleep(hold)
                finally:
                    entered[1] = time.monotonic()
                    self.stamps.write("R", lease.id, t=entered[1])  # body over
                    if lease.lost:  # lost while held (not merely at release)
                        self.stamps.write("L", lease.id)
                    self.phase.set(RELEASING)
        except AcquireTimeout:
            self.stamps.write("T")
            return
        except BrokerUnavailable:
            # Redis did not answer within the call's deadline (timeout + 1 s): an outcome the
            # caller is told about, not a crash; a slot granted meanwhile is given back by the
            # runtime's background withdrawal
            self.stamps.write("U", entered[0] if entered else "")
            if entered:
                self.stamps.write("E", entered[0], "lost", t=entered[1])
            return
        except LeaseLost:
            self.stamps.write("E", entered[0], "lost", t=entered[1])
            return
        self.stamps.write("E", entered[0], "ok", t=entered[1])

    def cycle_async(self, names: list[str], occ: int, hold: float, cancel_after: float) -> None:
        entered: list[Any] = []
        outcome: list[str] = []

        async def body() -> None:
            self.phase.set(ACQUIRING)
            try:
                async with limit(*names, occupy=occ, limiter=self.lim) as lease:
                    self.stamps.write("S", lease.id, "|".join(names), occ)
                    entered[:] = [lease.id, 0.0, lease]
                    self.phase.set(HOLDING)
                    try:
                        await asyncio.sleep(hold)
                    finally:
                        entered[1] = time.monotonic()
                        self.stamps.write("R", lease.id, t=entered[1])  # body over
                        self.phase.set(RELEASING)
                outcome.append("ok")
            except LeaseLost:
                outcome.append("lost")

        async def main() -> None:
            try:
                await asyncio.wait_for(body(), cancel_after)
            except TimeoutError:
                # cancelled: while waiting (ticket withdrawn) or while holding (released)
                self.stamps.write("X")
                if entered and not outcome:  # released by the cancellation: lost if it was lost
                    outcome.append("lost" if entered[2].lost else "ok")

        asyncio.run(main())
        if entered:
            self.stamps.write("E", entered[0], outcome[0] if outcome else "ok", t=entered[1])


if __name__ == "__main__":
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a hung worker shows where
    Worker(json.loads(sys.argv[1])).run()
