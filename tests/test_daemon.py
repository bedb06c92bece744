"""The daemon as a real process: reclaim, grants, signals, Redis outages, several daemons at once,
SIGKILL mid-reclaim, garbage in the keys."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from slotkeeper.broker.client import Broker
from slotkeeper.broker.records import QUEUED
from tests.support.redisproc import RedisProc

CLI = [sys.executable, "-m", "slotkeeper.cli"]


def wait_for(
    cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition", every: float = 0.02
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


class DaemonProc:
    """``slotkeeper daemon`` in a subprocess, metrics on a free port (port 0, read from its log)."""

    def __init__(self, url: str, namespace: str, tmp: Path, *args: str) -> None:
        self.log_path = tmp / f"daemon-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*CLI, "--url", url, "--namespace", namespace, "daemon", "--metrics-port", "0", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        m = wait_for(
            lambda: re.search(r"serving (http://[\d.]+:\d+)/metrics", self.log()),
            what="the daemon's metrics address",
        )
        self.base = m.group(1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample as {(name, sorted labels): value}."""
        code, text = self.get("/metrics")
        assert code == 200, text
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def health(self) -> tuple[int, dict[str, Any]]:
        code, body = self.get("/healthz")
        return code, json.loads(body)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._log.close()
        return rc


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., DaemonProc]]:
    started: list[DaemonProc] = []

    def start(url: str, namespace: str, *args: str) -> DaemonProc:
        d = DaemonProc(url, namespace, tmp_path, *args)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)


