"""The independent observer for the fault and soak tests: every process appends stamps to its own file.

Lines (tab-separated, one ``os.write`` each, so a SIGKILL never leaves half a line):
    S  t  pid  lease_id  name|name  occupy      acquire returned (t taken after it returned)
    R  t  pid  lease_id                          body ended: the release call comes next
    E  t  pid  lease_id  ok|lost                 body ended (t taken BEFORE the release call);
                                                 written after release, with its outcome
    T  t  pid                                    an acquire timed out
    X  t  pid                                    an acquire was cancelled (asyncio)
    K  t  pid                                    the parent SIGKILLed pid (t after waitpid)
    P  t  pid  /  C  t  pid                      the parent SIGSTOPped / SIGCONTinued pid

``t`` is ``time.monotonic()`` (CLOCK_MONOTONIC is one clock for every process of the machine).
The interval [S, E] of a lease released with outcome ``ok`` lies inside the lease's life in Redis,
so at no instant may such intervals occupy more than a limit's slots. A killed holder's interval
ends at its R stamp (killed while releasing: the release may have gone through already), else at
its K stamp. A lease reported lost (the SDK told the holder) is excused only when the holder was
paused while holding it (a P stamp inside its interval: it could not renew); any other lost lease
stays in the check, so an early expiry followed by a second admission is caught. Killed holders
that were paused while holding are excluded too; both are counted separately.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


class StampWriter:
    def __init__(self, path: Path | str) -> None:
        self.fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.pid = os.getpid()

    def write(self, kind: str, *fields: object, t: float | None = None) -> None:
        t = time.monotonic() if t is None else t
        line = "\t".join([kind, f"{t:.6f}", str(self.pid), *map(str, fields)]) + "\n"
        os.write(self.fd, line.encode())

    def parent(self, kind: str, pid: int) -> None:
        line = f"{kind}\t{time.monotonic():.6f}\t{pid}\n"
        os.write(self.fd, line.encode())

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class Interval:
    lease_id: str
    pid: int
    names: tuple[str, ...]
    occupy: int
    start: float
    end: float
    outcome: str  # ok | lost | lost-paused | killed | killed-paused


@dataclass
class Report:
    intervals: list[Interval] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    max_use: dict[str, int] = field(default_factory=dict)

    @property
    def checked(self) -> list[Interval]:
        return [i for i in self.intervals if i.outcome in ("ok", "lost", "killed")]

    def summary(self) -> str:
        c = self.counts
        return (
            f"acquisitions={c['S']} released_ok={c['ok']} lost={c['lost']} "
            f"lost_paused={c['lost-paused']} "
            f"killed_holding={c['killed']} killed_paused={c['killed-paused']} "
            f"timeouts={c['T']} cancellations={c['X']} kills={c['K']} pauses={c['P']} "
            f"max_use={self.max_use}"
        )


def read_stamps(directory: Path) -> list[list[str]]:
    rows: list[list[str]] = []
    for p in sorted(directory.glob("*.stamps")):
        for line in p.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                rows.append(parts)
    return rows


def check(directory: Path, slots: dict[str, int]) -> Report:
    """Rebuild every lease interval from the stamps and sweep each limit for over-admission."""
    rep = Report()
    rows = read_stamps(directory)
    starts: dict[str, list[str]] = {}
    ends: dict[str, list[str]] = {}
    body_ends: dict[str, float] = {}
    kills: dict[int, list[float]] = {}
    pauses: dict[int, list[float]] = {}
    for r in rows:
        kind = r[0]
        rep.counts[kind] += 1
        if kind == "S":
            if r[3] in starts:
                rep.violations.append(f"lease id {r[3]} granted twice")
            starts[r[3]] = r
        elif kind == "E":
            ends[r[3]] = r
        elif kind == "R":
            body_ends[r[3]] = float(r[1])
        elif kind == "K":
            kills.setdefault(int(r[2]), []).append(float(r[1]))
        elif kind == "P":
            pauses.setdefault(int(r[2]), []).append(float(r[1]))
    for lid, s in starts.items():
        pid, start = int(s[2]), float(s[1])
        names, occ = tuple(s[4].split("|")), int(s[5])
        e = ends.get(lid)
        if e is not None:
            end, outcome = float(e[1]), e[4]
            if outcome == "lost" and any(start <= t <= end for t in pauses.get(pid, [])):
                outcome = "lost-paused"  # it could not renew: the loss is explained
            iv = Interval(lid, pid, names, occ, start, end, outcome)
        else:
            k = [t for t in kills.get(pid, []) if t >= start]
            if not k:
                rep.violations.append(f"lease {lid} of pid {pid} has no end and no kill")
                continue
            end = min(k)
            if lid in body_ends:  # killed while releasing: the body was over at R
                end = min(end, body_ends[lid])
            paused = any(start <= t <= end for t in pauses.get(pid, []))
            iv = Interval(lid, pid, names, occ, start, end, "killed-paused" if paused else "killed")
        rep.counts[iv.outcome] += 1
        rep.intervals.append(iv)
    for name, cap in slots.items():
        events: list[tuple[float, int, int, str]] = []
        for iv in rep.checked:
            if name in iv.names:
                events.append((iv.start, 1, iv.occupy, iv.lease_id))
                events.append((iv.end, 0, -iv.occupy, iv.lease_id))
        events.sort()  # at equal times an end (0) sorts before a start (1)
        use = peak = 0
        for t, _, d, lid in events:
            use += d
            peak = max(peak, use)
            if use > cap:
                rep.violations.append(
                    f"limit {name!r}: {use} slots in use > {cap} at t={t:.6f} (lease {lid})"
                )
        rep.max_use[name] = peak
    return rep
