"""Task functions for the throttling tests, and the independent observer.

Every task appends one ``[start, end]`` stamp line (taken inside its body) to ``stamps.log`` in a
directory shared by all processes; the tests read the file afterwards and sweep it. Stamps use
``time.monotonic()`` (one system-wide clock on Linux, so comparable across processes).

``meet`` makes overlap deterministic without timing: a task waits (up to ``patience``) until one of
the named tasks has *started*. When the throttle allows them to overlap they meet at once; when it
wrongly serialises them, the meeting never happens and the overlap check fails.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from slotkeeper import limit, tagged

STAMPS = "stamps.log"


@dataclass(frozen=True)
class Stamp:
    name: str
    start: float
    end: float
    pid: int
    worker: str
    kind: str


def stamp(
    log_dir: str, name: str, start: float, end: float, worker: str = "-", kind: str = "-"
) -> None:
    line = f"{name}\t{start!r}\t{end!r}\t{os.getpid()}\t{worker}\t{kind}\n"
    fd = os.open(os.path.join(log_dir, STAMPS), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one small O_APPEND write: atomic between processes
    finally:
        os.close(fd)


def read_stamps(log_dir: str | Path) -> list[Stamp]:
    path = Path(log_dir, STAMPS)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        name, start, end, pid, worker, kind = line.split("\t")
        out.append(Stamp(name, float(start), float(end), int(pid), worker, kind))
    return out


def max_concurrent(stamps: list[Stamp]) -> int:
    """Sweep: the largest number of intervals open at one instant (an end before a start at ties)."""
    events = sorted(
        [(s.start, 1) for s in stamps] + [(s.end, -1) for s in stamps], key=lambda e: (e[0], e[1])
    )
    now = peak = 0
    for _, d in events:
        now += d
        peak = max(peak, now)
    return peak


def overlap(a: Stamp, b: Stamp) -> bool:
    return a.start < b.end and b.start < a.end


def by_name(stamps: list[Stamp]) -> dict[str, Stamp]:
    return {s.name: s for s in stamps}


def _started(log_dir: str, name: str) -> Path:
    return Path(log_dir, f"started-{name}")


def _meet(log_dir: str, meet: tuple[str, ...], patience: float) -> None:
    give_up = time.monotonic() + patience
    while meet and time.monotonic() < give_up:
        if any(_started(log_dir, m).exists() for m in meet):
            return
        time.sleep(0.005)


def body(
    name: str,
    log_dir: str,
    hold: float,
    meet: tuple[str, ...] = (),
    patience: float = 15.0,
    worker: str = "-",
    kind: str = "-",
) -> str:
    start = time.monotonic()
    _started(log_dir, name).touch()
    with open(os.path.join(log_dir, f"out-{name}"), "a") as out:
        for _ in range(10):
            out.write(f"{name} was here\n")
            out.flush()
            time.sleep(hold / 10)
    _meet(log_dir, meet, patience)
    end = time.monotonic()
    stamp(log_dir, name, start, end, worker, kind)
    return name


@tagged("print")
def say_hi(
    name: str, log_dir: str, hold: float = 0.2, meet: tuple[str, ...] = (), patience: float = 15.0
) -> str:
    """The classic example's task: prints its name 10 times (to a file), tagged "print"."""
    return body(name, log_dir, hold, meet, patience)


def work(
    name: str, log_dir: str, hold: float = 0.1, meet: tuple[str, ...] = (), patience: float = 15.0
) -> str:
    """An untagged task (tags come from ``tags()`` blocks only)."""
    return body(name, log_dir, hold, meet, patience)


def hold_forever(pid_file: str) -> None:
    """Write our pid, then sleep until killed."""
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(3600)


def current_worker() -> str:
    from distributed import get_worker

    return str(get_worker().name)


# -- the image pipeline (worker-scoped limits on Dask) --------------------------------------------


def download(i: int, log_dir: str, peers: tuple[str, ...] = ()) -> int:
    body(f"download-{i}", log_dir, 0.05, peers, worker=current_worker(), kind="download")
    return i


def model(i: int, log_dir: str) -> int:
    """Runs under ``gpu:{worker}`` (held by the caller's wrapper)."""
    body(f"model-{i}", log_dir, 0.1, worker=current_worker(), kind="model")
    return i


def model_inline(i: int, log_dir: str) -> int:
    """Takes ``gpu:{worker}`` itself with the worker's configured default limiter."""
    with limit("gpu:{worker}", timeout=120):
        body(f"model-{i}", log_dir, 0.1, worker=current_worker(), kind="model")
    return i


def save(i: int, log_dir: str, peers: tuple[str, ...] = ()) -> str:
    body(f"save-{i}", log_dir, 0.05, peers, worker=current_worker(), kind="save")
    return f"processed-{i}"


# -- the classic example as a scenario ------------------------------------------------------------

CLASSIC = {
    # case: (throttle, meet-map)
    "print=1": ({"print": 1}, {}),
    "print=2": (
        {"print": 2},
        {"alice": ("bob", "chris"), "bob": ("alice", "chris"), "chris": ("alice", "bob")},
    ),
    "example=1": (
        {"example": 1},
        {"alice": ("chris",), "bob": ("chris",), "chris": ("alice", "bob")},
    ),
}


def submit_classic(ex: object, log_dir: str, case: str, hold: float = 0.2) -> list[object]:
    """alice and bob under ``tags("example")``, chris outside; all three are @tagged("print")."""
    from slotkeeper import tags

    meet = CLASSIC[case][1]
    submit = ex.submit  # type: ignore[attr-defined]
    with tags("example"):
        a = submit(say_hi, "alice", log_dir, hold, meet.get("alice", ()))
        b = submit(say_hi, "bob", log_dir, hold, meet.get("bob", ()))
    c = submit(say_hi, "chris", log_dir, hold, meet.get("chris", ()))
    return [a, b, c]


def check_classic(log_dir: str, case: str) -> None:
    stamps = read_stamps(log_dir)
    assert sorted(s.name for s in stamps) == ["alice", "bob", "chris"], stamps
    s = by_name(stamps)
    if case == "print=1":
        assert max_concurrent(stamps) == 1, stamps
    elif case == "print=2":
        assert max_concurrent(stamps) == 2, stamps  # never three; two did meet
    elif case == "example=1":
        assert not overlap(s["alice"], s["bob"]), stamps
        assert overlap(s["chris"], s["alice"]) or overlap(s["chris"], s["bob"]), stamps
    else:
        raise AssertionError(case)


def run_shared_executor(url: str, namespace: str, log_dir: str, who: str, n: int) -> None:
    """One of several processes, each with its own ThrottledExecutor on the global limit "shared"."""
    from concurrent.futures import ThreadPoolExecutor

    from slotkeeper import Limiter, ThrottledExecutor, tags

    lim = Limiter(url, namespace, ttl=5.0)
    with ThrottledExecutor(ThreadPoolExecutor(4), {"shared": 2}, limiter=lim, scope="global") as ex:
        with tags("shared"):
            futs = [ex.submit(work, f"{who}-{i}", log_dir, 0.05) for i in range(n)]
        for f in futs:
            f.result(120)


def default_limiter_task() -> tuple[str, str]:
    """Takes "cfg" with the process-default limiter: the configuration must have reached us."""
    import os

    from slotkeeper import get_limiter

    with limit("cfg", timeout=60):
        return get_limiter().namespace, os.environ.get("SLOTKEEPER_NAMESPACE", "")
