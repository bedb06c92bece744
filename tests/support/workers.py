"""Child-process workloads for the core tests: ``python -m tests.support.workers MODE JSON_ARGS``.

Each worker writes what it observed (stamps taken with time.monotonic_ns, comparable across processes on
one machine) as JSON lines to a file, so an independent check can sweep them afterwards."""

from __future__ import annotations

import json
import os
import random
import sys
import time
from typing import Any

from slotkeeper import AcquireTimeout, Limiter


def _out(path: str, rec: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def contend(a: dict[str, Any]) -> None:
    """Loop acquiring random subsets; record [acquired, released] stamps per name."""
    lim = Limiter(a["url"], a["ns"], ttl=a.get("ttl", 10))
    rnd = random.Random(a["seed"])
    deadline = time.monotonic() + a.get("seconds", 1e9)
    stamps = []
    for _ in range(a["iterations"]):
        if time.monotonic() > deadline:
            break
        k = rnd.randint(1, len(a["names"])) if a.get("multi") else 1
        names = rnd.sample(a["names"], k)
        occ = rnd.randint(1, a.get("max_occupy", 1))
        timeout = a.get("timeout")
        if a.get("timeout_range"):
            lo, hi = a["timeout_range"]
            timeout = rnd.uniform(lo, hi)
        try:
            lease = lim.acquire(*names, occupy=occ, timeout=timeout)
        except AcquireTimeout:
            continue
        t0 = time.monotonic_ns()
        hold = rnd.random() * a.get("max_hold", 0.002)
        if hold:
            time.sleep(hold)
        t1 = time.monotonic_ns()
        ok = lease.release()
        stamps.append({"names": names, "occ": occ, "t0": t0, "t1": t1, "ok": ok})
    with open(a["out"], "w") as f:
        json.dump(stamps, f)


def tolerant(a: dict[str, Any]) -> None:
    """Acquire one name in a loop until ``a["stop"]`` exists, carrying on through any slotkeeper
    error (the fuzz test damages the limits); record [acquired, released] stamps and the errors."""
    from slotkeeper import SlotkeeperError

    lim = Limiter(a["url"], a["ns"], ttl=a.get("ttl", 2))
    rnd = random.Random(a["seed"])
    stamps: list[dict[str, Any]] = []
    errors: dict[str, int] = {}
    while not os.path.exists(a["stop"]):
        try:
            lease = lim.acquire(a["name"], timeout=0.5)
        except AcquireTimeout:
            continue
        except SlotkeeperError as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            time.sleep(0.01)
            continue
        t0 = time.monotonic_ns()
        time.sleep(rnd.random() * 0.005)
        t1 = time.monotonic_ns()
        try:
            ok = lease.release()
        except SlotkeeperError as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            ok = False
        stamps.append({"names": [a["name"]], "occ": 1, "t0": t0, "t1": t1, "ok": ok})
    with open(a["out"], "w") as f:
        json.dump({"stamps": stamps, "errors": errors}, f)


def hold(a: dict[str, Any]) -> None:
    """Acquire, announce, then hold until killed (or for a while), then try to release."""
    lim = Limiter(a["url"], a["ns"], ttl=a["ttl"])
    lease = lim.acquire(*a["names"], occupy=a.get("occupy", 1))
    _out(
        a["out"],
        {
            "event": "acquired",
            "id": lease.id,
            "token": lease.token,
            "t": time.monotonic_ns(),
            "pid": os.getpid(),
        },
    )
    time.sleep(a.get("hold", 3600))
    _out(a["out"], {"event": "woke", "lost": lease.lost, "t": time.monotonic_ns()})
    released = lease.release()
    _out(a["out"], {"event": "released", "ok": released, "lost": lease.lost})


def wait_one(a: dict[str, Any]) -> None:
    """Wait for a slot; record when it was granted."""
    lim = Limiter(a["url"], a["ns"], ttl=a.get("ttl", 10))
    _out(a["out"], {"event": "waiting", "t": time.monotonic_ns()})
    lease = lim.acquire(*a["names"], timeout=a.get("timeout"))
    _out(a["out"], {"event": "granted", "t": time.monotonic_ns(), "token": lease.token})
    time.sleep(a.get("hold", 0))
    lease.release()


if __name__ == "__main__":
    mode, args = sys.argv[1], json.loads(sys.argv[2])
    {"contend": contend, "hold": hold, "wait_one": wait_one, "tolerant": tolerant}[mode](args)
