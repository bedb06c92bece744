"""The daemon's JSON API (/api/v1/) over real HTTP against a real Redis: the same shapes as the
CLI's --json, and errors routed by type to their status codes."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from slotkeeper.broker.client import Broker
from slotkeeper.broker.daemon import Daemon
from slotkeeper.broker.httpserver import HttpServer
from slotkeeper.cli.main import cli
from slotkeeper.limiter import Limiter
from tests.support.redisproc import RedisProc


def get(url: str) -> tuple[int, Any, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read()), r.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers["Content-Type"]


@pytest.fixture
def served(redis_server: RedisProc, namespace: str) -> Iterator[tuple[Broker, HttpServer]]:
    b = Broker.from_url(redis_server.url, namespace)
    srv = Daemon(b).serve_http("127.0.0.1", 0)
    try:
        yield b, srv
    finally:
        srv.close()
        b.close()


def cli_json(url: str, namespace: str, *args: str) -> Any:
    r = CliRunner().invoke(cli, ["--url", url, "-n", namespace, "--json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_api_matches_cli_json(
    served: tuple[Broker, HttpServer], redis_server: RedisProc, namespace: str
) -> None:
    b, srv = served
    b.create_limit("gpu:0", 2, description="cards")
    b.create_limit("group A/b", 1)
    lim = Limiter(redis_server.url, namespace, ttl=30)
    lease = lim.acquire("gpu:0", label="train")
    try:
        code, body, ctype = get(f"{srv.url}/api/v1/limits")
        assert code == 200 and ctype == "application/json"
        assert body["namespace"] == namespace
        ls = cli_json(redis_server.url, namespace, "ls")
        strip = {"wait_p95_seconds"}
        assert [{k: v for k, v in x.items() if k not in strip} for x in body["limits"]] == [
            {k: v for k, v in x.items() if k not in strip} for x in ls
        ]
        quoted = urllib.parse.quote("group A/b", safe="")
        code, one, _ = get(f"{srv.url}/api/v1/limits/{quoted}")
        assert code == 200 and one["name"] == "group A/b" and one["slots"] == 1
        code, gpu, _ = get(f"{srv.url}/api/v1/limits/gpu:0")
        shown = cli_json(redis_server.url, namespace, "show", "gpu:0")
        assert gpu["used"] == shown["used"] == 1
        assert [h["lease_id"] for h in gpu["holders"]] == [h["lease_id"] for h in shown["holders"]]
        assert gpu["holders"][0]["label"] == "train"
    finally:
        lease.release()


def test_errors_are_routed_by_type(served: tuple[Broker, HttpServer], namespace: str) -> None:
    b, srv = served
    code, body, _ = get(f"{srv.url}/api/v1/limits/nope")
    assert code == 404 and body["type"] == "LimitNotFound"
    code, body, _ = get(f"{srv.url}/api/v1/limits/%20lead")
    assert code == 400 and body["type"] == "InvalidName"
    b.create_limit("broken", 1)
    b.redis.set(b.keys.limit("broken")[2], "not a zset")
    code, body, _ = get(f"{srv.url}/api/v1/limits/broken")
    assert code == 500 and body["type"] == "LimitUnreadable" and "broken" in body["error"]
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(f"{srv.url}/api/v1/nothing-here", timeout=10)
    assert ei.value.code == 404


def test_redis_down_is_503(fresh_redis: RedisProc, namespace: str) -> None:
    b = Broker.from_url(fresh_redis.url, namespace)
    srv = Daemon(b).serve_http("127.0.0.1", 0)
    try:
        b.create_limit("x", 1)
        fresh_redis.stop()
        code, body, _ = get(f"{srv.url}/api/v1/limits")
        assert code == 503 and body["type"] == "BrokerUnavailable"
        assert code == get(f"{srv.url}/api/v1/limits/x")[0]
    finally:
        srv.close()


def test_page_escapes_what_users_wrote_and_shows_no_url(
    served: tuple[Broker, HttpServer], redis_server: RedisProc, namespace: str
) -> None:
    b, srv = served
    b.create_limit("<b>bold</b>", 1, description="<img src=x onerror=alert(1)>")
    lim = Limiter(redis_server.url, namespace, ttl=30)
    lease = lim.acquire("<b>bold</b>", label="<script>alert(1)</script>")
    try:
        with urllib.request.urlopen(f"{srv.url}/", timeout=10) as r:
            html = r.read().decode()
            csp = r.headers["Content-Security-Policy"]
        assert "<script>alert" not in html and "<img src=x" not in html and "<b>bold" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;b&gt;bold" in html
        assert html.count("<script>") == 1  # the page's own, allowed by its hash only
        assert "default-src 'none'" in csp and "unsafe-inline" not in csp
        assert redis_server.url not in html and str(redis_server.port) not in html
    finally:
        lease.release()
