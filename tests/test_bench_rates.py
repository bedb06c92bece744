"""``slotkeeper bench --quick --workloads R1,R2,R3,T1``: structure and invariants (never speed):
no window over-granted, every grant accounted for, every idle template key reaped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_quick_rate_workloads(tmp_path: Path) -> None:
    out = tmp_path / "rates.json"
    proc = subprocess.run(
        [sys.executable, "-m", "slotkeeper.cli.main", "bench", "--quick", "--workloads",
         "R1,R2,R3,T1", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())["rates"]
    r1 = res["R1"]
    assert r1["proven_violations"] == 0
    assert 0 < r1["granted"] <= r1["expected_max"] and r1["broker_units"] == r1["granted"]
    assert res["R2"]["grants"] == 100 and res["R2"]["script_calls_per_grant"] > 0
    assert res["R3"]["slots_only_cycles_per_s"] > 0 and res["R3"]["slots_rate_cycles_per_s"] > 0
    t1 = res["T1"]
    # every key goes: lazily, by later acquires of the template's keys, or by the daemon's pass
    assert t1["keys"] == 500 and t1["left"] == 0
    assert t1["reaped"] + t1["reaped_lazily"] == 500
    for key in ("R1 accuracy", "R2 spread", "R3 cost", "T1 templates"):
        assert key in proc.stdout
