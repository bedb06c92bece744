"""Secrets never show: a password in the Redis URL never appears in exceptions (message, repr,
chained traceback), log records (any logger, any level), repr() of SDK objects, or a child
process's stderr -- on success, on a lost lease, with Redis down, with a wrong password."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from slotkeeper import BrokerUnavailable, Lease, LeaseLost, Limiter, limit
from slotkeeper.broker.client import Broker
from slotkeeper.broker.connection import has_password, redact
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


ODD = ["p#ss", "p?ss", "p@ss", "p/ss", "p%40ss", "a#b?c@d/e%f", "#", "?@/"]


@pytest.mark.parametrize("pw", ODD)
@pytest.mark.parametrize(
    "form",
    [
        "redis://u:{pw}@h:1/0",
        "redis://:{pw}@h",
        "rediss://u:{pw}@h:1/0?ssl_ca_certs=/ca@x.pem",
        "redis+sentinel://:{pw}@h1:1,h2:2/m?sentinel_password={pw}",
        "unix:///tmp/r.sock?db=0&password={pw}",
        "Error 111 connecting to redis://u:{pw}@h:1/0. Connection refused.",
    ],
)
def test_redact_passwords_with_url_syntax_in_them(pw: str, form: str) -> None:
    """Redaction parses the URL: a password pasted with raw ``# ? @ / %`` is hidden whole, and
    the host stays visible."""
    secret = pw + "Zq9"
    out = redact(form.format(pw=secret))
    assert "Zq9" not in out and "***" in out, out
    if "@h" in form:
        assert "@h" in out, out
    assert has_password(form.format(pw=secret))
    assert not has_password("redis://h:1/0") and not has_password("redis://user@h/0")


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


def test_url_from_a_file(
    locked_redis: RedisProc, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SLOTKEEPER_URL_FILE (systemd: ``LoadCredential=`` + a name relative to
    $CREDENTIALS_DIRECTORY): the password never sits in the environment."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "slotkeeper-url").write_text(
        f"\n  redis://{USER}:{SECRET}@127.0.0.1:{locked_redis.port}/0  \n"
    )
    (creds / "slotkeeper-url").chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTKEEPER_URL")}
    env.update(
        CREDENTIALS_DIRECTORY=str(creds),
        SLOTKEEPER_URL_FILE="slotkeeper-url",
        SLOTKEEPER_NAMESPACE=namespace,
    )
    cli = [sys.executable, "-m", "slotkeeper.cli"]
    p = subprocess.run(
        [*cli, "create", "fromfile", "--slots", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    p = subprocess.run([*cli, "ls"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "fromfile" in p.stdout and SECRET not in p.stdout + p.stderr
    env["SLOTKEEPER_URL_FILE"] = str(tmp_path / "missing")
    p = subprocess.run([*cli, "ls"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "missing" in p.stderr and "SLOTKEEPER_URL_FILE" in p.stderr
    assert "Traceback" not in p.stderr
    monkeypatch.setenv("SLOTKEEPER_URL_FILE", str(creds / "slotkeeper-url"))
    assert Limiter(namespace=namespace).broker.list_limits() == ["fromfile"]


def test_configure_exports_a_password_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import slotkeeper.limiter as limiter_module
    from slotkeeper import configure

    monkeypatch.setattr(limiter_module, "_default", None)
    monkeypatch.setenv("SLOTKEEPER_URL", "placeholder")  # restored after the test
    monkeypatch.delenv("SLOTKEEPER_URL")
    secret_url = f"redis://{USER}:{SECRET}@127.0.0.1:1/0"
    configure(secret_url, "ns-a")
    assert "SLOTKEEPER_URL" not in os.environ and os.environ["SLOTKEEPER_NAMESPACE"] == "ns-a"
    configure("redis://127.0.0.1:1/0", "ns-b")  # positive control: no secret, exported
    assert os.environ["SLOTKEEPER_URL"] == "redis://127.0.0.1:1/0"
    configure(secret_url, "ns-c", export_url=True)
    assert os.environ["SLOTKEEPER_URL"] == secret_url
    monkeypatch.delenv("SLOTKEEPER_URL")
    configure("redis://127.0.0.1:1/0", export_url=False)
    assert "SLOTKEEPER_URL" not in os.environ


def test_dask_plugin_exports_a_password_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import slotkeeper.limiter as limiter_module
    from slotkeeper.dask import SlotkeeperPlugin

    monkeypatch.setattr(limiter_module, "_default", None)
    monkeypatch.setenv("SLOTKEEPER_URL", "placeholder")
    monkeypatch.delenv("SLOTKEEPER_URL")
    monkeypatch.setenv("SLOTKEEPER_WORKER", "placeholder")
    secret_url = f"redis://{USER}:{SECRET}@127.0.0.1:1/0"
    worker = SimpleNamespace(name="w0", id="w0-id")
    plugin = SlotkeeperPlugin(secret_url, "ns-d")
    plugin.setup(worker)
    try:
        assert "SLOTKEEPER_URL" not in os.environ
        assert os.environ["SLOTKEEPER_NAMESPACE"] == "ns-d"
    finally:
        plugin.teardown(worker)
    plugin = SlotkeeperPlugin(secret_url, "ns-d", export_url=True)
    plugin.setup(worker)
    try:
        assert os.environ["SLOTKEEPER_URL"] == secret_url
    finally:
        plugin.teardown(worker)


def test_run_strips_the_url_and_records_only_the_program(
    locked_redis: RedisProc, namespace: str
) -> None:
    url = f"redis://{USER}:{SECRET}@127.0.0.1:{locked_redis.port}/0"
    b = Broker.from_url(url, namespace)
    b.create_limit("cmd", 1)
    env = dict(os.environ, SLOTKEEPER_URL=url, SLOTKEEPER_NAMESPACE=namespace)
    probe = (
        "import os, sys, time\n"
        "from slotkeeper.broker.client import Broker\n"
        "print(os.environ.get('SLOTKEEPER_URL', 'unset'), flush=True)\n"
        "b = Broker.from_url(sys.argv[1], sys.argv[2])\n"
        "print(repr(b.snapshot('cmd').holders[0].label), flush=True)\n"
    )
    base = [sys.executable, "-m", "slotkeeper.cli", "run", "cmd"]
    cmd = ["--", sys.executable, "-c", probe, url, namespace]
    p = subprocess.run([*base, *cmd], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    seen_url, label = p.stdout.splitlines()
    assert seen_url == "unset"
    assert label == repr("run: " + os.path.basename(sys.executable))
    p = subprocess.run(
        [*base, "--pass-url", "--record-args", *cmd],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    seen_url, label = p.stdout.splitlines()
    assert seen_url == url and "import os" in label  # positive control: asked for both
