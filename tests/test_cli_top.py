"""``slotkeeper top``: one view, several refreshes, JSON lines, a Redis that goes away."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from slotkeeper.broker.client import Broker
from slotkeeper.cli.main import cli
from slotkeeper.limiter import Limiter
from tests.support.redisproc import RedisProc


def test_top_once_shows_every_limit(redis_server: RedisProc, namespace: str) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    b.create_limit("gpu", 4)
    b.create_limit("off", 1, enabled=False)
    lease = Limiter(redis_server.url, namespace, ttl=10).acquire("gpu", occupy=3)
    r = CliRunner().invoke(cli, ["--url", redis_server.url, "-n", namespace, "top", "--once"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    gpu = next(x for x in lines if x.startswith("gpu"))
    assert "3/4" in gpu and "#########..." in gpu
    assert "disabled" in next(x for x in lines if x.startswith("off"))
    assert namespace in lines[0]
    lease.release()


def test_top_json_lines_with_rates(redis_server: RedisProc, namespace: str) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    b.create_limit("a", 2)
    r = CliRunner().invoke(
        cli,
        [
            "--url",
            redis_server.url,
            "-n",
            namespace,
            "top",
            "--json",
            "--iterations",
            "2",
            "--interval",
            "0.1",
        ],
    )
    assert r.exit_code == 0, r.output
    frames = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(frames) == 2
    assert [x["name"] for x in frames[0]["limits"]] == ["a"]
    assert frames[0]["limits"][0]["acquired_per_second"] is None
    assert frames[1]["limits"][0]["acquired_per_second"] == 0


def test_top_survives_redis_outage_until_interrupted(
    fresh_redis: RedisProc, namespace: str
) -> None:
    Broker.from_url(fresh_redis.url, namespace).create_limit("a", 1)
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slotkeeper.cli",
            "--url",
            fresh_redis.url,
            "-n",
            namespace,
            "top",
            "--interval",
            "0.1",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    first = json.loads(p.stdout.readline())
    assert first["error"] is None and first["limits"][0]["name"] == "a"
    fresh_redis.stop()
    while True:  # refreshes go on, reporting the outage
        frame = json.loads(p.stdout.readline())
        if frame["error"]:
            break
    assert "unreachable" in frame["error"]
    p.send_signal(2)  # Ctrl-C: a quiet exit 0
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0 and "Traceback" not in err
