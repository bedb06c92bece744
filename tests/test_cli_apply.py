"""apply -f (YAML/JSON, idempotent, --dry-run, --prune) and export (round-trips)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from slotkeeper.broker.client import Broker
from slotkeeper.cli.main import cli
from slotkeeper.limiter import Limiter
from tests.support.redisproc import RedisProc

FILE = """
limits:
  - name: "gpu:gpu-1"
    slots: 2
    ttl: 30
    enabled: true
    description: "first card"
  - {name: "db", slots: 10}
  - {name: "group A", slots: 0, enabled: false, ttl: 1.5}
"""


class Sk:
    def __init__(self, url: str, namespace: str) -> None:
        self.args = ["--url", url, "--namespace", namespace]
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return self.runner.invoke(cli, [*self.args, *args], input=input, catch_exceptions=False)


@pytest.fixture
def sk(redis_server: RedisProc, namespace: str) -> Sk:
    return Sk(redis_server.url, namespace)


def config(b: Broker) -> dict[str, tuple[int, float, bool, str]]:
    out = {}
    for n in b.list_limits():
        c = b.snapshot(n, 1).config
        out[n] = (c.slots, c.ttl_s, c.enabled, c.description)
    return out


def test_apply_creates_then_is_idempotent(
    sk: Sk, tmp_path: Path, redis_server: RedisProc, namespace: str
) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    f = tmp_path / "limits.yaml"
    f.write_text(FILE)
    r = sk("apply", "-f", str(f))
    assert r.exit_code == 0, r.output
    assert r.stdout.count("+ create") == 3
    assert config(b) == {
        "gpu:gpu-1": (2, 30.0, True, "first card"),
        "db": (10, 0.0, True, ""),
        "group A": (0, 1.5, False, ""),
    }
    again = sk("apply", "-f", str(f))
    assert again.exit_code == 0 and "no changes" in again.stdout
    assert json.loads(sk("--json", "apply", "-f", str(f)).stdout)["changes"] == []


def test_dry_run_changes_nothing_and_prune(
    sk: Sk, tmp_path: Path, redis_server: RedisProc, namespace: str
) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    f = tmp_path / "limits.yaml"
    f.write_text(FILE)
    sk("apply", "-f", str(f))
    b.create_limit("stray", 1)
    f2 = tmp_path / "v2.json"
    f2.write_text(
        json.dumps(
            {
                "limits": [
                    {"name": "gpu:gpu-1", "slots": 3, "ttl": 30, "description": "first card"},
                    {"name": "db", "slots": 10},
                    {"name": "new", "slots": 1},
                ]
            }
        )
    )
    before = config(b)
    dry = sk("apply", "-f", str(f2), "--dry-run", "--prune")
    assert dry.exit_code == 0, dry.output
    assert "~ update gpu:gpu-1 (slots: 2 -> 3)" in dry.stdout
    assert "+ create new" in dry.stdout
    assert "- delete group A" in dry.stdout and "- delete stray" in dry.stdout
    assert "dry run" in dry.stdout
    assert config(b) == before
    no_prune = json.loads(sk("--json", "apply", "-f", str(f2), "--dry-run").stdout)
    assert {c["action"] for c in no_prune["changes"]} == {"update", "create"}
    done = sk("apply", "-f", str(f2), "--prune")
    assert done.exit_code == 0, done.output
    assert config(b) == {
        "gpu:gpu-1": (3, 30.0, True, "first card"),
        "db": (10, 0.0, True, ""),
        "new": (1, 0.0, True, ""),
    }


def test_prune_refuses_held_limit(
    sk: Sk, tmp_path: Path, redis_server: RedisProc, namespace: str
) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    b.create_limit("busy", 1)
    lease = Limiter(redis_server.url, namespace, ttl=10).acquire("busy")
    f = tmp_path / "empty.yaml"
    f.write_text("limits: []\n")
    r = sk("apply", "-f", str(f), "--prune")
    assert r.exit_code == 1 and "busy" in r.stderr and "in use" in r.stderr
    assert b.list_limits() == ["busy"]
    lease.release()


def test_export_round_trips(
    sk: Sk, tmp_path: Path, redis_server: RedisProc, namespace: str
) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    f = tmp_path / "limits.yaml"
    f.write_text(FILE)
    sk("apply", "-f", str(f))
    exported = sk("export")
    assert exported.exit_code == 0, exported.output
    doc = yaml.safe_load(exported.stdout)
    assert {x["name"] for x in doc["limits"]} == {"gpu:gpu-1", "db", "group A"}
    original = config(b)
    # into an empty namespace, then export again: identical
    other = Sk(redis_server.url, namespace + "-copy")
    out = tmp_path / "exported.yaml"
    out.write_text(exported.stdout)
    assert other("apply", "-f", str(out)).exit_code == 0
    assert config(Broker.from_url(redis_server.url, namespace + "-copy")) == original
    assert other("export").stdout == exported.stdout
    # and back onto the source: nothing to do
    assert "no changes" in sk("apply", "-f", str(out)).stdout
    # JSON flavour round-trips through stdin
    as_json = sk("--json", "export").stdout
    assert json.loads(as_json)["limits"] == doc["limits"]
    r = sk("apply", "-f", "-", input=as_json)
    assert r.exit_code == 0 and "no changes" in r.stdout
    written = tmp_path / "o.yaml"
    assert sk("export", "-o", str(written)).exit_code == 0
    assert written.read_text() == exported.stdout


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("limits: [{name: x}]", "slots is required"),
        ("limits: [{name: x, slots: -1}]", "slots must be >= 0"),
        ("limits: [{name: x, slots: 1, colour: red}]", "unknown field"),
        ("limits: [{name: x, slots: 1}, {name: x, slots: 2}]", "listed twice"),
        ("limits: [{name: x, slots: 1, enabled: maybe}]", "enabled"),
        ("limits: [{name: ' x', slots: 1}]", "whitespace"),
        ("nope: 1", "unknown top-level"),
        ("limits: {name: x}", "must be a list"),
        ("limits: [unclosed", "not valid YAML"),
        ("[1, 2]", "expected a mapping"),
    ],
)
def test_bad_files_change_nothing(
    sk: Sk, tmp_path: Path, redis_server: RedisProc, namespace: str, text: str, fragment: str
) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    r = sk("apply", "-f", str(f))
    assert r.exit_code == 1, r.output
    assert fragment in r.stderr and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1
    assert Broker.from_url(redis_server.url, namespace).list_limits() == []


def test_export_refuses_unreadable_limit(sk: Sk, redis_server: RedisProc, namespace: str) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    b.create_limit("fine", 1)
    b.create_limit("broken", 1)
    redis_server.client().hset(b.keys.limit("broken")[0], "slots", "?")
    r = sk("export")
    assert r.exit_code == 1 and "broken" in r.stderr and "Traceback" not in r.output
