"""deploy/ against a live `slotkeeper daemon`: every metric the alert rules and the dashboard use is
one the daemon really exports, every exported metric is documented in deploy/README.md, /healthz
behaves as the probes assume, and a real Prometheus scraping the daemon evaluates every rule and
answers every dashboard query with data."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from slotkeeper import AcquireTimeout, Limiter, QueueFull
from slotkeeper.broker.client import Broker
from tests.support.redisproc import RedisProc, free_port
from tests.test_deploy import (
    RULES,
    SLOTKEEPER,
    dashboard_exprs,
    docs_metrics,
    fill_grafana_vars,
    rule_exprs,
    tool,
)

METRIC_RE = re.compile(r"\bslotkeeper_[a-z0-9_]+\b")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(cond: Any, what: str, timeout: float = 30.0) -> Any:
    """Poll ``cond()`` until it returns something truthy (behaviour, not speed: a long deadline)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            last = cond()
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metrics(self) -> str:
        status, body = http_get(self.base + "/metrics")
        assert status == 200
        return body


@contextlib.contextmanager
def running_daemon(url: str, namespace: str, *extra: str) -> Iterator[Daemon]:
    port = free_port()
    # configured as the deployments do it: the URL (with any password) in the environment
    env = {**os.environ, "SLOTKEEPER_URL": url, "SLOTKEEPER_NAMESPACE": namespace}
    proc = subprocess.Popen(
        [
            SLOTKEEPER,
            "daemon",
            "--interval",
            "0.2",
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(port),
            *extra,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    d = Daemon(proc, port)
    try:
        wait_for(
            lambda: proc.poll() is None and http_get(d.base + "/healthz")[0] == 200,
            "the daemon's /healthz",
        )
        yield d
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def make_activity(url: str, ns: str) -> None:
    """Limits with every kind of event: grant, release, wait, timeout, expiry, revoke."""
    lim = Limiter(url, ns, ttl=5.0)
    broker = Broker.from_url(url, ns)
    try:
        lim.create("gpu", 2)
        lim.create("db", 1)
        lim.acquire("gpu").release()
        held = lim.acquire("db")
        with pytest.raises(AcquireTimeout):
            lim.acquire("db", timeout=0.2)
        held.release()
        revoked = lim.acquire("gpu")
        assert broker.revoke(revoked.id)
        revoked.release()
        # a rate, and a request refused by --max-waiters
        broker.create_limit("api", rate="100/s", max_waiters=0)
        lim.rate_limit("api")
        blocker = lim.acquire("db")
        broker.update_limit("db", max_waiters=0)
        with pytest.raises(QueueFull):
            lim.acquire("db", timeout=5)
        blocker.release()
        # a holder that never renews: its lease expires and the daemon reclaims it
        assert broker.acquire(["gpu"], "crashed-" + uuid.uuid4().hex, ttl_ms=100).token > 0
    finally:
        lim.runtime.close()
        broker.close()


@dataclass
class Scrape:
    namespace: str
    text: str
    families: dict[str, Any]
    sample_names: set[str]


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[RedisProc, Daemon, Scrape]]:
    ns = "dep" + uuid.uuid4().hex[:8]
    with RedisProc() as r:
        make_activity(r.url, ns)
        with running_daemon(r.url, ns) as d:
            expired = f'slotkeeper_expired_total{{limit="gpu",namespace="{ns}"}} 1.0'

            def reclaimed() -> str | None:
                t = d.metrics()
                return t if expired in t else None

            text = wait_for(reclaimed, "the daemon to reclaim the crashed holder's lease")
            fams = {f.name: f for f in text_string_to_metric_families(text)}
            names = {s.name for f in fams.values() for s in f.samples} | set(fams)
            yield r, d, Scrape(ns, text, fams, names)


def test_rules_and_dashboard_use_only_exported_metrics(live: Any) -> None:
    _, _, scrape = live
    used_rules = {m for e in rule_exprs().values() for m in METRIC_RE.findall(e)}
    used_dash = {m for e in dashboard_exprs() for m in METRIC_RE.findall(e)}
    assert used_rules and used_dash
    assert not used_rules - scrape.sample_names, f"rules use {used_rules - scrape.sample_names}"
    assert not used_dash - scrape.sample_names, f"dashboard uses {used_dash - scrape.sample_names}"


def test_every_exported_metric_is_documented(live: Any) -> None:
    _, _, scrape = live
    documented = docs_metrics()
    exported: dict[str, tuple[str, set[str]]] = {}
    for f in scrape.families.values():
        if not f.name.startswith("slotkeeper_"):
            assert f.name.startswith(("process_", "python_")), f"undocumented metric {f.name}"
            continue
        name = f.name + "_total" if f.type == "counter" else f.name
        labels = {k for s in f.samples for k in s.labels} - {"le"}
        exported[name] = (f.type, labels)
    assert set(exported) == set(documented), (
        f"exported, not in deploy/README.md: {sorted(set(exported) - set(documented))}; "
        f"documented, not exported: {sorted(set(documented) - set(exported))}"
    )
    for name, (typ, labels) in exported.items():
        doc_type, doc_labels = documented[name]
        assert doc_type == typ, f"{name}: documented as {doc_type}, exported as {typ}"
        assert {x.strip() for x in doc_labels.split(",")} == labels, name


def test_per_limit_metrics_carry_namespace_and_limit(live: Any) -> None:
    _, _, scrape = live
    slots = {
        (s.labels["namespace"], s.labels["limit"]): s.value
        for s in scrape.families["slotkeeper_limit_slots"].samples
    }
    assert slots == {(scrape.namespace, "gpu"): 2.0, (scrape.namespace, "db"): 1.0}
    counters = {
        s.name + s.labels["limit"]: s.value
        for f in scrape.families.values()
        for s in f.samples
        if s.name.endswith("_total") and "limit" in s.labels
    }
    assert counters["slotkeeper_timed_out_totaldb"] == 1.0
    assert counters["slotkeeper_revoked_totalgpu"] == 1.0
    assert counters["slotkeeper_acquired_totalgpu"] == 3.0


def test_healthz_follows_redis() -> None:
    """The Kubernetes probes assume: 200 while Redis answers, 503 while it does not, 200 again."""
    ns = "hz" + uuid.uuid4().hex[:8]
    with RedisProc() as r, running_daemon(r.url, ns) as d:
        assert http_get(d.base + "/healthz")[0] == 200
        r.pause()
        try:
            wait_for(
                lambda: http_get(d.base + "/healthz", timeout=20)[0] == 503,
                "/healthz to report 503 while Redis is frozen",
            )
            assert f'slotkeeper_redis_up{{namespace="{ns}"}} 0.0' in d.metrics()
        finally:
            r.resume()
        wait_for(lambda: http_get(d.base + "/healthz")[0] == 200, "/healthz to recover")


# -- a real Prometheus scraping the daemon ------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(live: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = tool("prometheus")
    _, daemon, _ = live
    work = tmp_path_factory.mktemp("prometheus")
    (work / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": "slotkeeper",
                        "honor_labels": True,
                        "static_configs": [{"targets": [f"127.0.0.1:{daemon.port}"]}],
                    }
                ],
            }
        )
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            exe,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(work / "prometheus.log", "w"),
    )  # noqa: SIM115
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: query(base, "count_over_time(slotkeeper_redis_up[1m]) >= 4"),
            "Prometheus to scrape the daemon a few times",
            timeout=60,
        )
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def query(base: str, expr: str) -> list[Any]:
    status, body = http_get(base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    reply = json.loads(body)
    assert status == 200 and reply["status"] == "success", (expr, body[:300])
    result: list[Any] = reply["data"]["result"]
    return result


def test_prometheus_answers_every_dashboard_query(live: Any, prometheus: str) -> None:
    _, _, scrape = live
    empty = []
    for expr in dashboard_exprs():
        if expr.startswith("label_values("):
            metric = re.match(r"label_values\((\w+)", expr)
            assert metric and query(prometheus, metric[1]), expr
            continue
        if not query(prometheus, fill_grafana_vars(expr, namespace=scrape.namespace)):
            empty.append(expr)
    assert not empty, f"dashboard queries with no data from a live daemon: {empty}"


def test_prometheus_evaluates_every_rule_cleanly(prometheus: str) -> None:
    def loaded() -> list[dict[str, Any]] | None:
        reply = json.loads(http_get(prometheus + "/api/v1/rules")[1])
        rules = [r for g in reply["data"]["groups"] for r in g["rules"]]
        done = all(not r["lastEvaluation"].startswith("0001") for r in rules)
        return rules if rules and done else None

    rules = wait_for(loaded, "every rule to be evaluated once")
    assert {r["name"] for r in rules} == set(rule_exprs())
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not bad, bad
    # nothing is wrong with this deployment: no alert condition may hold, not even pending
    active = [(r["name"], a["state"]) for r in rules for a in r.get("alerts", [])]
    assert not active, active