def metric(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def make_expired(
    b: Broker, limits: int, per_limit: int, ttl_ms: int = 1000, occupy: int = 1
) -> None:
    """Leases that nobody renews, limit by limit (so no acquire purges another limit's holders),
    then wait until the server clock passes their expiry."""
    for i in range(limits):
        b.create_limit(f"L{i}", per_limit * occupy)
        for j in range(per_limit):
            b.acquire([f"L{i}"], f"l{i}-{j}", occupy=occupy, ttl_ms=ttl_ms, wait=False)
    deadline = b.server_time_ms() + ttl_ms + 50
    while b.server_time_ms() < deadline:
        time.sleep(0.05)


def totals(b: Broker) -> dict[str, int]:
    out = {"acquired": 0, "expired": 0, "released": 0, "used": 0, "entries": 0}
    for name in b.list_limits():
        s = b.snapshot(name, 1)
        out["acquired"] += s.counters.acquired
        out["expired"] += s.counters.expired
        out["released"] += s.counters.released
        out["used"] += s.used
        out["entries"] += s.n_holder_entries
    return out


def test_reclaims_expired_leases_and_records(
    redis_server: RedisProc, namespace: str, daemons: Callable[..., DaemonProc]
) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    make_expired(b, limits=3, per_limit=200, occupy=2, ttl_ms=2000)
    before = totals(b)
    assert before["entries"] == 3 * 200 * 2 and before["expired"] == 0
    d = daemons(redis_server.url, namespace, "--interval", "0.1", "--batch", "50")
    wait_for(lambda: totals(b)["entries"] == 0, what="every expired holder entry reclaimed")
    r = redis_server.client()
    wait_for(
        lambda: r.hlen(b.keys.leases) == 0,
        what="lease records collected",
    )
    t = totals(b)
    assert t["expired"] == 600 and t["acquired"] == 600 and t["used"] == 0
    wait_for(
        lambda: (
            metric(d.scrape(), "slotkeeper_daemon_reclaimed_total", namespace=namespace) == 1200
        ),
        what="daemon counter",
    )
    assert d.stop() == 0
    assert "Traceback" not in d.log()


def test_daemon_grants_waiter_after_expiry_and_notifies(
    redis_server: RedisProc, namespace: str, daemons: Callable[..., DaemonProc]
) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    b.create_limit("one", 1)
    b.acquire(["one"], "holder", ttl_ms=500, wait=False)  # never renewed: it will expire
    channel = b.keys.wake_channel("test-waiter")
    ps = redis_server.client().pubsub()
    ps.subscribe(channel)
    wait_for(lambda: ps.get_message(timeout=0.1), what="subscription")
    res = b.acquire(["one"], "waiter", ttl_ms=20_000, wait=True, channel=channel)
    assert res.status == QUEUED
    d = daemons(redis_server.url, namespace, "--interval", "0.1")
    msg = wait_for(lambda: ps.get_message(timeout=0.2), what="grant notification")
    assert msg["data"].decode().startswith("waiter g ")
    rec = b.lease_record("waiter")
    assert rec is not None and rec.names == ["one"]
    snap = b.snapshot("one")
    assert [h.lease_id for h in snap.holders] == ["waiter"] and snap.counters.expired == 1
    assert d.stop() == 0
    ps.close()


def test_sigterm_and_sigint_exit_zero(
    redis_server: RedisProc, namespace: str, daemons: Callable[..., DaemonProc]
) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        d = daemons(redis_server.url, namespace, "--interval", "0.2")
        wait_for(lambda d=d: d.health()[0] == 200, what="healthy")
        assert d.stop(sig) == 0
        assert "stopped" in d.log() and "Traceback" not in d.log()


def test_once_runs_one_pass(redis_server: RedisProc, namespace: str) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    make_expired(b, limits=1, per_limit=30)
    p = subprocess.run(
        [*CLI, "--url", redis_server.url, "--namespace", namespace, "daemon", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert totals(b)["expired"] == 30 and totals(b)["entries"] == 0


def test_redis_down_is_logged_once_and_recovers(
    fresh_redis: RedisProc, namespace: str, daemons: Callable[..., DaemonProc]
) -> None:
    d = daemons(fresh_redis.url, namespace, "--interval", "0.1")
    wait_for(lambda: d.health()[0] == 200, what="healthy")
    fresh_redis.stop()
    code, body = wait_for(
        lambda: (lambda h: h if h[0] == 503 else None)(d.health()), what="unhealthy"
    )
    assert body["redis"] == "down"
    samples = d.scrape()  # /metrics still answers while Redis is down
    assert metric(samples, "slotkeeper_redis_up", namespace=namespace) == 0
    # let several passes fail: still one line for the state change
    wait_for(
        lambda: (
            (metric(d.scrape(), "slotkeeper_daemon_errors_total", namespace=namespace) or 0) >= 2
        ),
        what="failing passes",
    )
    fresh_redis.start()
    wait_for(lambda: d.health()[0] == 200, what="healthy again")
    wait_for(lambda: "reachable again" in d.log(), what="recovery line")
    log = d.log()
    assert log.count("is unreachable") == 1, log
    assert log.count("reachable again") == 1, log
    assert "Traceback" not in log
    b = Broker.from_url(fresh_redis.url, namespace)
    make_expired(b, limits=1, per_limit=10)
    wait_for(lambda: totals(b)["expired"] == 10, what="reclaim after recovery")
    assert d.stop() == 0


def test_two_daemons_share_the_work_without_double_counting(
    redis_server: RedisProc, namespace: str, daemons: Callable[..., DaemonProc]
) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    make_expired(b, limits=2, per_limit=1500, ttl_ms=3000)  # none expires while being made
    d1 = daemons(redis_server.url, namespace, "--interval", "0.05", "--batch", "5")
    d2 = daemons(redis_server.url, namespace, "--interval", "0.05", "--batch", "5")
    wait_for(lambda: totals(b)["entries"] == 0, timeout=60, what="all reclaimed")
    t = totals(b)
    assert t["expired"] == 3000 and t["acquired"] == 3000

    def both() -> tuple[float, float] | None:
        a = metric(d1.scrape(), "slotkeeper_daemon_reclaimed_total", namespace=namespace)
        c = metric(d2.scrape(), "slotkeeper_daemon_reclaimed_total", namespace=namespace)
        return (a or 0, c or 0) if (a or 0) + (c or 0) == 3000 else None

    r1, r2 = wait_for(both, what="each entry reclaimed by exactly one daemon")
    assert r1 + r2 == 3000
    s1, s2 = d1.scrape(), d2.scrape()
    for name in ("slotkeeper_expired_total", "slotkeeper_acquired_total"):
        for lim in ("L0", "L1"):
            assert metric(s1, name, namespace=namespace, limit=lim) == 1500
            assert metric(s2, name, namespace=namespace, limit=lim) == 1500
    assert d1.stop() == 0 and d2.stop() == 0


def test_sigkill_mid_reclaim_then_restart_loses_nothing(
    redis_server: RedisProc, namespace: str, daemons: Callable[..., DaemonProc]
) -> None:
    n_limits, per = 10, 2000
    total = n_limits * per
    b = Broker.from_url(redis_server.url, namespace)
    make_expired(b, limits=n_limits, per_limit=per)
    # tiny batches so the kill lands in the middle of the work
    d = daemons(redis_server.url, namespace, "--interval", "0.05", "--batch", "2")
    at_kill = wait_for(
        lambda: (lambda t: t if t["expired"] >= 100 else None)(totals(b)),
        what="reclaim under way",
        every=0.005,
    )
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    t = totals(b)
    assert 0 < t["expired"] < total, f"the daemon finished before the kill: {t} {at_kill}"
    assert t["expired"] + t["entries"] == total  # every entry is reclaimed+counted or still there
    d2 = daemons(redis_server.url, namespace, "--interval", "0.05")
    wait_for(lambda: totals(b)["entries"] == 0, timeout=60, what="everything reclaimed")
    r = redis_server.client()
    wait_for(lambda: r.hlen(b.keys.leases) == 0, what="records collected")
    t = totals(b)
    assert t == {"acquired": total, "expired": total, "released": 0, "used": 0, "entries": 0}
    samples = d2.scrape()
    assert (
        sum(
            metric(samples, "slotkeeper_expired_total", namespace=namespace, limit=f"L{i}") or 0
            for i in range(n_limits)
        )
        == total
    )
    assert d2.stop() == 0


def test_garbage_is_reported_and_the_rest_reclaimed(
    redis_server: RedisProc, namespace: str, daemons: Callable[..., DaemonProc]
) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    r = redis_server.client()
    b.create_limit("badslots", 1)
    r.hset(b.keys.limit("badslots")[0], "slots", "lots")
    b.create_limit("wrongtype", 1)
    r.delete(b.keys.limit("wrongtype")[1])
    r.set(b.keys.limit("wrongtype")[1], "not a zset")
    b.create_limit("garbagerec", 5)
    b.acquire(["garbagerec"], "gl", ttl_ms=60_000, wait=False)
    r.hset(b.keys.leases, "gl", b"\xc1not msgpack")
    r.sadd(b.keys.limits, "bad{name}")
    make_expired(b, limits=1, per_limit=50)  # L0: healthy, must still be reclaimed
    d = daemons(redis_server.url, namespace, "--interval", "0.1")
    wait_for(lambda: b.snapshot("L0", 1).counters.expired == 50, what="healthy limit reclaimed")
    wait_for(
        lambda: all(
            s in d.log()
            for s in (
                "limit 'badslots': field 'slots' is not a number",
                "'wrongtype': reclaim failed",
                "limit 'garbagerec': removed 1 holder entries that no lease record backs",
                "'bad{name}' has an unusable name",
            )
        ),
        what="problems logged",
    )
    samples = d.scrape()
    for lim in ("badslots", "wrongtype", "bad{name}"):  # garbagerec: its entry was removed
        assert (
            metric(samples, "slotkeeper_limit_problems", namespace=namespace, limit=lim) or 0
        ) >= 1, lim
    assert metric(samples, "slotkeeper_limit_problems", namespace=namespace, limit="L0") == 0
    assert metric(samples, "slotkeeper_limit_slots", namespace=namespace, limit="L0") == 50
    # more passes, each failing again on 'wrongtype' (the same scrape counts them): each problem
    # is still logged once
    def counts() -> tuple[float, float]:
        s = d.scrape()
        return (metric(s, "slotkeeper_daemon_passes_total", namespace=namespace) or 0,
                metric(s, "slotkeeper_daemon_errors_total", namespace=namespace) or 0)

    passes0, errors0 = counts()
    wait_for(lambda: (lambda p, e: p >= passes0 + 3 and e >= errors0 + 3)(*counts()),
             what="three more passes that failed on 'wrongtype'")
    log = d.log()
    assert log.count("'wrongtype': reclaim failed") == 1, log
    assert "Traceback" not in log
    assert d.health()[0] == 200
    assert d.stop() == 0
    for k in r.scan_iter(match=b.keys.pattern()):
        r.delete(k)


def test_bad_port_is_one_line_error(redis_server: RedisProc, namespace: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = subprocess.run(
            [*CLI, "--url", redis_server.url, "daemon", "--metrics-port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert p.returncode == 1
    assert "cannot serve metrics" in p.stderr and "Traceback" not in p.stderr


def test_daemon_env_configuration(redis_server: RedisProc, namespace: str) -> None:
    env = dict(os.environ, SLOTKEEPER_URL=redis_server.url, SLOTKEEPER_NAMESPACE=namespace)
    b = Broker.from_url(redis_server.url, namespace)
    make_expired(b, limits=1, per_limit=5)
    p = subprocess.run(
        [*CLI, "daemon", "--once"], env=env, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    assert totals(b)["expired"] == 5
