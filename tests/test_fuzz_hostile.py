"""Fuzzer: random msgpack and strings written into every key type of a namespace while worker
processes use it and a daemon serves it. The daemon keeps serving (no crash, /metrics answers),
the limit nobody damaged keeps its bound (independent observer over the workers' stamps), and the
damaged limit recovers once the operator re-applies its configuration.

What is fuzzed: the namespace-wide keys (limits set, lease and ticket records under fresh ids and
under the damaged limit's ids, the ticket expiry index, the fence) and every key of the damaged
limit (config and counter fields, holder entries, queue entries). Live records of the undamaged
limit are left alone: whoever may write them can disturb that limit too (README: trust boundary).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slotkeeper import Limiter
from tests.support.redisproc import RedisProc
from tests.support.stamps import max_concurrency, per_name
from tests.test_daemon import DaemonProc, wait_for

FIELDS = ["n", "o", "m", "a", "r", "e", "t", "l", "p", "c"]
CFG_FIELDS = [
    "slots",
    "ttl",
    "enabled",
    "desc",
    "created",
    "updated",
    "c_acquired",
    "c_expired",
    "c_released",
    "w1",
    "w16",
    "w_sum",
]

scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["1", "1e999", "-1e999", "nan", "inf", "0x10", "", " 2", "-1", "10001"]),
    st.binary(max_size=8),
    st.none(),
    st.booleans(),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3)
    ),
    max_leaves=6,
)
records = st.fixed_dictionaries({}, optional={f: values for f in FIELDS}).map(
    lambda d: msgpack.packb(d, use_bin_type=True)
)
blobs = st.one_of(
    records,
    st.binary(max_size=40),
    st.text(max_size=20).map(str.encode),
    st.sampled_from([b"1e999", b"nan", b"-inf", b"\xc1"]),
)
scores = st.one_of(st.floats(allow_nan=False), st.sampled_from([1e15, 2e15, -1, 0]))
ops = st.lists(
    st.tuples(
        st.sampled_from(
            ["leases", "tickets", "ticket_exp", "fence", "limits", "cfg", "holders", "queue"]
        ),
        st.one_of(st.sampled_from(["x", "x#2", "bad", "b1", "good"]), st.text(max_size=6)),
        blobs,
        scores,
    ),
    min_size=1,
    max_size=12,
)


def _apply(r: Any, lim: Limiter, op: tuple[str, str, bytes, float]) -> None:
    kind, member, blob, score = op
    k = lim.broker.keys
    ids = [x.decode() for x in r.zrange(k.limit("bad")[1], 0, 2)] + [member]
    target = ids[hash(blob) % len(ids)].split("#")[0]  # sometimes a live lease id of "bad"
    if kind == "leases":
        r.hset(k.leases, target, blob)
    elif kind == "tickets":
        r.hset(k.tickets, target, blob)
    elif kind == "ticket_exp":
        r.zadd(k.fixed()[3], {member: score})
    elif kind == "fence":
        r.set(k.fixed()[4], blob)
    elif kind == "limits":
        r.sadd(k.limits, blob)
    elif kind == "cfg":
        r.hset(k.limit("bad")[0], CFG_FIELDS[len(blob) % len(CFG_FIELDS)], blob)
    elif kind == "holders":
        r.zadd(k.limit("bad")[1], {member: score})
    else:
        r.zadd(k.limit("bad")[2], {member: score})


@pytest.mark.timeout(600)
def test_fuzzed_namespace_keeps_serving(
    redis_server: RedisProc, namespace: str, tmp_path: Path
) -> None:
    lim = Limiter(redis_server.url, namespace, ttl=2)
    lim.create("good", 2)
    lim.create("bad", 1)
    r = redis_server.client()
    stop = tmp_path / "stop"
    workers = []
    for i, name in enumerate(["good", "good", "good", "bad", "bad"]):
        args = {
            "url": redis_server.url,
            "ns": namespace,
            "name": name,
            "seed": i,
            "stop": str(stop),
            "out": str(tmp_path / f"w{i}.json"),
        }
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.support.workers", "tolerant", json.dumps(args)]
            )
        )
    daemon = DaemonProc(redis_server.url, namespace, tmp_path, "--interval", "0.05")
    try:

        @settings(
            max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(ops)
        def fuzz(batch: list[tuple[str, str, bytes, float]]) -> None:
            for op in batch:
                _apply(r, lim, op)
            assert daemon.proc.poll() is None, daemon.log()
            code, _ = daemon.get("/metrics")
            assert code == 200, daemon.log()

        fuzz()
        # a damage the read side always reports (no script rewrites 'created'), beside the random
        # ones: the daemon audits only every few seconds, so wait for a scrape to have read it
        # (scrapes log through the same problem log) instead of hoping an audit fell after it
        r.hset(lim.broker.keys.limit("bad")[0], "created", "not-a-number")
        bad_problems = ("slotkeeper_limit_problems", (("limit", "bad"), ("namespace", namespace)))
        wait_for(
            lambda: (daemon.scrape().get(bad_problems) or 0) > 0,
            timeout=60,
            what="the damage to be read and reported",
        )

        def passes() -> float:
            return daemon.scrape().get(
                ("slotkeeper_daemon_passes_total", (("namespace", namespace),)), 0.0)

        # two more complete passes over what the fuzzer left (a definite signal, not a guessed
        # delay), and the daemon is still there
        after = passes()
        wait_for(lambda: passes() >= after + 2, what="two more daemon passes")
        assert daemon.proc.poll() is None, daemon.log()
        # the operator re-applies the configuration (the fence, records and entries need nothing)
        for k in (lim.broker.keys.limit("bad")[0],):
            r.delete(k)
        r.srem(
            lim.broker.keys.limits,
            *[m for m in r.smembers(lim.broker.keys.limits) if m not in (b"good", b"bad")],
        )
        lim.set("bad", slots=1, create=True)
        # the damaged limit recovers: the daemon sweeps crafted holder entries, dead tickets go
        lim.acquire("bad", timeout=60).release()
        wait_for(
            lambda: (
                daemon.scrape().get(
                    ("slotkeeper_limit_problems", (("limit", "bad"), ("namespace", namespace)))
                )
                == 0
            ),
            timeout=60,
            what="the damaged limit to read clean",
        )
        assert "Traceback" not in daemon.log()
        assert "problem: limit 'bad'" in daemon.log()  # positive control: the damage was seen
    finally:
        stop.touch()
        for w in workers:
            w.wait(60)
        daemon.stop()
    good: list[dict[str, Any]] = []
    for i in range(3):
        out = json.loads((tmp_path / f"w{i}.json").read_text())
        assert not out["errors"], out["errors"]  # the undamaged limit never failed a call
        good += out["stamps"]
    assert sum(1 for s in good if s["ok"]) > 50  # positive control: it kept admitting
    assert max_concurrency(per_name([s for s in good if s["ok"]], "good")) <= 2
