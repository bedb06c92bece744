"""``slotkeeper bench --quick --json``: the result's structure and the invariants every run must
satisfy (never its speed): nobody over-admitted, every cycle accounted for, a crashed holder's slot
granted only after its lease expired, every expired lease reclaimed and counted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.redisproc import RedisProc

SPECS = ("slotkeeper", "reference")


def run_bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slotkeeper.cli.main", "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = run_bench("--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_quick_run_reports_every_workload_for_both(
    quick_result: tuple[dict[str, Any], str],
) -> None:
    res, table = quick_result
    cfg = res["config"]
    wl = res["workloads"]
    assert set(wl) == {"W1", "W2", "W3", "W4", "W5"}
    for w in ("W1", "W3", "W4", "W5"):
        assert set(SPECS) <= set(wl[w]), w
    m = res["machine"]
    assert m["nproc"] >= 1 and m["redis_server"] and m["python"]
    for what in ("ping", "evalsha"):
        f = res["floor"][what]
        assert f["n"] == cfg["floor_n"] and 0 < f["p50_ms"] <= f["p99_ms"] <= f["max_ms"]
    assert (
        "| metric" in table
        and "slotkeeper" in table
        and "targets (README.md, Performance)" in table
    )
    assert "DESIGN" not in table  # no such file in the repository
    names = {t["name"] for t in res["targets"]}
    assert any(n.startswith("W1 ") for n in names) and any(n.startswith("W3 ") for n in names)
    for t in res["targets"]:
        assert set(t) == {"name", "value", "target", "ok"}


def test_w1_counts_every_cycle(quick_result: tuple[dict[str, Any], str]) -> None:
    res, _ = quick_result
    for spec in (*SPECS, "slotkeeper-noevents"):  # events on vs off, side by side
        r = res["workloads"]["W1"][spec]
        assert r["cycles"] == res["config"]["w1_cycles"] and r["cycles_per_s"] > 0
        for part in ("acquire", "release", "cycle"):
            s = r[part]
            assert s["n"] == r["cycles"] and 0 < s["p50_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert res["ratios"]["W1_cycles_per_s"] > 0 and res["ratios"]["W1_events_on_vs_off"] > 0


def test_w2_never_over_admits_and_accounts_for_every_process(
    quick_result: tuple[dict[str, Any], str],
) -> None:
    res, _ = quick_result
    cfg = res["config"]
    for hold, row in res["workloads"]["W2"].items():
        for spec in SPECS:
            r = row[spec]
            assert r["slots"] == cfg["w2_slots"] and r["processes"] == cfg["w2_procs"]
            assert 1 <= r["max_holders_seen"] <= r["slots"], (hold, spec, r)
            assert len(r["per_process"]) == r["processes"] and sum(r["per_process"]) == r["cycles"]
            assert all(n > 0 for n in r["per_process"]), (hold, spec, r)  # nobody starved
            assert 0 < r["jain"] <= 1.0 and 0 <= r["utilisation"] <= 1.0


def test_w3_times_every_handoff(quick_result: tuple[dict[str, Any], str]) -> None:
    res, _ = quick_result
    for spec in SPECS:
        r = res["workloads"]["W3"][spec]
        assert r["rounds"] == r["n"] == res["config"]["w3_rounds"]
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]


def test_w4_dead_holders_slot_is_granted_only_after_its_lease_expired(
    quick_result: tuple[dict[str, Any], str],
) -> None:
    res, _ = quick_result
    ttl_ms = res["config"]["w4_ttl_s"] * 1000
    for spec in SPECS:
        runs = res["workloads"]["W4"][spec]["runs"]
        assert len(runs) == res["config"]["w4_runs"]
        for r in runs:
            assert 0 < r["remaining_ttl_ms"] <= ttl_ms
            # safety: the waiter cannot hold the slot while the dead holder's lease lives (a few ms
            # of slack: the remaining TTL is read from Redis just before the kill)
            assert r["kill_to_grant_ms"] >= r["remaining_ttl_ms"] - 20, (spec, r)


def test_w5_scale_levels_and_reclaim_leave_nothing_behind(
    quick_result: tuple[dict[str, Any], str],
) -> None:
    res, _ = quick_result
    cfg = res["config"]
    for spec in SPECS:
        levels = res["workloads"]["W5"][spec]["levels"]
        assert [lv["live_leases"] for lv in levels] == sorted(cfg["w5_levels"])
        for lv in levels:
            assert lv["memory_bytes"] > 0 and lv["acquire"]["n"] == cfg["w5_samples"]
    for rc in res["workloads"]["W5"]["reclaim"]:
        n = rc["leases"]
        assert rc["planted_records"] == n
        assert rc["reclaimed_holder_entries"] == n and rc["expired_counted"] == n
        assert rc["left_records"] == 0 and rc["left_holder_entries"] == 0
        assert rc["calls"] >= 1 and rc["longest_call_ms"] > 0


def test_bench_against_a_given_url_cleans_up_its_keys(redis_server: RedisProc) -> None:
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    client.set("not-ours", "1")
    proc = run_bench("--url", redis_server.url, "--quick", "--workloads", "W1,W3", "--json", "-")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert set(res["workloads"]) == {"W1", "W3"}
    assert "| metric" in proc.stderr  # the table goes to stderr when the JSON takes stdout
    assert list(client.scan_iter(match="sk*:{skbench-*")) == []
    assert client.get("not-ours") == b"1"


def test_unknown_workload_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_bench("--workloads", "W1,W9", timeout=60)
    assert proc.returncode == 2 and "W9" in proc.stderr
