"""Child-process workloads for the rate and template tests:
``python -m tests.support.rate_workers MODE JSON_ARGS``.

Each worker writes what it observed (time.monotonic_ns stamps, comparable across processes on one
machine) to a file, so an independent check can sweep them afterwards."""

from __future__ import annotations

import json
import random
import sys
import time
from typing import Any

from slotkeeper import AcquireTimeout, Limiter


def _append(path: str, rec: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def hammer(a: dict[str, Any]) -> None:
    """rate_limit() in a loop for a while; one stamp per grant: asked (t0) and granted (t1)."""
    lim = Limiter(a["url"], a["ns"], ttl=a.get("ttl", 10))
    deadline = time.monotonic() + a["seconds"]
    out = []
    while time.monotonic() < deadline:
        t0 = time.monotonic_ns()
        try:
            lim.rate_limit(*a["names"], timeout=max(0.0, deadline - time.monotonic()))
        except AcquireTimeout:
            break
        out.append({"t0": t0, "t1": time.monotonic_ns()})
    with open(a["out"], "w") as f:
        json.dump(out, f)


def template_contend(a: dict[str, Any]) -> None:
    """Acquire random keys of a template, hold briefly; [acquired, released] stamps per key."""
    lim = Limiter(a["url"], a["ns"], ttl=a.get("ttl", 10))
    rnd = random.Random(a["seed"])
    out = []
    for _ in range(a["iterations"]):
        name = rnd.choice(a["names"])
        lease = lim.acquire(name)
        t0 = time.monotonic_ns()
        time.sleep(rnd.random() * a.get("max_hold", 0.003))
        t1 = time.monotonic_ns()
        lease.release()
        out.append({"names": [name], "occ": 1, "t0": t0, "t1": t1})
    with open(a["out"], "w") as f:
        json.dump(out, f)


def rate_wait(a: dict[str, Any]) -> None:
    """Wait for rate units (announces it is waiting first); records the grant."""
    lim = Limiter(a["url"], a["ns"], ttl=a.get("ttl", 10))
    _append(a["out"], {"event": "waiting", "t": time.monotonic_ns()})
    lim.rate_limit(*a["names"], occupy=a.get("occupy", 1))
    _append(a["out"], {"event": "granted", "t": time.monotonic_ns()})


if __name__ == "__main__":
    mode, args = sys.argv[1], json.loads(sys.argv[2])
    {"hammer": hammer, "template_contend": template_contend, "rate_wait": rate_wait}[mode](args)
