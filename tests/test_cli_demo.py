"""``slotkeeper demo`` on a fresh machine (embedded broker), checked from the tasks' stamps."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from slotkeeper.cli.timeline import Stamp, chart, max_concurrent

CLI = [sys.executable, "-m", "slotkeeper.cli"]


@pytest.fixture
def embedded_cleanup() -> Iterator[None]:
    yield
    subprocess.run([*CLI, "server", "stop"], capture_output=True, timeout=60)


def overlap(spans: list[tuple[float, float]]) -> int:
    """Independent re-count: most spans containing one instant (a span's start)."""
    return max((sum(1 for s, e in spans if s <= t < e) for t, _ in spans), default=0)


def test_demo_json_bounds_hold(embedded_cleanup: None) -> None:
    p = subprocess.run(
        [*CLI, "--json", "demo", "--quick", "--seed", "7"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["ok"] is True
    throttles = [r["throttle"] for r in d["runs"]]
    assert throttles == [{}, {"print": 1}, {"print": 2}, {"example": 1}]
    for run in d["runs"]:
        stamps = run["stamps"]
        assert sorted(s["name"] for s in stamps) == ["alice", "bob", "chris"]
        for tag in ("print", "example"):
            spans = [(s["start"], s["end"]) for s in stamps if tag in s["tags"]]
            measured = overlap(spans)
            assert measured == run["max_concurrent"][tag]
            if tag in run["throttle"]:
                assert measured <= run["throttle"][tag]
    # without a throttle they do run together (the throttled runs are not vacuous)
    assert d["runs"][0]["max_concurrent"]["print"] >= 2
    # the run-scoped limits are gone afterwards
    ls = subprocess.run([*CLI, "--json", "ls"], capture_output=True, text=True, timeout=60)
    assert json.loads(ls.stdout) == []


def test_demo_text_has_lines_charts_and_verdicts(embedded_cleanup: None) -> None:
    p = subprocess.run(
        [*CLI, "demo", "--quick"], capture_output=True, text=True, timeout=120, env=None
    )
    assert p.returncode == 0, p.stderr
    out = p.stdout
    for who in ("alice", "bob", "chris"):
        assert out.count(f"{who} was here") == 40
    assert out.count("verdict:") == 4 and "bound 1) -> held" in out
    assert out.count("=== run") == 4 and "all bounds held" in out
    assert "|" in out and "alice [example,print]" in out


def test_timeline_helpers() -> None:
    s = [Stamp("a", ("x",), 0.0, 1.0), Stamp("b", ("x",), 1.0, 2.0), Stamp("c", ("y",), 0.5, 1.5)]
    assert max_concurrent(s, "x") == 1  # touching is not overlapping
    assert max_concurrent(s) == 2
    text = chart(s, width=20, unicode=False)
    rows = text.splitlines()
    assert len(rows) == 4
    # no column shows more simultaneous holders of x than really overlapped
    xa = rows[0].split("|")[1]
    xb = rows[1].split("|")[1]
    assert all(not (p == "#" and q == "#") for p, q in zip(xa, xb, strict=True))
    assert xa.startswith("#") and xb.endswith("#")
