"""One benchmark run: the floor, then each chosen workload for slotkeeper and the reference."""

from __future__ import annotations

import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from slotkeeper.bench import curves, scale
from slotkeeper.bench.held import held_by_one
from slotkeeper.bench.workloads import (
    floor,
    in_child,
    script_floor,
    w1_uncontended,
    w2_contended,
    w3_handoff,
    w4_crash,
    w5_scale,
)

ALL_WORKLOADS = ("W1", "W2", "W3", "W4", "W5")
CURVE_WORKLOADS = ("C1", "C2", "C3")  # the curves: not in the default run (minutes)
SPECS = ("slotkeeper", "reference")


@dataclass
class BenchConfig:
    workloads: tuple[str, ...] = ALL_WORKLOADS
    quick: bool = False
    floor_n: int = 3000
    w1_cycles: int = 3000
    w1_repeats: int = 3
    w2_holds_ms: tuple[float, ...] = (0.0, 5.0)
    w2_duration_s: float = 5.0
    w2_procs: int = 4
    w2_slots: int = 2
    w3_rounds: int = 300
    w4_ttl_s: float = 5.0
    w4_runs: int = 3
    w5_levels: tuple[int, ...] = (10, 1000, 10000, 100000)
    w5_samples: int = 300
    w5_reclaim: tuple[int, ...] = (10000, 100000)
    w5_held_levels: tuple[int, ...] = (10, 1000, 10000)
    c1_procs: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    c1_hold_ms: float = 5.0
    c1_duration_s: float = 3.0
    c2_levels: tuple[int, ...] = (10, 100, 1000, 10000)
    c2_samples: int = 200
    c3_levels: tuple[int, ...] = (10, 1000, 10000, 100000)
    specs: tuple[str, ...] = SPECS
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick_config(cls, workloads: tuple[str, ...] = ALL_WORKLOADS) -> BenchConfig:
        return cls(
            workloads=workloads,
            quick=True,
            floor_n=300,
            w1_cycles=300,
            w1_repeats=1,
            w2_duration_s=1.0,
            w3_rounds=30,
            w4_ttl_s=2.0,
            w4_runs=1,
            w5_levels=(10, 1000),
            w5_samples=50,
            w5_reclaim=(2000,),
            w5_held_levels=(10, 500),
            c1_procs=(1, 2, 4, 8),
            c1_duration_s=1.0,
            c2_levels=(10, 1000),
            c2_samples=30,
            c3_levels=(10, 300),
        )

    def steps(self) -> int:
        n = 1
        per = len(self.specs)
        w = set(self.workloads)
        w1_per = per + (1 if "slotkeeper" in self.specs else 0)  # + events off
        n += w1_per * self.w1_repeats if "W1" in w else 0
        n += per * len(self.w2_holds_ms) if "W2" in w else 0
        n += per if "W3" in w else 0
        n += per * self.w4_runs if "W4" in w else 0
        n += (per * len(self.w5_levels) + len(self.w5_reclaim) + 1) if "W5" in w else 0
        n += len(self.c1_procs) if "C1" in w else 0
        n += len(self.c2_levels) if "C2" in w else 0
        n += len(self.c3_levels) if "C3" in w else 0
        return n


