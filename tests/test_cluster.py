"""Redis Cluster (three local masters): each namespace lives in one hash slot ({ns} tag), so its
scripts stay atomic on one node while different namespaces spread over the shards. Multi-limit
acquire, waiting and push wake-ups, heartbeats, worker processes, the CLI and the daemon all work
through a ``redis+cluster://`` URL."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from slotkeeper import BrokerUnavailable, Lease, Limiter, limit
from slotkeeper.broker.client import Broker
from slotkeeper.broker.keys import Keys
from tests.support.chaos import Pool
from tests.support.cluster import ClusterSetup
from tests.support.observer import check
from tests.support.push import check_pushed_grant, push_only

CLI = [sys.executable, "-m", "slotkeeper.cli"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterSetup]:
    with ClusterSetup() as c:
        yield c


def namespaces_on_every_node(c: ClusterSetup, prefix: str) -> dict[int, str]:
    """One namespace per node: node port -> namespace (placement checked with CLUSTER KEYSLOT)."""
    out: dict[int, str] = {}
    i = 0
    while len(out) < len(c.nodes):
        ns = f"{prefix}{i}"
        i += 1
        slot = c.keyslot(Keys(ns).limits)
        out.setdefault(c.owner(slot).port, ns)
    return out


def exercise(cluster: ClusterSetup, port: int, ns: str) -> None:
    lim = Limiter(cluster.url, ns, ttl=1.5)
    lim.create("gpu", 2)
    lim.create("db", 3)
    keys = Keys(ns)
    # every key of the namespace shares its hash slot, served by the chosen node only
    slots = {cluster.keyslot(k) for k in [*keys.fixed(), *keys.limit("gpu"), *keys.limit("db")]}
    assert len(slots) == 1
    for node in cluster.nodes:
        found = node.client().keys(f"sk:{{{ns}}}:*")
        assert bool(found) == (node.port == port), (ns, node.port)

    big = lim.acquire("gpu", "db", occupy=2)  # all-or-nothing over two limits, one script
    granted: list[Lease] = []

    def waiter() -> None:
        with limit("db", "gpu", limiter=lim, timeout=30) as lease:
            granted.append(lease)

    t = threading.Thread(target=waiter)
    t.start()
    deadline = time.monotonic() + 20
    while lim.broker.snapshot("gpu").n_waiters == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(2.0)  # > TTL: the heartbeat renews the lease and the ticket on the shard
    assert not big.lost and big.renew()
    assert lim.broker.snapshot("gpu").n_waiters == 1
    assert big.release()  # the waiter is granted in the same script and woken by pub/sub
    t.join(30)
    assert len(granted) == 1 and granted[0].token > big.token and not granted[0].lost
    for name in ("gpu", "db"):
        snap = lim.broker.snapshot(name)
        assert snap.used == 0 and snap.counters.acquired == snap.counters.released == 2
    # durable=True asks the namespace's own node for a replica ack: none here, so it refuses
    with pytest.raises(BrokerUnavailable, match="no replica acknowledged"):
        lim.acquire("gpu", durable=True)
    assert lim.broker.snapshot("gpu").used == 0


def test_namespaces_spread_over_shards_and_everything_works(cluster: ClusterSetup) -> None:
    spread = namespaces_on_every_node(cluster, "shard")
    assert len(spread) == 3  # three namespaces, three different nodes
    with ThreadPoolExecutor(3) as pool:  # the shards work independently, at the same time
        for f in [pool.submit(exercise, cluster, port, ns) for port, ns in spread.items()]:
            f.result()


def test_grants_are_pushed_on_every_shard(
        cluster: ClusterSetup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pub/sub across the cluster: a namespace on each node, every poll pushed out of the way,
    and a release still wakes its waiter (``exercise`` also passes on heartbeat reports alone)."""
    for ns in namespaces_on_every_node(cluster, "push").values():
        lim = Limiter(cluster.url, ns)
        push_only(monkeypatch, lim)
        lim.create("gpu", 1)
        check_pushed_grant(lim, "gpu")
        lim.runtime.close()


def test_worker_processes_through_the_cluster(cluster: ClusterSetup, tmp_path: Path) -> None:
    ns = "procs"
    limits = {"ca": 2, "cb": 1, "cc": 2}
    lim = Limiter(cluster.url, ns, ttl=2)
    for name, slots in limits.items():
        lim.create(name, slots)
    pool = Pool(
        tmp_path / "run",
        3,
        {
            "url": cluster.url,
            "ns": ns,
            "ttl": 2,
            "limits": limits,
            "max_names": 2,
            "max_occupy": 2,
            "timeouts": [None, 0, 0.2],
            "hold": [0.0, 0.03],
            "cancel_p": 0.1,
        },
    )
    try:
        pool.start()
        pool.run_until(acquisitions=30, at_least=3)
        forced, failed = pool.stop()
    finally:
        pool.close()
    rep = check(pool.dir, limits)
    assert failed == [] and forced == 0 and rep.violations == []
    assert rep.counts["S"] >= 30
    time.sleep(2.2)  # a lease lost to a starved heartbeat on a loaded machine has expired now
    for name in limits:
        lim.broker.reclaim_all(name)
        snap = lim.broker.snapshot(name)
        c = snap.counters
        assert snap.used == 0 and c.acquired == c.released + c.expired, (name, c)


def cli(url: str, ns: str, *args: str) -> str:
    res = subprocess.run(
        [*CLI, "--url", url, "--namespace", ns, *args], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_cli_and_daemon_against_the_cluster(cluster: ClusterSetup) -> None:
    ns = "clitools"
    cli(cluster.url, ns, "create", "render", "--slots", "3")
    cli(cluster.url, ns, "create", "print", "--slots", "1")
    listed = {d["name"]: d for d in json.loads(cli(cluster.url, ns, "--json", "ls"))}
    assert sorted(listed) == ["print", "render"]
    assert listed["render"]["slots"] == 3 and listed["render"]["used"] == 0

    # leases nobody renews: the daemon (one pass) reclaims them on the namespace's shard
    b = Broker.from_url(cluster.url, ns)
    for i in range(3):
        b.acquire(["render"], f"orphan-{i}", ttl_ms=300, wait=False)
    deadline = b.server_time_ms() + 400
    while b.server_time_ms() < deadline:
        time.sleep(0.05)
    assert b.snapshot("render").n_holder_entries == 3
    cli(cluster.url, ns, "daemon", "--once", "--no-metrics")
    snap = b.snapshot("render")
    assert snap.n_holder_entries == 0 and snap.counters.expired == 3
    assert "render" in cli(cluster.url, ns, "show", "render")
    listed = {d["name"]: d for d in json.loads(cli(cluster.url, ns, "--json", "ls"))}
    assert listed["render"]["expired"] == 3 and listed["render"]["used"] == 0


def test_lazy_idle_reap_works_on_a_cluster(cluster: ClusterSetup) -> None:
    """The lazy idle reap names keys it was not passed (derived from its template's): they are in
    the namespace's hash slot, so the shard runs it like any other acquire."""
    lim = Limiter(cluster.url, "lazyreap", ttl=5)
    b = lim.broker
    b.create_limit("cz:*", 1, idle_ttl="1s")
    lim.acquire("cz:a").release()
    lim.acquire("cz:b").release()
    deadline = b.server_time_ms() + 1100
    while b.server_time_ms() < deadline:
        time.sleep(0.05)
    lim.acquire("cz:c").release()
    assert [k for k, _ in b.template_keys("cz:*")] == ["cz:c"]
