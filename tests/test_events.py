"""Audit events: every transition appends one entry, written by the script that makes it happen, with
the right fields; the cap holds; recording can be switched off per namespace; `slotkeeper events`
filters, prints JSON and follows live; /api/v1/events serves the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from slotkeeper.broker.client import Broker
from slotkeeper.broker.daemon import Daemon
from slotkeeper.broker.errors import OccupyExceedsLimit, QueueFull
from slotkeeper.broker.events import Event
from slotkeeper.broker.readmodel import ReadModel
from slotkeeper.broker.records import GRANTED, QUEUED, pack_meta
from slotkeeper.cli.main import cli
from slotkeeper.limiter import Limiter
from tests.support.redisproc import RedisProc

META = pack_meta("node-3", 777, "w9", "etl-job")


@pytest.fixture
def broker(redis_server: RedisProc, namespace: str) -> Iterator[Broker]:
    b = Broker.from_url(redis_server.url, namespace)
    yield b
    b.close()


def events(b: Broker, **kw: Any) -> list[Event]:
    return ReadModel(b).events(count=10_000, **kw)


def kinds(b: Broker) -> list[str]:
    return [e.kind for e in events(b)]


def sk(url: str, namespace: str, *args: str) -> Any:
    r = CliRunner().invoke(cli, ["--url", url, "-n", namespace, *args])
    assert r.exit_code == 0, r.output
    return r


def test_every_transition_is_recorded_with_its_fields(broker: Broker) -> None:
    b = broker
    t0 = b.server_time_ms()
    b.create_limit("gpu", 2)
    (ev,) = events(b)
    assert (ev.kind, ev.names, ev.lease_id) == ("limit", ("gpu",), "")
    assert ev.detail.startswith("create") and "slots=2" in ev.detail

    # grant at once, with the holder's metadata
    assert (
        b.acquire(["gpu"], "L1", occupy=2, ttl_ms=60_000, wait=False, meta=META).status == GRANTED
    )
    g = events(b)[-1]
    assert (g.kind, g.lease_id, g.names, g.occupy) == ("grant", "L1", ("gpu",), 2)
    assert (g.host, g.pid, g.worker, g.label) == ("node-3", 777, "w9", "etl-job")
    assert g.detail == "waited 0 ms" and t0 <= g.time_ms <= b.server_time_ms()

    # a waiter: timeout; another waiter granted from the queue on release
    assert b.acquire(["gpu"], "T1", ttl_ms=60_000, wait=True, meta=META).status == QUEUED
    b.cancel(["gpu"], "T1", timed_out=True)
    t = events(b)[-1]
    assert (t.kind, t.lease_id, t.names, t.label) == ("timeout", "T1", ("gpu",), "etl-job")
    assert b.acquire(["gpu"], "W1", ttl_ms=60_000, wait=True, meta=META).status == QUEUED
    assert b.release(["gpu"], "L1")
    rel, granted = events(b)[-2:]
    assert (rel.kind, rel.lease_id, rel.occupy) == ("release", "L1", 2)
    assert (granted.kind, granted.lease_id) == ("grant", "W1")
    assert granted.detail.startswith("waited ")

    # revoke; a withdrawn waiter; expiry (nobody renews a short lease)
    assert b.revoke("W1")
    assert events(b)[-1].kind == "revoke" and events(b)[-1].lease_id == "W1"
    b.acquire(["gpu"], "H", occupy=2, ttl_ms=60_000, wait=False)
    b.acquire(["gpu"], "C1", ttl_ms=60_000, wait=True)
    b.cancel(["gpu"], "C1", timed_out=False)
    assert events(b)[-1].kind == "cancel"
    b.release(["gpu"], "H")
    b.acquire(["gpu"], "E1", ttl_ms=200, wait=False, meta=META)
    deadline = b.server_time_ms() + 250
    while b.server_time_ms() < deadline:
        time.sleep(0.02)
    b.reclaim("gpu")
    e = events(b)[-1]
    assert (e.kind, e.lease_id, e.names, e.label) == ("expire", "E1", ("gpu",), "etl-job")

    # rejections: more than the limit has, a missing limit, a full queue
    with pytest.raises(OccupyExceedsLimit):
        b.acquire(["gpu"], "R1", occupy=3, wait=False, meta=META)
    assert (events(b)[-1].kind, events(b)[-1].detail) == ("reject", "exceeds gpu")
    b.create_limit("q", 1, max_waiters=1)
    b.acquire(["q"], "Q0", ttl_ms=60_000, wait=False)
    b.acquire(["q"], "Q1", ttl_ms=60_000, wait=True)
    with pytest.raises(QueueFull):
        b.acquire(["q"], "Q2", ttl_ms=60_000, wait=True)
    assert (events(b)[-1].kind, events(b)[-1].lease_id) == ("reject", "Q2")
    assert "queue_full q" in events(b)[-1].detail

    # limit changes: update, delete (its waiter rejected as 'missing')
    b.update_limit("gpu", slots=5, description="more")
    u = events(b)[-1]
    assert u.kind == "limit" and u.detail.startswith("update") and "slots=5" in u.detail
    b.release(["q"], "Q0")  # Q1 gets it; release that too so q can go
    b.release(["q"], "Q1")
    b.delete_limit("q")
    assert (events(b)[-1].kind, events(b)[-1].detail) == ("limit", "delete")
    # every event is an entry of its own, in time order
    ids = [e.id for e in events(b)]
    assert len(ids) == len(set(ids))
    assert [e.time_ms for e in events(b)] == sorted(e.time_ms for e in events(b))


def test_sdk_flow_events_and_filters(redis_server: RedisProc, namespace: str) -> None:
    lim = Limiter(redis_server.url, namespace, ttl=10, slow_wait=0)
    lim.create("a", 1)
    lim.create("b", 1)
    assert lim.acquire("a", "b", label="both").release()
    assert lim.acquire("b", label="only-b").release()
    model = ReadModel(lim.broker)
    only_a = model.events(limit="a")
    assert [e.kind for e in only_a] == ["limit", "grant", "release"]
    assert {e.label for e in only_a if e.kind == "grant"} == {"both"}
    assert len(model.events(limit="b")) == 5
    assert [e.kind for e in model.events(count=2)] == ["grant", "release"]  # the newest two
    assert model.events(since_s=3600) == model.events()
    time.sleep(3.1)  # the window is by the server's clock: every event so far is older than 3 s
    assert model.events(since_s=3) == []
    # positive control, same window and reader: fresh events, 1.5 s old by the server's clock
    # (so a window shorter than asked would miss them), are in it, and only they
    assert lim.acquire("a", label="fresh").release()
    fresh_ms = model.events()[-1].time_ms
    while lim.broker.server_time_ms() < fresh_ms + 1500:
        time.sleep(0.02)
    fresh = model.events(since_s=3)
    assert [(e.kind, e.label) for e in fresh] == [("grant", "fresh"), ("release", "fresh")]

    out = sk(redis_server.url, namespace, "--json", "events", "--limit", "b")
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert [x["kind"] for x in lines] == ["limit", "grant", "release", "grant", "release"]
    assert lines[3]["label"] == "only-b" and lines[3]["names"] == ["b"]
    text = sk(redis_server.url, namespace, "events", "--since", "1h").stdout
    assert "only-b" in text and "EVENT" in text.splitlines()[0]


def test_cap_holds_and_recording_switches_off(redis_server: RedisProc, namespace: str) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    other = Broker.from_url(redis_server.url, namespace + "o")
    out = sk(redis_server.url, namespace, "--json", "events", "--cap", "150")
    assert json.loads(out.stdout) == {"events": True, "cap": 150}
    b.create_limit("x", 1)
    for i in range(600):  # 1,200 events
        b.acquire(["x"], f"c{i}", ttl_ms=60_000, wait=False)
        b.release(["x"], f"c{i}")
    n = b.redis.xlen(b.keys.events)
    # MAXLEN ~ trims whole stream nodes (stream-node-max-entries, 100 by default): about the cap
    assert 150 <= n <= 150 + 100, n
    assert events(b)[-1].lease_id == "c599"

    sk(redis_server.url, namespace, "events", "--disable")
    before = b.redis.xlen(b.keys.events)
    other.create_limit("x", 1)
    for i in range(20):
        b.acquire(["x"], f"d{i}", ttl_ms=60_000, wait=False)
        b.release(["x"], f"d{i}")
        other.acquire(["x"], f"d{i}", ttl_ms=60_000, wait=False)
        other.release(["x"], f"d{i}")
    assert b.redis.xlen(b.keys.events) == before  # off in this namespace...
    assert len(events(other)) == 41  # ...not in another
    assert "OFF" in sk(redis_server.url, namespace, "events").stdout
    sk(redis_server.url, namespace, "events", "--enable")
    b.acquire(["x"], "back", ttl_ms=60_000, wait=False)
    assert events(b)[-1].lease_id == "back"


def test_follow_sees_a_grant_live(redis_server: RedisProc, namespace: str) -> None:
    lim = Limiter(redis_server.url, namespace, ttl=10, slow_wait=0)
    lim.create("live", 1)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "slotkeeper.cli", "--url", redis_server.url, "-n", namespace]
    proc = subprocess.Popen(
        [*cmd, "--json", "events", "--follow", "--limit", "live"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # the past: the limit's creation
        assert first["kind"] == "limit"
        lease = lim.acquire("live", label="followed")
        got = json.loads(proc.stdout.readline())
        assert (got["kind"], got["lease_id"], got["label"]) == ("grant", lease.id, "followed")
        lease.release()
        assert json.loads(proc.stdout.readline())["kind"] == "release"
    finally:
        proc.terminate()
        proc.wait(10)


def test_events_api(broker: Broker) -> None:
    b = broker
    b.create_limit("api", 2)
    b.acquire(["api"], "A1", ttl_ms=60_000, wait=False, meta=META)
    srv = Daemon(b).serve_http("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"{srv.url}/api/v1/events?limit=api&count=1", timeout=10) as r:
            body = json.loads(r.read())
        assert body["recording"] is True and body["cap"] == 10_000
        (ev,) = body["events"]
        assert (ev["kind"], ev["lease_id"], ev["label"], ev["names"]) == (
            "grant",
            "A1",
            "etl-job",
            ["api"],
        )
        try:
            urllib.request.urlopen(f"{srv.url}/api/v1/events?since=fortnight", timeout=10)
            raise AssertionError("a bad duration must be refused")
        except urllib.error.HTTPError as e:
            assert e.code == 400 and json.loads(e.read())["type"] == "InvalidArgument"
    finally:
        srv.close()
