"""Ray (the `ray` and `prefect-ray` extras): a local two-node Ray cluster started here (head plus
one more node on this machine, 3 CPUs each), limits in tasks and actors, ``{worker}`` = Ray node
id, ThrottledRay, a killed worker's slots, and Prefect's RayTaskRunner via ThrottledTaskRunner.

Bounds are checked by the observer over stamps written by the Ray worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

import slotkeeper.ray as skr
from slotkeeper import Limiter, tags
from tests.support import ray_tasks
from tests.support.classic import check_classic, read_stamps
from tests.support.observer import check
from tests.support.redisproc import RedisProc

ROOT = Path(__file__).resolve().parent.parent
NODE_CPUS = 3
STORE = 80 * 1024 * 1024


@pytest.fixture(scope="module")
def rlim(redis_server: RedisProc) -> Limiter:
    return Limiter(redis_server.url, "ray" + uuid.uuid4().hex[:8], ttl=5.0)


@pytest.fixture(scope="module")
def cluster(rlim: Limiter) -> Iterator[Cluster]:
    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": NODE_CPUS,
            "resources": {"head": NODE_CPUS},
            "object_store_memory": STORE,
            "include_dashboard": False,
        },
    )
    try:
        c.add_node(num_cpus=NODE_CPUS, resources={"second": NODE_CPUS}, object_store_memory=STORE)
        c.wait_for_nodes()
        env = skr.runtime_env(rlim, {"env_vars": {"PYTHONPATH": str(ROOT)}})
        ray.init(address=c.address, runtime_env=env, logging_level="warning")
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def node_ids() -> dict[str, str]:
    """Custom resource ("head"/"second") -> Ray node id."""
    out = {}
    for n in ray.nodes():
        for res in ("head", "second"):
            if res in n["Resources"] and n["Alive"]:
                out[res] = n["NodeID"]
    assert len(out) == 2, ray.nodes()
    return out


def on(res: str) -> dict[str, Any]:
    return {"resources": {res: 1}, "num_cpus": 1}


def test_runtime_env_carries_the_broker_config(cluster: Cluster, rlim: Limiter) -> None:
    from slotkeeper.naming import host_name, ray_node_id, worker_name

    assert ray_node_id() is None  # the driver is not a Ray task: {worker} stays the host
    assert worker_name() == host_name()
    env = skr.runtime_env(rlim, {"env_vars": {"A": "1"}, "pip": ["x"]})
    assert env["pip"] == ["x"]
    assert env["env_vars"] == {
        "A": "1",
        "SLOTKEEPER_URL": rlim.url,
        "SLOTKEEPER_NAMESPACE": rlim.namespace,
    }


def test_global_and_per_node_limits_in_tasks_and_actors(
    cluster: Cluster, rlim: Limiter, tmp_path: Path
) -> None:
    nodes = node_ids()
    slots = {"ray-global": 2, **{f"gpu:{nid}": 1 for nid in nodes.values()}}
    for name, n in slots.items():
        rlim.create(name, n)
    glob = ray.remote(ray_tasks.hold_global)
    per_node = ray.remote(ray_tasks.hold_per_node)
    refs = []
    for res in nodes:  # 3 CPUs per node: 3 tasks of each kind contend on every node
        refs += [glob.options(**on(res)).remote(str(tmp_path), 0.3) for _ in range(4)]
        refs += [per_node.options(**on(res)).remote(str(tmp_path), 0.3) for _ in range(4)]
    ran_on = ray.get(refs, timeout=300)
    assert set(ran_on) == set(nodes.values())
    rep = check(tmp_path, slots)
    assert not rep.violations, rep.violations
    assert rep.counts["ok"] == 16
    assert rep.max_use == slots, rep.summary()  # every bound was reached, none exceeded
    # an actor method: {worker} is the node the actor lives on
    for res, nid in nodes.items():
        actor = ray.remote(ray_tasks.GpuUser).options(resources={res: 1}, num_cpus=0).remote()
        where, names = ray.get(actor.held.remote(), timeout=120)
        assert (where, names) == (nid, (f"gpu:{nid}",))
        ray.kill(actor)
    for name in slots:
        assert rlim.broker.snapshot(name).used == 0


def test_throttled_ray_tags_model(cluster: Cluster, rlim: Limiter, tmp_path: Path) -> None:
    nodes = node_ids()
    remote_say_hi = ray.remote(num_cpus=1)(ray_tasks.say_hi)  # a ray.remote function...
    with skr.ThrottledRay({"print": 1, "example": 2}, limiter=rlim) as tr:
        run_limit = f"run-{tr.run_id}:print"
        assert tr.limits == {"print": run_limit, "example": f"run-{tr.run_id}:example"}
        refs = [tr.submit(ray_tasks.say_hi, str(tmp_path), 0.2, options=on(res)) for res in nodes]
        refs += [tr.submit(remote_say_hi, str(tmp_path), 0.2) for _ in range(3)]
        with tags("example"):
            assert tr.names_for(ray_tasks.untagged) == (f"run-{tr.run_id}:example",)
        assert tr.names_for(ray_tasks.untagged) == ()
        plain = tr.submit(ray_tasks.untagged, str(tmp_path))  # no throttled tag: as is
        assert rlim.broker.list_limits() and run_limit in rlim.broker.list_limits()
        ray.get(refs + [plain], timeout=300)
    rep = check(tmp_path, {"print": 1})  # the stamps name the tag; its run-scoped limit has 1
    assert not rep.violations, rep.violations
    assert rep.counts["ok"] == 5 and rep.max_use == {"print": 1}, rep.summary()
    assert run_limit not in rlim.broker.list_limits()  # run-scoped limits deleted on shutdown


def test_killed_worker_gives_its_slots_back_within_the_ttl(
    cluster: Cluster, rlim: Limiter, tmp_path: Path
) -> None:
    name, ttl = "kill-" + uuid.uuid4().hex[:6], 2.0
    rlim.create(name, 1)
    pid_file = tmp_path / "pid"
    ref = (
        ray.remote(ray_tasks.hold_forever)
        .options(max_retries=0, **on("second"))
        .remote(str(pid_file), name, ttl)
    )
    deadline = time.monotonic() + 120
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    assert rlim.broker.snapshot(name).used == 1
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    lease = rlim.acquire(name, timeout=30)
    waited = time.monotonic() - killed
    lease.release()
    assert waited <= ttl + 1, f"slot came back {waited:.2f} s after the kill (ttl {ttl})"
    with pytest.raises(ray.exceptions.RayError):
        ray.get(ref, timeout=120)


def test_prefect_ray_task_runner_through_throttled_task_runner(
    cluster: Cluster, redis_server: RedisProc, tmp_path: Path
) -> None:
    """The classic example on prefect-ray's RayTaskRunner (flows in a child process, as in
    tests/test_prefect.py), connected to this module's Ray cluster."""
    ns = "pray" + uuid.uuid4().hex[:8]
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_LOGGING_TO_API_ENABLED="false",
        PYTHONPATH=str(ROOT),
        RAY_ADDRESS=cluster.address,
    )
    cases = ["print=1", "example=1"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.prefect_flows",
            redis_server.url,
            ns,
            str(out),
            *[f"ray-{c}" for c in cases],
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    driver = int((out / "driver.pid").read_text())
    for case in cases:
        d = out / f"ray-{case}"
        assert (d / "done").exists()
        check_classic(str(d), case)
        assert driver not in {s.pid for s in read_stamps(d)}  # ran in Ray workers
    assert Limiter(redis_server.url, ns).broker.list_limits() == []
