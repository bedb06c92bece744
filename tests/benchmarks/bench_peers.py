"""slotkeeper side by side with its peers on the same workloads, plus the reference and the floor.

    .venv/bin/python -m tests.benchmarks.bench_peers [--quick] [--json PATH] [--no-dask]
                                                      [--no-prefect] [--prefect-w2]

* slotkeeper and the reference (a minimal Lua ZSET semaphore): a private redis-server;
* dask.distributed ``Semaphore``: a dask scheduler in its own process (dask is in the project's
  ``dask`` extra);
* Prefect 3 global concurrency limits: Prefect's own API server on loopback with SQLite in a
  temporary PREFECT_HOME, run from a separate virtualenv that this script creates on first use
  (``prefect==3.8.8 fastapi==0.154.0``, see peer_prefect.py).

W1 (uncontended cycles), W2 (4 processes on 2 slots, holds of 0 and 5 ms) and W3 (release->grant
handoff) for everyone (W2 for Prefect with --prefect-w2: it is slow); W4/W5 need Redis internals
and are in ``slotkeeper bench``. Prints one table and writes JSON (default
bench-results/peers.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from slotkeeper.bench.report import render, targets
from slotkeeper.bench.runner import machine
from slotkeeper.bench.server import PrivateRedis
from slotkeeper.bench.workloads import floor, in_child, w1_uncontended, w2_contended, w3_handoff
from tests.benchmarks.peer_dask import DaskScheduler
from tests.benchmarks.peer_prefect import ROOT, ensure_venv

DASK = "tests.benchmarks.peer_dask:DaskImpl"


def median_w1(spec: str, url: str, ns: str, cycles: int, repeats: int) -> dict[str, Any]:
    runs = [in_child(w1_uncontended, spec, url, f"{ns}{r}", cycles) for r in range(repeats)]
    runs.sort(key=lambda r: float(r["cycles_per_s"]))
    best = dict(runs[len(runs) // 2])
    best["runs_cycles_per_s"] = [r["cycles_per_s"] for r in runs]
    return best


def run_prefect(quick: bool, with_w2: bool) -> dict[str, Any]:
    py = ensure_venv()
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "prefect.json"
        cmd = [
            str(py),
            "-m",
            "tests.benchmarks.peer_prefect",
            "--out",
            str(out),
            "--w1-cycles",
            "20" if quick else "100",
            "--w3-rounds",
            "8" if quick else "30",
        ]
        if with_w2:
            cmd += ["--w2-duration", "2" if quick else "5"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"prefect run failed: {proc.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=str(ROOT / "bench-results" / "peers.json"))
    ap.add_argument("--no-dask", action="store_true")
    ap.add_argument("--no-prefect", action="store_true")
    ap.add_argument("--prefect-w2", action="store_true")
    a = ap.parse_args()
    w1n, reps, w2s, w3n = (300, 1, 1.0, 30) if a.quick else (3000, 3, 5.0, 300)
    res: dict[str, Any] = {
        "workloads": {"W1": {}, "W2": {}, "W3": {}},
        "versions": {},
        "errors": {},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    wl = res["workloads"]

    def w2_into(spec_label: str, result: dict[str, Any]) -> None:
        for hold, row in result.items():
            wl["W2"].setdefault(hold, {})[spec_label] = row

    with PrivateRedis() as url:
        res["machine"] = machine(url)
        res["floor"] = floor(url, 3000)
        for spec in ("slotkeeper", "reference"):
            print(f"-- {spec}", flush=True)
            wl["W1"][spec] = median_w1(spec, url, f"pw1{spec[:3]}", w1n, reps)
            w2_into(
                spec, {f"hold_{h:g}ms": w2_contended(spec, url, "pw2", h, w2s) for h in (0.0, 5.0)}
            )
            wl["W3"][spec] = w3_handoff(spec, url, f"pw3{spec[:3]}", w3n)
    if not a.no_dask:
        print("-- dask", flush=True)
        import distributed

        res["versions"]["dask"] = distributed.__version__
        try:
            with DaskScheduler() as addr:
                wl["W1"]["dask"] = median_w1(DASK, addr, "w1", w1n, 1)
                w2_into(
                    "dask",
                    {
                        f"hold_{h:g}ms": w2_contended(DASK, addr, f"w2{h:g}", h, w2s)
                        for h in (0.0, 5.0)
                    },
                )
                wl["W3"]["dask"] = w3_handoff(DASK, addr, "w3", min(w3n, 200), settle_s=0.05)
        except Exception as exc:  # report, do not hide: the table shows what ran
            res["errors"]["dask"] = f"{type(exc).__name__}: {exc}"
    if not a.no_prefect:
        print("-- prefect (separate venv, its own server; slow by nature)", flush=True)
        try:
            pr = run_prefect(a.quick, a.prefect_w2)
            res["versions"]["prefect"] = pr.pop("version")
            wl["W1"]["prefect"] = pr["W1"]
            wl["W3"]["prefect"] = pr["W3"]
            if "W2" in pr:
                w2_into("prefect", pr["W2"])
        except Exception as exc:
            res["errors"]["prefect"] = f"{type(exc).__name__}: {exc}"
    res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    sk, ref = wl["W1"]["slotkeeper"]["cycles_per_s"], wl["W1"]["reference"]["cycles_per_s"]
    res["ratios"] = {"W1_cycles_per_s": round(sk / ref, 3) if ref else 0.0}
    print(render(res))
    for name, err in res["errors"].items():
        print(f"{name}: did not run: {err}")
    print("versions:", res["versions"])
    path = Path(a.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    res["targets"] = targets(res)
    path.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
