"""The Prefect drop-ins (slotkeeper.prefect.concurrency.sync / .asyncio) against a real Redis.

The per-worker example from Prefect's docs runs with only its import line changed, each flow run
a separate process (as a Prefect worker starts them) on two worker ids; the bound of each worker
is checked by the independent observer over stamps the flow-run processes write."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from slotkeeper import Limiter, LimitNotFound
from slotkeeper.broker.errors import LeaseLost
from slotkeeper.cli.main import cli
from slotkeeper.limiter import set_default_limiter
from slotkeeper.prefect.concurrency import asyncio as sk_async
from slotkeeper.prefect.concurrency import sync as sk_sync
from slotkeeper.prefect.concurrency.common import (
    AcquireConcurrencySlotTimeoutError,
    ConcurrencyLimitMissing,
    ConcurrencySlotAcquisitionError,
)
from tests.support.observer import check
from tests.support.redisproc import RedisProc

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def lim(limiter: Limiter, monkeypatch: pytest.MonkeyPatch) -> Iterator[Limiter]:
    """The drop-ins use the process default limiter (as Prefect code has no limiter argument)."""
    monkeypatch.setenv("SLOTKEEPER_URL", limiter.url)
    monkeypatch.setenv("SLOTKEEPER_NAMESPACE", limiter.namespace)
    set_default_limiter(limiter)
    yield limiter
    import slotkeeper.limiter as module

    module._default = None


def holders(lim: Limiter, name: str) -> list[str]:
    return [h.lease_id for h in lim.broker.snapshot(name).holders]


def test_str_or_list_names_held_atomically_and_released(lim: Limiter) -> None:
    lim.create("a", 2)
    lim.create("b", 2)
    with sk_sync.concurrency("a") as got:
        assert got is None  # Prefect's context manager yields nothing
        assert len(holders(lim, "a")) == 1
    with sk_sync.concurrency(["a", "b"], occupy=2):
        assert lim.broker.snapshot("a").used == 2 and lim.broker.snapshot("b").used == 2
    assert lim.broker.snapshot("a").used == 0 and lim.broker.snapshot("b").used == 0
    with sk_sync.concurrency([]):  # no names: nothing to do, as in Prefect
        pass


def test_worker_template_resolves_where_the_block_runs(
    lim: Limiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLOTKEEPER_WORKER", "gpu-9")
    lim.create("gpu:gpu-9", 1)
    with sk_sync.concurrency("gpu:{worker}", strict=True):
        (h,) = lim.broker.snapshot("gpu:gpu-9").holders
        assert h.worker == "gpu-9"


def test_timeout_raises_timeout_error_and_prefect_class(lim: Limiter) -> None:
    from prefect.concurrency.asyncio import AcquireConcurrencySlotTimeoutError as PrefectTimeout

    lim.create("one", 1)
    with sk_sync.concurrency("one"):
        with pytest.raises(TimeoutError) as info:
            with sk_sync.concurrency("one", timeout_seconds=0.2):
                pytest.fail("entered without a slot")
    assert isinstance(info.value, AcquireConcurrencySlotTimeoutError)
    assert isinstance(info.value, PrefectTimeout)
    assert lim.broker.snapshot("one").used == 0


def test_max_retries_zero_is_one_attempt(lim: Limiter) -> None:
    lim.create("one", 1)
    with sk_sync.concurrency("one"):
        with pytest.raises(ConcurrencySlotAcquisitionError):
            with sk_sync.concurrency("one", max_retries=0):
                pytest.fail("entered without a slot")
    with sk_sync.concurrency("one", max_retries=0):
        assert lim.broker.snapshot("one").used == 1
    with pytest.raises(ConcurrencySlotAcquisitionError):  # Prefect: 422, more than the limit
        with sk_sync.concurrency("one", occupy=2):
            pytest.fail("entered with occupy > slots")


def test_strict_missing_limit_raises_prefects_error(lim: Limiter) -> None:
    from prefect.concurrency.asyncio import (
        ConcurrencySlotAcquisitionError as PrefectAcquisitionError,
    )

    lim.create("here", 1)
    with pytest.raises(ConcurrencyLimitMissing) as info:
        with sk_sync.concurrency(["here", "nowhere"], strict=True):
            pytest.fail("ran although a limit is missing")
    assert isinstance(info.value, PrefectAcquisitionError)
    assert isinstance(info.value, LimitNotFound) and info.value.name == "nowhere"
    assert lim.broker.snapshot("here").used == 0


def test_non_strict_skips_missing_names_with_a_warning(
    lim: Limiter, caplog: pytest.LogCaptureFixture
) -> None:
    lim.create("here", 1)
    with caplog.at_level(logging.WARNING, logger="slotkeeper"):
        with sk_sync.concurrency(["nowhere", "here"]):
            assert lim.broker.snapshot("here").used == 1  # the existing limit is still held
        with sk_sync.concurrency("nowhere"):
            pass  # nothing exists: runs unthrottled
    assert sum("'nowhere' does not exist" in r.getMessage() for r in caplog.records) == 2


def test_holder_and_lease_duration_land_on_the_lease(lim: Limiter, redis_server: RedisProc) -> None:
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder

    lim.create("gpu", 1)
    run_id = uuid.uuid4()
    holder = ConcurrencyLeaseHolder(type="task_run", id=run_id)
    with sk_sync.concurrency("gpu", holder=holder, lease_duration=120):
        (h,) = lim.broker.snapshot("gpu").holders
        assert h.label == f"task_run:{run_id}"
        assert 110_000 < h.expires_ms - h.acquired_ms <= 120_000
        out = CliRunner().invoke(
            cli, ["--url", redis_server.url, "--namespace", lim.namespace, "show", "gpu"]
        )
        assert out.exit_code == 0, out.output
        assert f"task_run:{run_id}" in out.output
    with sk_sync.concurrency("gpu", holder={"type": "flow_run", "id": "abc"}):
        assert lim.broker.snapshot("gpu").holders[0].label == "flow_run:abc"


@pytest.mark.parametrize(
    ("kwargs", "raises"),
    [
        ({}, False),  # Prefect's default follows strict=False: log, do not raise
        ({"strict": True}, True),
        ({"raise_on_lease_renewal_failure": True}, True),
        ({"strict": True, "raise_on_lease_renewal_failure": False}, False),
    ],
)
def test_lost_lease_raises_on_exit_per_raise_on_lease_renewal_failure(
    lim: Limiter, kwargs: dict[str, bool], raises: bool
) -> None:
    lim.create("gpu", 1)

    def body() -> None:
        with sk_sync.concurrency("gpu", **kwargs):
            (lease_id,) = holders(lim, "gpu")
            assert lim.broker.revoke(lease_id)

    if raises:
        with pytest.raises(LeaseLost):
            body()
    else:
        body()
    assert lim.broker.snapshot("gpu").used == 0


def test_async_concurrency_bounds_tasks_and_times_out(lim: Limiter) -> None:
    lim.create("api", 2)
    inside = 0
    peak = 0

    async def one() -> None:
        nonlocal inside, peak
        async with sk_async.concurrency("api", holder={"type": "task_run", "id": "x"}):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.05)
            inside -= 1

    async def main() -> None:
        await asyncio.gather(*(one() for _ in range(8)))
        async with sk_async.concurrency("api", occupy=2):
            with pytest.raises(AcquireConcurrencySlotTimeoutError):
                async with sk_async.concurrency("api", timeout_seconds=0.1):
                    pytest.fail("entered without a slot")
        with pytest.raises(ConcurrencyLimitMissing):
            async with sk_async.concurrency("nowhere", strict=True):
                pytest.fail("ran although the limit is missing")

    asyncio.run(main())
    assert peak == 2
    assert lim.broker.snapshot("api").used == 0


def test_rate_limit_takes_units_of_the_rate(lim: Limiter, caplog: pytest.LogCaptureFixture) -> None:
    lim.broker.create_limit("api", rate="3/min")
    lim.broker.create_limit("plain", slots=1)
    for _ in range(3):
        assert sk_sync.rate_limit("api", timeout_seconds=0) is None  # a burst of N
    with pytest.raises(AcquireConcurrencySlotTimeoutError):
        sk_sync.rate_limit(["api"], timeout_seconds=0.2)
    assert lim.broker.snapshot("api").rate_in_window == 3
    with pytest.raises(ConcurrencySlotAcquisitionError):  # Prefect: needs a slot decay
        sk_sync.rate_limit("plain")
    with pytest.raises(ConcurrencyLimitMissing):
        sk_sync.rate_limit("nowhere", strict=True)
    with caplog.at_level(logging.WARNING, logger="slotkeeper"):
        sk_sync.rate_limit("nowhere")  # skipped with a warning
    assert any("'nowhere' does not exist" in r.getMessage() for r in caplog.records)
    sk_sync.rate_limit([])


def test_async_rate_limit(lim: Limiter) -> None:
    lim.broker.create_limit("api", rate="2/min")

    async def main() -> None:
        await sk_async.rate_limit("api", occupy=2, timeout_seconds=0)
        with pytest.raises(TimeoutError):
            await sk_async.rate_limit("api", timeout_seconds=0.2)
        with pytest.raises(ConcurrencyLimitMissing):
            await sk_async.rate_limit(["api", "nowhere"], strict=True)

    asyncio.run(main())
    assert lim.broker.snapshot("api").rate_in_window == 2


def test_drop_in_imports_without_prefect() -> None:
    code = (
        "import sys; sys.modules['prefect'] = None\n"  # any `import prefect` now fails
        "from slotkeeper.prefect.concurrency.sync import concurrency\n"
        "from slotkeeper.prefect.concurrency.asyncio import concurrency as aconcurrency\n"
        "from slotkeeper.prefect.concurrency import ConcurrencyLimitMissing\n"
        "from slotkeeper import SlotkeeperError\n"
        "assert issubclass(ConcurrencyLimitMissing, SlotkeeperError)\n"
        "try:\n"
        "    from slotkeeper.prefect import ThrottledTaskRunner\n"
        "except ImportError:\n"
        "    print('runner needs prefect')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "runner needs prefect"


# -- the per-worker example -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    from tests.benchmarks.peer_prefect import PrefectServer

    before = os.environ.get("PREFECT_HOME")
    server = PrefectServer()
    try:
        yield server.__enter__()
    finally:
        server.__exit__(None, None, None)
        if before is None:
            os.environ.pop("PREFECT_HOME", None)
        else:
            os.environ["PREFECT_HOME"] = before


def test_per_worker_example_with_its_import_swapped(
    limiter: Limiter, prefect_api: str, tmp_path: Path
) -> None:
    """3 flow-run processes per worker id (gpu-1, gpu-2), 2 flow runs each; 2 GPU slots per
    worker. The observer sweeps the inference intervals of each worker's limit."""
    slots = {"gpu:gpu-1": 2, "gpu:gpu-2": 2}
    for name, n in slots.items():
        limiter.create(name, n)
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    per_worker, runs = 3, 2
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        SLOTKEEPER_URL=limiter.url,
        SLOTKEEPER_NAMESPACE=limiter.namespace,
        PREFECT_API_URL=prefect_api,
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH=str(ROOT),
    )
    procs = []
    image = 0
    for worker in ("gpu-1", "gpu-2"):
        for _ in range(per_worker):
            images = [str(image + i) for i in range(runs)]
            image += runs
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tests.support.prefect_flow_run",
                        str(stamps),
                        str(2 * per_worker),
                        *images,
                    ],
                    cwd=ROOT,
                    env={**env, "WORKER_ID": worker},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-4000:]
    rep = check(stamps, slots)
    assert not rep.violations, rep.violations
    assert rep.counts["ok"] == 2 * per_worker * runs, rep.summary()
    # both workers really had more flow runs in the GPU step than slots: the bound was exercised
    assert rep.max_use == slots, rep.summary()
    for name in slots:
        assert limiter.broker.snapshot(name).used == 0


