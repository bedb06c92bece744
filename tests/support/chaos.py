"""Parent side of the fault and soak tests: a pool of chaos_worker processes that can be SIGKILLed
(and respawned) or SIGSTOPped at a chosen phase, with every strike stamped for the observer."""

from __future__ import annotations

import json
import mmap
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.support.chaos_worker import PHASES
from tests.support.observer import StampWriter


class Pool:
    def __init__(
        self, directory: Path, n: int, args: dict[str, Any], urls: list[str] | None = None
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.n = n
        self.args = args
        self.urls = urls  # per-worker URL (e.g. some through a delaying proxy)
        self.phase_file = self.dir / "phases"
        self.phase_file.write_bytes(b"\0" * max(n, 1))
        self._fd = os.open(str(self.phase_file), os.O_RDWR)
        self.phases = mmap.mmap(self._fd, 0)
        self.stop_file = self.dir / "stop"
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        self.parent = StampWriter(self.dir / "parent.stamps")
        self.spawned = 0
        self.strikes: Counter[str] = Counter()
        self.stopped: dict[int, float] = {}  # index -> when to SIGCONT

    def spawn(self, i: int) -> None:
        a = dict(self.args)
        a.update(
            dir=str(self.dir),
            phase_file=str(self.phase_file),
            index=i,
            stop_file=str(self.stop_file),
            seed=random.randrange(1 << 30),
        )
        if self.urls:
            a["url"] = self.urls[i % len(self.urls)]
        self.phases[i] = 0
        self.procs[i] = subprocess.Popen(
            [sys.executable, "-m", "tests.support.chaos_worker", json.dumps(a)]
        )
        self.spawned += 1

    def start(self) -> Pool:
        for i in range(self.n):
            self.spawn(i)
        return self

    def phase(self, i: int) -> int:
        return int(self.phases[i])

    def wait_phase(self, i: int, phase: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.phases[i] == phase:
                return True
            time.sleep(0.0005)
        return False

    def kill(self, i: int, respawn: bool = True) -> str:
        p = self.procs[i]
        assert p is not None
        phase = PHASES[self.phase(i)]
        p.send_signal(signal.SIGKILL)
        p.wait()
        self.parent.parent("K", p.pid)
        self.stopped.pop(i, None)
        self.strikes[f"kill:{phase}"] += 1
        if respawn:
            self.spawn(i)
        return phase

    def pause(self, i: int, seconds: float) -> str:
        p = self.procs[i]
        assert p is not None
        phase = PHASES[self.phase(i)]
        p.send_signal(signal.SIGSTOP)
        self.parent.parent("P", p.pid)
        self.stopped[i] = time.monotonic() + seconds
        self.strikes[f"stop:{phase}"] += 1
        return phase

    def resume_due(self, force: bool = False) -> None:
        now = time.monotonic()
        for i, until in list(self.stopped.items()):
            if force or now >= until:
                p = self.procs[i]
                assert p is not None
                p.send_signal(signal.SIGCONT)
                self.parent.parent("C", p.pid)
                del self.stopped[i]

    def is_paused(self, i: int) -> bool:
        return i in self.stopped

    def stop(self, grace: float = 30.0) -> tuple[int, list[int]]:
        """Ask every worker to finish its cycle; SIGKILL (stamped) the ones that do not.
        Returns (how many had to be killed, exit codes of workers that failed on their own)."""
        self.resume_due(force=True)
        self.stop_file.write_text("stop")
        deadline = time.monotonic() + grace
        forced = 0
        failed: list[int] = []
        for p in self.procs:
            if p is None:
                continue
            try:
                rc = p.wait(max(0.1, deadline - time.monotonic()))
                if rc != 0:
                    failed.append(rc)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGUSR1)  # the worker dumps its threads' stacks (stderr)
                time.sleep(0.5)
                p.kill()
                p.wait()
                self.parent.parent("K", p.pid)
                forced += 1
        return forced, failed

    def count(self, kind: str = "S") -> int:
        """Stamps of one kind written so far by every worker (S: acquisitions)."""
        prefix = kind + "\t"
        return sum(
            1
            for p in self.dir.glob("*.stamps")
            for line in p.read_text().splitlines()
            if line.startswith(prefix)
        )

    def run_until(self, acquisitions: int, at_least: float, at_most: float = 120.0) -> None:
        """Let the workers run for ``at_least`` seconds and until they made ``acquisitions``
        (a loaded machine starts processes slowly), but never longer than ``at_most``."""
        start = time.monotonic()
        while time.monotonic() - start < at_most:
            if time.monotonic() - start >= at_least and self.count("S") >= acquisitions:
                return
            assert not self.dead(), "a worker crashed"
            time.sleep(0.1)

    def dead(self) -> list[int]:
        """Workers that exited while they should be running (a crash)."""
        return [i for i, p in enumerate(self.procs) if p is not None and p.poll() is not None]

    def close(self) -> None:
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()
        self.phases.close()
        os.close(self._fd)
        self.parent.close()
