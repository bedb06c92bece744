"""Secrets never show: a password in the Redis URL never appears in exceptions (message, repr,
chained traceback), log records (any logger, any level), repr() of SDK objects, or a child
process's stderr -- on success, on a lost lease, with Redis down, with a wrong password."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator

import pytest
import redis

from slotkeeper import BrokerUnavailable, Lease, LeaseLost, Limiter, limit
from slotkeeper.broker.client import Broker
from slotkeeper.broker.connection import redact
from tests.support.redisproc import RedisProc, free_port

SECRET = "Zq7-s3cr3t-pw"
USER = "skuser"


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@h:1/0",
        f"redis://{USER}:{SECRET}@h",
        f"redis://{USER}:p@{SECRET}@h:1/0",  # a raw '@' inside the password
        f"redis://{USER}:{SECRET}/x@h:1/0",
        f"rediss://{USER}:{SECRET}@h:1/0?ssl_ca_certs=/ca.pem",
        f"redis+sentinel://:{SECRET}@h1:1,h2:2/m?sentinel_password={SECRET}",
        f"redis+cluster://{USER}:{SECRET}@h1:1,h2:2",
        f"unix:///tmp/r.sock?password={SECRET}&db=0",
        f"rediss://h:1/0?ssl_password={SECRET}&ssl_certfile=/c.pem",
    ],
)
def test_redact(url: str) -> None:
    out = redact(url)
    assert SECRET not in out and "***" in out
    assert redact(out) == out


class LockedRedis(RedisProc):
    """A Redis where only an ACL user with a password may do anything."""

    def __init__(self) -> None:
        super().__init__(
            args=[
                "--user",
                "default",
                "off",
                "--user",
                USER,
                "on",
                f">{SECRET}",
                "~*",
                "&*",
                "+@all",
            ]
        )

    def client(self, **kw: object) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, username=USER, password=SECRET, socket_timeout=5, **kw
        )  # type: ignore[arg-type]


@pytest.fixture
def locked_redis() -> Iterator[RedisProc]:
    with LockedRedis() as r:
        yield r


def everything_said(exc: BaseException) -> str:
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


def test_password_never_in_errors_logs_or_reprs(
    locked_redis: RedisProc, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, redis-py's included
    url = f"redis://{USER}:{SECRET}@127.0.0.1:{locked_redis.port}/0"
    lim = Limiter(url, namespace, ttl=1)
    lim.create("sec", 1)
    said: list[str] = [repr(lim), str(lim.__getstate__().keys())]
    lost: list[Lease] = []
    with pytest.raises(LeaseLost) as lost_exc:
        with limit("sec", limiter=lim, on_lost=lost.append) as lease:
            said += [repr(lease), repr(lim.broker.redis), lim.broker.url_redacted]
            assert lim.broker.revoke(lease.id)
            deadline = time.monotonic() + 10
            while not lease.lost and time.monotonic() < deadline:
                time.sleep(0.02)
    said.append(everything_said(lost_exc.value))
    deadline = time.monotonic() + 5  # on_lost runs on a thread of its own
    while not lost and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lost

    holder = lim.acquire("sec")
    locked_redis.stop(signal.SIGKILL)  # heartbeat failures get logged; acquire gives up
    with pytest.raises(BrokerUnavailable) as down:
        lim.acquire("sec", timeout=0)
    said.append(everything_said(down.value))
    assert "***" in str(down.value)
    deadline = time.monotonic() + 15
    while not holder.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert holder.lost  # told, via a (logged) heartbeat failure

    said += [f"{r.name} {r.levelname} {r.getMessage()}" for r in caplog.records]
    assert any("heartbeat failed" in s for s in said)
    for text in said:
        assert SECRET not in text, text


def test_wrong_password_is_refused_without_echoing_it(
    locked_redis: RedisProc, namespace: str
) -> None:
    wrong = "Wr0ng-" + SECRET
    b = Broker.from_url(f"redis://{USER}:{wrong}@127.0.0.1:{locked_redis.port}/0", namespace)
    with pytest.raises(BrokerUnavailable) as err:
        b.ping()
    text = everything_said(err.value)
    assert wrong not in text and SECRET not in text
    assert "AuthenticationError" in text or "WRONGPASS" in text or "invalid" in text


@pytest.mark.parametrize(
    "url",
    [
        f"redis+sentinel://:{SECRET}@127.0.0.1:{free_port()}/mymaster?sentinel_password={SECRET}",
        f"redis+cluster://{USER}:{SECRET}@127.0.0.1:{free_port()}",
        f"rediss://{USER}:{SECRET}@127.0.0.1:{free_port()}/0",
    ],
)
def test_unreachable_sentinel_cluster_tls_urls_stay_redacted(url: str, namespace: str) -> None:
    with pytest.raises(BrokerUnavailable) as err:
        Broker.from_url(url, namespace).ping()
    text = everything_said(err.value)
    assert SECRET not in text and "***" in text


def test_child_process_stderr_never_shows_the_password(
    locked_redis: RedisProc, namespace: str
) -> None:
    url = f"redis://{USER}:{SECRET}@127.0.0.1:{locked_redis.port}/0"
    Limiter(url, namespace).create("child", 1)
    code = f"""
import logging, sys, time
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
from slotkeeper import Limiter
lim = Limiter({url!r}, {namespace!r}, ttl=1)
lease = lim.acquire("child")
print("held", flush=True)
time.sleep(4)
print("lost" if lease.lost else "kept", flush=True)
lease.release()
lim.acquire("child", timeout=0)
"""
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "held"
    locked_redis.stop(signal.SIGKILL)
    out, err = p.communicate(timeout=60)
    assert p.returncode != 0 and "BrokerUnavailable" in err  # the uncaught error, printed
    assert "lost" in out and "heartbeat failed" in err
    assert SECRET not in out + err
