"""``slotkeeper doctor`` against private redis-servers set up wrong on purpose (eviction policy,
AOF off, almost no memory headroom, an ACL user missing permissions), and the daemon's start-up
warnings and per-check gauges."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from slotkeeper.broker import doctor
from slotkeeper.broker.client import Broker
from slotkeeper.cli.main import cli
from tests.support.redisproc import RedisProc
from tests.test_daemon import DaemonProc, daemons, metric, wait_for

__all__ = ["daemons"]

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "pw-" + uuid.uuid4().hex[:8]


def run_doctor(url: str, namespace: str, *extra: str) -> Result:
    return CliRunner().invoke(cli, ["--url", url, "-n", namespace, *extra, "doctor"])


def by_check(r: Result) -> dict[str, dict[str, Any]]:
    data = json.loads(r.stdout)
    return {c["check"]: c for c in data["checks"]}


def test_misconfigured_redis_is_dangerous(namespace: str) -> None:
    with RedisProc(args=["--maxmemory-policy", "allkeys-lru", "--appendonly", "no"]) as r:
        res = run_doctor(r.url, namespace, "--json")
        assert res.exit_code == 3, res.output
        checks = by_check(res)
        assert checks["eviction"]["level"] == "danger"
        assert checks["eviction"]["value"] == "allkeys-lru"
        assert "noeviction" in checks["eviction"]["fix"]
        assert (
            checks["persistence"]["level"] == "warn"
            and "appendonly yes" in checks["persistence"]["fix"]
        )
        assert checks["version"]["level"] == "ok"
        assert checks["permissions"]["level"] == "ok"
        assert checks["replicas"]["level"] == "note"
        assert checks["clock"]["level"] == "ok" and checks["latency"]["level"] in ("ok", "warn")
        text = run_doctor(r.url, namespace)
        assert text.exit_code == 3
        assert "DANGER" in text.stdout and "maxmemory-policy noeviction" in text.stdout
        # nothing of the probe stays behind
        assert r.client().keys("*") == []


def test_well_configured_redis_passes(namespace: str) -> None:
    with RedisProc(aof=True, args=["--maxmemory-policy", "noeviction"]) as r:
        res = run_doctor(r.url, namespace, "--json")
        assert res.exit_code == 0, res.output
        checks = by_check(res)
        assert {checks[n]["level"] for n in ("eviction", "persistence", "version")} == {"ok"}
        assert json.loads(res.stdout)["dangerous"] is False


def test_memory_headroom(namespace: str) -> None:
    with RedisProc(args=["--maxmemory-policy", "noeviction"]) as r:
        admin = r.client()
        used = int(admin.info("memory")["used_memory"])
        admin.config_set("maxmemory", str(int(used * 1.05)))
        checks = by_check(run_doctor(r.url, namespace, "--json"))
        assert checks["memory"]["level"] == "danger"
        assert checks["memory"]["value"] < doctor.HEADROOM_DANGER
        admin.config_set("maxmemory", str(used * 100))
        checks = by_check(run_doctor(r.url, namespace, "--json"))
        assert checks["memory"]["level"] == "ok"


def _acl_redis(tmp: Path, namespace: str, line: str) -> RedisProc:
    path = tmp / f"users-{uuid.uuid4().hex[:6]}.acl"
    text = line.replace("{default}", "{" + namespace + "}").replace(">CHANGE_ME", ">" + PASSWORD)
    path.write_text(text.strip() + "\nuser default on nopass ~* &* +@all\n")
    return RedisProc(args=["--aclfile", str(path)])


def test_acl_user_missing_permissions(namespace: str, tmp_path: Path) -> None:
    shipped = (ROOT / "deploy" / "redis" / "users.acl").read_text().strip()
    granted = {tok[1:] for tok in shipped.split() if tok.startswith("+")}
    lacks = sorted(set(doctor.CLIENT_COMMANDS) - granted)  # what the doctor must report for it
    complete = shipped + "".join(f" +{c}" for c in lacks)
    with _acl_redis(tmp_path, namespace, complete) as r:
        url = f"redis://slotkeeper:{PASSWORD}@127.0.0.1:{r.port}/0"
        checks = by_check(run_doctor(url, namespace, "--json"))
        assert checks["permissions"]["level"] == "ok", checks["permissions"]
        assert checks["eviction"]["level"] != "unknown"  # INFO is readable
    with _acl_redis(tmp_path, namespace, shipped) as r:
        url = f"redis://slotkeeper:{PASSWORD}@127.0.0.1:{r.port}/0"
        checks = by_check(run_doctor(url, namespace, "--json"))
        assert sorted(checks["permissions"]["value"]) == lacks
    lacking = re.sub(r" \+(zrank|info|publish)\b", "", complete)
    with _acl_redis(tmp_path, namespace, lacking) as r:
        url = f"redis://slotkeeper:{PASSWORD}@127.0.0.1:{r.port}/0"
        res = run_doctor(url, namespace, "--json")
        assert res.exit_code == 3, res.output
        checks = by_check(res)
        assert sorted(checks["permissions"]["value"]) == ["info", "publish", "zrank"]
        assert "+zrank" in checks["permissions"]["fix"]
        assert checks["eviction"]["level"] == "unknown" and "+info" in checks["eviction"]["fix"]
        assert PASSWORD not in res.output


def test_every_script_command_is_probed() -> None:
    used: set[str] = set()
    for f in (ROOT / "lua").glob("*.lua"):
        if f.name != "doctor_probe.lua":
            used |= {
                c.lower() for c in re.findall(r"redis\.p?call\(\s*['\"](\w+)['\"]", f.read_text())
            }
    probe = (ROOT / "lua" / "doctor_probe.lua").read_text()
    probed = set(re.findall(r"\{'(\w+)'", probe))
    assert used and not used - probed, f"not probed by doctor_probe.lua: {sorted(used - probed)}"


def test_clock_jump_is_caught(redis_server: RedisProc, namespace: str) -> None:
    """The clock check compares Redis TIME with the local monotonic clock; a server clock that
    steps 2 s forward after the first sample is flagged."""
    b = Broker.from_url(redis_server.url, namespace)
    assert doctor.check_clock(b, samples=3, spacing=0.05).level is doctor.Level.OK
    reads = [0]

    def stepping() -> int:
        reads[0] += 1
        return b.server_time_ms() + (2000 if reads[0] > 1 else 0)

    c = doctor.check_clock(b, samples=3, spacing=0.05, server_ms=stepping)
    assert c.level is doctor.Level.DANGER and c.value >= 1500
    reads[0] = 0
    c = doctor.check_clock(b, samples=3, spacing=0.05, server_ms=lambda: b.server_time_ms())
    assert c.level is doctor.Level.OK


def test_daemon_logs_warnings_and_exports_gauges(
    namespace: str, daemons: Callable[..., DaemonProc]
) -> None:
    with RedisProc(args=["--maxmemory-policy", "allkeys-lru", "--appendonly", "no"]) as r:
        d = daemons(r.url, namespace, "--interval", "0.2")
        wait_for(lambda: "doctor: danger eviction" in d.log(), what="the eviction warning")
        assert "doctor: warn persistence" in d.log()
        s = d.scrape()
        assert metric(s, "slotkeeper_doctor_check", namespace=namespace, check="eviction") == 2
        assert metric(s, "slotkeeper_doctor_check", namespace=namespace, check="persistence") == 1
        assert metric(s, "slotkeeper_doctor_check", namespace=namespace, check="version") == 0
        assert d.stop() == 0