def machine(url: str) -> dict[str, Any]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    client = redis.Redis.from_url(url)
    info = client.info("server")
    client.close()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "redis_server": str(info.get("redis_version", "?")),
        "redis_py": redis.__version__,
        "platform": platform.platform(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: float(r["cycles_per_s"]))
    best = dict(ordered[len(ordered) // 2])
    best["runs_cycles_per_s"] = [r["cycles_per_s"] for r in runs]
    return best


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def run_bench(
    url: str,
    config: BenchConfig,
    tick: Callable[[str], None] = lambda _: None,
    private: bool = False,
) -> dict[str, Any]:
    """Run the configured workloads against ``url``; returns the JSON-able result."""
    run_id = uuid.uuid4().hex[:8]

    def ns(tag: str) -> str:
        return f"skbench-{run_id}-{tag}"

    out: dict[str, Any] = {
        "machine": machine(url),
        "config": asdict(config),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "workloads": {},
    }
    out["floor"] = floor(url, config.floor_n)
    out["floor"]["scripts"] = script_floor(url, ns("floor"), config.floor_n)
    tick("floor")
    wl: dict[str, Any] = out["workloads"]
    specs = config.specs
    if "W1" in config.workloads:
        # slotkeeper with its audit events off, side by side: what recording them costs
        w1_specs = [*specs, "slotkeeper-noevents"] if "slotkeeper" in specs else list(specs)
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in w1_specs}
        for r in range(config.w1_repeats):
            for spec in w1_specs:
                runs[spec].append(
                    in_child(w1_uncontended, spec, url, ns(f"w1{r}"), config.w1_cycles)
                )
                tick(f"W1 {spec}")
        wl["W1"] = {s: _median_run(runs[s]) for s in w1_specs}
    if "W2" in config.workloads:
        wl["W2"] = {}
        for hold in config.w2_holds_ms:
            row = {}
            for spec in specs:
                row[spec] = w2_contended(
                    spec,
                    url,
                    ns("w2"),
                    hold,
                    config.w2_duration_s,
                    config.w2_procs,
                    config.w2_slots,
                )
                tick(f"W2 {spec} hold {hold:g} ms")
            wl["W2"][f"hold_{hold:g}ms"] = row
    if "W3" in config.workloads:
        wl["W3"] = {}
        for spec in specs:
            wl["W3"][spec] = w3_handoff(spec, url, ns("w3"), config.w3_rounds)
            tick(f"W3 {spec}")
    if "W4" in config.workloads:
        wl["W4"] = {}
        for spec in specs:
            runs4 = []
            for r in range(config.w4_runs):
                runs4.append(w4_crash(spec, url, ns("w4"), config.w4_ttl_s, r))
                tick(f"W4 {spec} run {r + 1}")
            over = [x["beyond_remaining_ttl_ms"] for x in runs4]
            wl["W4"][spec] = {
                "runs": runs4,
                "max_beyond_remaining_ttl_ms": max(over),
                "median_kill_to_grant_ms": statistics.median(x["kill_to_grant_ms"] for x in runs4),
            }
    if "W5" in config.workloads:
        wl["W5"] = {}
        for spec in specs:
            wl["W5"][spec] = w5_scale(
                spec, url, ns(f"w5{spec[:3]}"), list(config.w5_levels), config.w5_samples, tick
            )
        wl["W5"]["held"] = in_child(
            held_by_one, url, ns("w5held"), list(config.w5_held_levels), config.w5_samples, private
        )
        tick("W5 held by one process")
        wl["W5"]["reclaim"] = []
        for n in config.w5_reclaim:
            wl["W5"]["reclaim"].append(scale.reclaim(url, ns(f"rc{n}"), n, private))
            tick(f"W5 reclaim {n}")
    if "C1" in config.workloads:
        wl["C1"] = curves.c1_processes(
            url, ns("c1"), list(config.c1_procs), config.c1_hold_ms, config.c1_duration_s, tick=tick
        )
    if "C2" in config.workloads:
        wl["C2"] = curves.c2_waiters(
            url, ns("c2"), list(config.c2_levels), config.c2_samples, tick=tick
        )
    if "C3" in config.workloads:
        wl["C3"] = curves.c3_limits(url, ns("c3"), list(config.c3_levels), tick=tick)
    ratios: dict[str, float] = {}
    if "W1" in wl and "slotkeeper" in wl["W1"] and "reference" in wl["W1"]:
        ratios["W1_cycles_per_s"] = _ratio(
            wl["W1"]["slotkeeper"]["cycles_per_s"], wl["W1"]["reference"]["cycles_per_s"]
        )
        cpu = [wl["W1"][s].get("client_cpu_us_per_cycle") for s in ("slotkeeper", "reference")]
        if cpu[0] and cpu[1]:
            ratios["W1_client_cpu_per_cycle"] = _ratio(cpu[0], cpu[1])
    if "W1" in wl and "slotkeeper-noevents" in wl["W1"]:
        ratios["W1_events_on_vs_off"] = _ratio(
            wl["W1"]["slotkeeper"]["cycles_per_s"], wl["W1"]["slotkeeper-noevents"]["cycles_per_s"]
        )
    out["ratios"] = ratios
    out["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    if not private:
        _cleanup(url, f"skbench-{run_id}-")
    return out


def _cleanup(url: str, prefix: str) -> None:
    """Delete this run's keys from a Redis we did not start (only our unique namespaces)."""
    client = redis.Redis.from_url(url)
    for pattern in (f"sk:{{{prefix}*", f"skref:{{{prefix}*"):
        batch = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)
    client.close()
