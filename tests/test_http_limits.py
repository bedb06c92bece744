"""The daemon's HTTP server under abuse: half-sent requests, more connections than the cap,
clients that vanish mid-answer, scrapers that multiply Redis reads. And the probes: /livez (the
loop turns) apart from /healthz (readiness: Redis answers)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from slotkeeper.broker.client import Broker
from slotkeeper.broker.collector import SlotkeeperCollector
from slotkeeper.broker.daemon import Daemon
from slotkeeper.broker.httpserver import HttpServer
from tests.support.redisproc import RedisProc


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture
def served(redis_server: RedisProc, namespace: str) -> Iterator[tuple[Daemon, HttpServer]]:
    b = Broker.from_url(redis_server.url, namespace)
    b.create_limit("web", 2)
    d = Daemon(b, interval=0.05, scrape_cache=60.0)
    srv = d.serve_http("127.0.0.1", 0, timeout=1.0, max_connections=4)
    try:
        yield d, srv
    finally:
        srv.close()
        b.close()


def _handler_threads() -> int:
    return sum(1 for t in threading.enumerate() if "process_request_thread" in t.name)


def test_half_sent_requests_cannot_pile_up_threads(served: tuple[Daemon, HttpServer]) -> None:
    _, srv = served
    host, port = srv.address
    before = _handler_threads()
    socks = []
    for _ in range(12):
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(b"GET /metr")  # never finished
        socks.append(s)
        time.sleep(0.02)
    assert _handler_threads() - before <= 4
    held, refused = [], 0
    for s in socks:
        s.settimeout(0.1)
        try:
            data = s.recv(100)
        except TimeoutError:
            held.append(s)  # a handler thread waits for the rest of the request
            continue
        if data.startswith(b"HTTP/1.1 503"):
            refused += 1  # over the cap: answered at once, no thread
        else:
            assert data == b""  # was held, and already dropped after the request timeout
    assert refused >= 12 - 4
    for s in held:  # dropped after the request timeout (1 s), freeing its thread
        s.settimeout(10)
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
    for s in socks:
        s.close()
    deadline = time.monotonic() + 20
    while _handler_threads() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    code, _, body = get(srv.url + "/metrics")  # and the server serves again
    assert code == 200 and b"slotkeeper_limit_slots" in body


def test_no_version_banner(served: tuple[Daemon, HttpServer]) -> None:
    _, srv = served
    for path in ("/metrics", "/livez", "/nope"):
        _, headers, _ = get(srv.url + path)
        assert headers.get("Server") == "slotkeeper", headers
        assert "Python" not in str(headers)


def test_client_disconnects_leave_no_tracebacks(
    served: tuple[Daemon, HttpServer], capfd: pytest.CaptureFixture[str]
) -> None:
    _, srv = served
    host, port = srv.address
    for _ in range(20):
        s = socket.create_connection((host, port), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.close()  # RST: the server's answer hits a closed connection
    deadline = time.monotonic() + 30
    while _handler_threads() and time.monotonic() < deadline:
        time.sleep(0.05)  # the handlers finish writing into the reset sockets
    # Connections still in the listen backlog may hold the cap for a moment longer (answered
    # "busy", 503, by design): the server must serve again once they are through.
    code = 0
    while time.monotonic() < deadline:
        code, _, _ = get(srv.url + "/metrics")
        if code == 200:
            break
        time.sleep(0.1)
    assert code == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err


def test_scrapes_share_one_read(redis_server: RedisProc, namespace: str) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    b.create_limit("c", 1)
    cached = SlotkeeperCollector(b, cache_seconds=60.0)
    for _ in range(20):
        list(cached.collect())
    assert cached.reads == 1
    uncached = SlotkeeperCollector(b, cache_seconds=0.0)  # positive control
    for _ in range(20):
        list(uncached.collect())
    assert uncached.reads == 20


def test_many_concurrent_scrapes_read_redis_once(served: tuple[Daemon, HttpServer]) -> None:
    _, srv = served
    codes: list[int] = []
    threads = [
        threading.Thread(target=lambda: codes.append(get(srv.url + "/metrics")[0]))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    collectors = [
        c
        for c in srv.handler.registry._collector_to_names
        if isinstance(c, SlotkeeperCollector)  # type: ignore[attr-defined]
    ]
    assert codes.count(200) + codes.count(503) == 4 and 200 in codes
    assert [c.reads for c in collectors] == [1]


def test_livez_is_not_readiness(fresh_redis: RedisProc, namespace: str) -> None:
    """Redis down: not ready (/healthz 503) but alive (/livez 200), so Kubernetes stops routing
    instead of restarting every daemon pod during a Redis failover."""
    b = Broker.from_url(fresh_redis.url, namespace, socket_timeout=1.0, socket_connect_timeout=0.5)
    d = Daemon(b, interval=0.05)
    loop = threading.Thread(target=d.run, daemon=True)
    loop.start()
    srv = d.serve_http("127.0.0.1", 0)
    try:
        deadline = time.monotonic() + 20
        while get(srv.url + "/healthz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert get(srv.url + "/healthz")[0] == 200 and get(srv.url + "/livez")[0] == 200
        fresh_redis.stop()
        assert get(srv.url + "/healthz")[0] == 503
        assert get(srv.url + "/livez")[0] == 200
        d.last_tick -= 3600  # positive control: a loop that stopped turning is not alive
        assert get(srv.url + "/livez")[0] == 503
    finally:
        d.stop()
        loop.join(30)
        srv.close()
        b.close()