# -- slotkeeper apply on Prefect's own limits -----------------------------------------------------


def prefect_cli(api: str, home: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=api, PREFECT_HOME=str(home), PREFECT_LOGGING_LEVEL="WARNING")
    res = subprocess.run(
        [sys.executable, "-m", "prefect", *args], env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_apply_reads_prefect_gcl_ls_json_and_rest_objects(
    prefect_api: str, redis_server: RedisProc, namespace: str, tmp_path: Path
) -> None:
    import json
    import urllib.request

    tag = uuid.uuid4().hex[:6]
    gpu, lic = f"gpu:gpu-{tag}", f"license-{tag}"
    prefect_cli(prefect_api, tmp_path, "gcl", "create", gpu, "--limit", "2")
    prefect_cli(prefect_api, tmp_path, "gcl", "create", lic, "--limit", "5", "--disable")
    api = f"api-{tag}"
    prefect_cli(
        prefect_api, tmp_path, "gcl", "create", api, "--limit", "10", "--slot-decay-per-second", "2"
    )
    listed = json.loads(prefect_cli(prefect_api, tmp_path, "gcl", "ls", "--output", "json"))
    mine = [g for g in listed if g["name"] in (gpu, lic, api)]
    assert len(mine) == 3, listed
    ls_file = tmp_path / "gcl.json"
    ls_file.write_text(json.dumps(mine))

    def sk(*args: str) -> str:
        out = CliRunner().invoke(cli, ["--url", redis_server.url, "--namespace", namespace, *args])
        assert out.exit_code == 0, out.output
        return out.output

    lim = Limiter(redis_server.url, namespace)
    dry = sk("apply", "-f", str(ls_file), "--dry-run")
    assert f"+ create {gpu}" in dry and f"+ create {lic}" in dry and "dry run" in dry
    assert f"+ create {api}" in dry and "rate='10/5s'" in dry  # 10 at once, then 2/s
    assert lim.broker.list_limits() == []
    sk("apply", "-f", str(ls_file))
    assert lim.broker.limit_slots(gpu) == 2 and lim.broker.limit_slots(lic) == 5
    assert lim.broker.snapshot(gpu).config.enabled
    assert not lim.broker.snapshot(lic).config.enabled  # inactive in Prefect: disabled here
    assert str(lim.broker.snapshot(api).config.rate) == "10/5s"
    set_default_limiter(lim)  # the migrated rate limit serves the drop-in's rate_limit
    try:
        sk_sync.rate_limit(api, occupy=10, timeout_seconds=0)
        with pytest.raises(TimeoutError):
            sk_sync.rate_limit(api, timeout_seconds=0)
    finally:
        import slotkeeper.limiter as module

        module._default = None

    req = urllib.request.Request(
        prefect_api + "/v2/concurrency_limits/filter",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        rest = [g for g in json.load(r) if g["name"] in (gpu, lic, api)]
    assert {"name", "limit", "active", "slot_decay_per_second"} <= rest[0].keys()
    rest_file = tmp_path / "rest.json"
    rest_file.write_text(json.dumps(rest))
    assert "no changes" in sk("apply", "-f", str(rest_file))  # the same limits, REST shape
    one = tmp_path / "one.json"
    one.write_text(json.dumps({**rest[0], "limit": 7}))  # `prefect gcl inspect --output json`
    assert f"~ update {rest[0]['name']} (slots: " in sk("apply", "-f", str(one), "--dry-run")


def test_apply_reads_an_empty_prefect_list_and_rejects_bad_decay(
    redis_server: RedisProc, namespace: str, tmp_path: Path
) -> None:
    def sk(path: Path) -> Any:
        return CliRunner().invoke(
            cli, ["--url", redis_server.url, "--namespace", namespace, "apply", "-f", str(path)]
        )

    empty = tmp_path / "none.json"
    empty.write_text("[]")  # `prefect gcl ls --output json` with no limits
    out = sk(empty)
    assert out.exit_code == 0 and "no changes (0 limit(s)" in out.output, out.output
    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "api", "limit": 5, "slot_decay_per_second": "fast"}]')
    out = sk(bad)
    assert out.exit_code != 0 and "slot_decay_per_second must be a number" in out.output
