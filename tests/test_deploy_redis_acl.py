"""deploy/redis/users.acl (Redis >= 7: FCALL only, the scripts loaded as a function library) and
users-redis6.acl (Redis 6.2: EVALSHA): the ACL line for one namespace is sufficient (the SDK's whole
flow, the CLI and the daemon run under it against a real redis-server, with nothing refused in ACL
LOG), confining (other namespaces, admin commands and, on Redis 7, any Lua of the client's own:
EVAL, EVALSHA, SCRIPT, FUNCTION LOAD are refused) and tied to the code (every Lua command is
granted, nothing unused)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from slotkeeper import Limiter, limit
from slotkeeper.broker.client import Broker
from slotkeeper.broker.errors import BrokerError, SlotkeeperError
from tests.support.redisproc import RedisProc, redis_binary

ROOT = Path(__file__).resolve().parent.parent
ACL_FILE = ROOT / "deploy" / "redis" / "users.acl"
ACL_FILE_6 = ROOT / "deploy" / "redis" / "users-redis6.acl"
CONF_FILE = ROOT / "deploy" / "redis" / "redis.conf"
PASSWORD = "s3cret-" + uuid.uuid4().hex[:8]

# Commands the client sends itself (not from Lua): why each one is in the line.
COMMON_COMMANDS = {
    "smembers": "the templates list (small: read whole)",
    "sscan": "list_limits (paged: one call stays short with 100,000 limits)",
    "ping": "health checks (daemon /healthz, pub/sub keep-alive)",
    "time": "server clock",
    "wait": "durable=True acquires",
    "subscribe": "grant wake-ups",
    "info": "slotkeeper doctor and the daemon's checks (read instead of CONFIG)",
    "xrevrange": "slotkeeper events, the status page and /api/v1/events (newest first)",
    "xread": "slotkeeper events --follow",
}
CLIENT_COMMANDS = {
    ACL_FILE: {
        **COMMON_COMMANDS,
        "fcall": "every script call (the function library)",
        "fcall_ro": "read-only script calls (snapshot) and the library's version check",
    },
    ACL_FILE_6: {
        **COMMON_COMMANDS,
        "evalsha": "every script call",
        "script|load": "NOSCRIPT after a restart or SCRIPT FLUSH (loaded again, then EVALSHA)",
        "select": "a database other than 0 in the URL",
    },
}


def acl_line(path: Path = ACL_FILE) -> str:
    lines = path.read_text().splitlines()
    # an ACL file takes no comments or other directives: Redis refuses to start otherwise
    assert len(lines) == 1 and lines[0].startswith("user slotkeeper "), "one user line only"
    return lines[0]


def acl_file(binary: str) -> Path:
    return ACL_FILE if server_version(binary) >= (7,) else ACL_FILE_6


def acl_for(namespace: str, path: Path = ACL_FILE) -> str:
    """The shipped file with its documented substitutions (namespace, password)."""
    text = path.read_text().replace("{default}", "{" + namespace + "}")
    return text.replace(">CHANGE_ME", ">" + PASSWORD)


def server_version(binary: str) -> tuple[int, ...]:
    import subprocess

    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    assert m, out
    return tuple(int(x) for x in m.groups())


def lua_commands() -> set[str]:
    found: set[str] = set()
    for f in (ROOT / "lua").glob("*.lua"):
        found |= {
            c.lower() for c in re.findall(r"redis\.p?call\(\s*['\"](\w+)['\"]", f.read_text())
        }
    return found


def granted_commands(line: str) -> set[str]:
    return {tok[1:].lower() for tok in line.split() if tok.startswith("+")}


def binaries() -> list[str]:
    """The PATH redis-server, plus the `embedded` extra's (an older Redis) when installed."""
    out = [redis_binary()]
    try:
        emb = redis_binary(prefer_embedded=True)
    except ImportError:
        return out
    return out if emb == out[0] else out + [emb]


def start_acl_redis(binary: str, tmp_path: Path, ns: str) -> RedisProc:
    aclfile = tmp_path / "users.acl"
    aclfile.write_text(
        acl_for(ns, acl_file(binary))
        # the admin the test itself uses (RedisProc pings unauthenticated)
        + "user default on nopass ~* &* +@all\n"
    )
    return RedisProc(args=["--aclfile", str(aclfile)], binary=binary).start()


def load_functions(r: RedisProc) -> None:
    """What the operator does once per deploy (Redis >= 7): `slotkeeper functions load`."""
    res = subprocess.run(
        [sys.executable, "-m", "slotkeeper.cli", "--url", r.url, "functions", "load"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr


@pytest.fixture(params=binaries(), ids=lambda b: "redis-" + ".".join(map(str, server_version(b))))
def acl_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[RedisProc, str]]:
    ns = "acl" + uuid.uuid4().hex[:8]
    r = start_acl_redis(request.param, tmp_path, ns)
    try:
        if server_version(request.param) >= (7,):
            load_functions(r)
        yield r, ns
    finally:
        r.stop()


def is_redis7(r: RedisProc) -> bool:
    return server_version(r.binary) >= (7,)


def user_url(r: RedisProc) -> str:
    # Redis 6.2: db 1, so SELECT is exercised; Redis 7: the line grants no SELECT
    db = 0 if is_redis7(r) else 1
    return f"redis://slotkeeper:{PASSWORD}@127.0.0.1:{r.port}/{db}"


def acl_log(r: RedisProc) -> list[str]:
    admin = r.client()
    entries = admin.acl_log()
    admin.close()
    return [
        " ".join(str(e.get(k, "")) for k in ("reason", "context", "object"))
        for e in entries
        # redis-py's optional connect-time CLIENT SETINFO / MAINT_NOTIFICATIONS: refused on
        # purpose (it ignores the refusal); slotkeeper itself never sends CLIENT.
        if not (e.get("reason") == "command" and e.get("object") == "client")
    ]


@pytest.mark.parametrize("path", [ACL_FILE, ACL_FILE_6], ids=lambda p: p.name)
def test_acl_line_grants_exactly_what_the_code_uses(path: Path) -> None:
    line = acl_line(path)
    granted = granted_commands(line)
    lua = lua_commands()
    assert lua, "found no redis.call in lua/*.lua"
    missing = lua - granted
    assert not missing, f"Lua scripts call {sorted(missing)} but {path.name} does not grant them"
    unused = granted - lua - set(CLIENT_COMMANDS[path])
    assert not unused, f"{path.name} grants {sorted(unused)} that no code uses"
    if path == ACL_FILE:  # least privilege: no Lua of the client's own, no SELECT
        assert not granted & {"eval", "evalsha", "eval_ro", "evalsha_ro", "script", "select"}
        assert not any(g.startswith(("script|", "function")) for g in granted)
    assert "-@all" in line.split() and "reset" in line.split()
    assert "~sk:{default}:*" in line.split() and "&sk:{default}:*" in line.split()
    assert not re.search(r"(^|\s)(~\*|&\*|\+@all|allkeys|allchannels|nopass)(\s|$)", line)


def test_sdk_flow_runs_under_the_namespace_user(acl_redis: tuple[RedisProc, str]) -> None:
    r, ns = acl_redis
    url = user_url(r)
    lim = Limiter(url, ns, ttl=2.0)
    broker = Broker.from_url(url, ns)
    stamps: list[tuple[str, float, float]] = []
    errors: list[BaseException] = []
    try:
        lim.create("gpu", 1)
        assert broker.list_limits() == ["gpu"]
        assert broker.ping() and broker.server_time_ms() > 0
        assert broker.wait_replicas(0, 10) == 0

        held = threading.Event()
        go = threading.Event()

        def holder() -> None:
            try:
                with limit("gpu", timeout=5, limiter=lim):
                    t0 = time.monotonic()
                    held.set()
                    go.wait(30)
                    stamps.append(("holder", t0, time.monotonic()))
            except BaseException as exc:  # noqa: B036 - reported to the main thread
                errors.append(exc)

        def waiter() -> None:
            try:
                lease = lim.acquire("gpu", timeout=30)  # blocks on the pub/sub wake-up
                t0 = time.monotonic()
                time.sleep(0.05)
                stamps.append(("waiter", t0, time.monotonic()))
                lease.release()
            except BaseException as exc:  # noqa: B036 - reported to the main thread
                errors.append(exc)

        th = threading.Thread(target=holder)
        th.start()
        assert held.wait(10), errors
        tw = threading.Thread(target=waiter)
        tw.start()
        deadline = time.monotonic() + 10
        while broker.snapshot("gpu").n_waiters < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        snap = broker.snapshot("gpu")
        assert (snap.used, snap.n_waiters) == (1, 1)
        # renew explicitly (the background heartbeat does the same call; it only logs failures)
        holder_id = snap.holders[0].lease_id
        hb = broker.heartbeat([(holder_id, ["gpu"], 2000)], [])
        assert hb.lost_leases == []
        # the background threads ran under the ACL too (definite signals, not a guessed delay):
        # the listener is subscribed to its wake-up channel, the heartbeat renewed the holder
        admin = r.client()
        channel = lim.runtime.channel
        renewed = broker.snapshot("gpu").holders[0].renewed_ms  # after the explicit renewal
        deadline = time.monotonic() + 20
        while not (admin.pubsub_numsub(channel)[0][1] >= 1
                   and broker.snapshot("gpu").holders[0].renewed_ms > renewed):
            assert time.monotonic() < deadline, "no subscription or no background renewal"
            time.sleep(0.02)
        go.set()
        th.join(30)
        tw.join(30)
        assert not errors, errors
        assert [s[0] for s in stamps] == ["holder", "waiter"]
        assert stamps[0][2] <= stamps[1][1], "the waiter got the slot while the holder held it"

        # admin paths: update (grants), revoke, reset, reclaim, NOSCRIPT reload, delete
        lease = lim.acquire("gpu", timeout=5)
        assert broker.revoke(lease.id)
        assert broker.heartbeat([(lease.id, ["gpu"], 2000)], []).lost_leases == [lease.id]
        lim.acquire("gpu", timeout=5, ttl=1.0)
        assert broker.reset("gpu") == 1
        lim.set("gpu", slots=3)
        r.client().script_flush()  # Redis 6.2: the NOSCRIPT path; 7: no effect (functions)
        assert broker.reclaim_all("gpu") >= 0 and broker.reclaim_all(None) >= 0
        lim.delete("gpu", force=True)
        assert broker.list_limits() == []
    finally:
        lim.runtime.close()
        broker.close()
    refused = acl_log(r)
    assert not refused, f"the ACL line refused commands the SDK needs: {refused}"


def test_the_user_is_confined_to_its_namespace(acl_redis: tuple[RedisProc, str]) -> None:
    r, ns = acl_redis
    url = user_url(r)
    other = Broker.from_url(url, ns + "x")
    try:
        with pytest.raises(BrokerError, match="NOPERM|permission"):
            other.create_limit("gpu", 1)
        with pytest.raises(SlotkeeperError):
            other.list_limits()
    finally:
        other.close()
    user = redis.Redis.from_url(url)
    for cmd in (
        ("FLUSHALL",),
        ("KEYS", "*"),
        ("CONFIG", "GET", "maxmemory"),
        ("SCRIPT", "FLUSH"),
        ("SET", f"sk:{{{ns}}}:x", "1"),
        ("DEL", "other-key"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.execute_command(*cmd)
    user.close()
    assert r.client(db=1).dbsize() == 0


def test_daemon_runs_under_the_namespace_user(acl_redis: tuple[RedisProc, str]) -> None:
    """The daemon (reclaim passes, /metrics, /healthz) needs nothing beyond the same line."""
    from tests.test_deploy_metrics import make_activity, running_daemon, wait_for

    r, ns = acl_redis
    url = user_url(r)
    make_activity(url, ns)  # includes a holder that never renews: the daemon must reclaim it
    with running_daemon(url, ns) as d:
        want = (
            f'slotkeeper_expired_total{{limit="gpu",namespace="{ns}"}} 1.0',
            f'slotkeeper_redis_up{{namespace="{ns}"}} 1.0',
            f'slotkeeper_limit_problems{{limit="gpu",namespace="{ns}"}} 0.0',
        )
        wait_for(lambda: all(w in d.metrics() for w in want), "the daemon's reclaim and metrics")
        passes = re.search(
            rf'slotkeeper_daemon_errors_total{{namespace="{ns}"}} (\S+)', d.metrics()
        )
        assert passes and float(passes[1]) == 0.0
    refused = acl_log(r)
    assert not refused, f"the ACL line refused commands the daemon needs: {refused}"


class FragmentRedis(RedisProc):
    """redis-server started with deploy/redis/redis.conf as its configuration file."""

    def argv(self) -> list[str]:
        return [
            self.binary,
            str(CONF_FILE),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.dir / "redis.log"),
        ]


@pytest.mark.parametrize("binary", binaries())
def test_redis_conf_fragment_loads_and_sets_what_it_promises(binary: str) -> None:
    with FragmentRedis(binary=binary) as r:
        c = r.client()
        conf = {k: c.config_get(k)[k] for k in ("appendonly", "appendfsync", "maxmemory-policy")}
        c.close()
    assert conf == {
        "appendonly": "yes",
        "appendfsync": "everysec",
        "maxmemory-policy": "noeviction",
    }


def test_redis7_user_may_run_no_lua_of_its_own(acl_redis: tuple[RedisProc, str]) -> None:
    """Under the Redis >= 7 line, the client can call the loaded library and nothing else: any
    Lua it brings (EVAL, EVALSHA, SCRIPT LOAD, FUNCTION LOAD) is refused, so it can never run a
    script that loops forever and freezes a Redis shared by every tenant."""
    r, ns = acl_redis
    if not is_redis7(r):
        assert "+evalsha" in acl_line(ACL_FILE_6)  # Redis 6.2 has no Functions: EVALSHA it is
        return
    user = redis.Redis.from_url(user_url(r))
    key = f"sk:{{{ns}}}:x"
    for cmd in (
        ("EVAL", "while true do end", 1, key),
        ("EVALSHA", "a" * 40, 1, key),
        ("EVAL_RO", "return 1", 1, key),
        ("SCRIPT", "LOAD", "return 1"),
        ("SCRIPT", "KILL"),
        ("FUNCTION", "LOAD", "#!lua name=evil\nredis.register_function('f', function() end)"),
        ("FUNCTION", "FLUSH"),
        ("SELECT", "1"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.execute_command(*cmd)
    # positive control: the library's own functions answer
    assert user.execute_command("FCALL_RO", "sk_version", 0)
    user.close()


def test_cli_works_under_the_namespace_user(acl_redis: tuple[RedisProc, str]) -> None:
    r, ns = acl_redis
    cli = [sys.executable, "-m", "slotkeeper.cli", "--url", user_url(r), "--namespace", ns]
    for args in (
        ["create", "cli", "--slots", "2"],
        ["ls"],
        ["show", "cli"],
        ["set", "cli", "--slots", "3"],
        ["run", "cli", "--", "true"],
        ["rm", "cli"],
    ):
        res = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, (args, res.stdout, res.stderr)
    refused = acl_log(r)
    assert not refused, f"the ACL line refused commands the CLI needs: {refused}"


@pytest.mark.skipif(server_version(binaries()[0]) < (7,), reason="PATH redis-server is 6.2")
def test_library_missing_or_of_another_version_is_one_clear_error(tmp_path: Path) -> None:
    from slotkeeper.broker import functions as F
    from slotkeeper.broker.errors import FunctionLibraryMismatch, FunctionLibraryMissing

    ns = "acl" + uuid.uuid4().hex[:8]
    r = start_acl_redis(binaries()[0], tmp_path, ns)
    try:
        url = user_url(r)
        with pytest.raises(FunctionLibraryMissing, match="slotkeeper functions load"):
            Broker.from_url(url, ns).create_limit("v", 1)  # not loaded, and it may not load it
        other = F.library_source().replace(F.version(), "0ld0ld0ld0ld")
        r.client().execute_command("FUNCTION", "LOAD", other)
        with pytest.raises(FunctionLibraryMismatch, match="slotkeeper functions load --replace"):
            Broker.from_url(url, ns).create_limit("v", 1)
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "slotkeeper.cli",
                "--url",
                r.url,
                "functions",
                "load",
                "--replace",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        res = subprocess.run(
            [sys.executable, "-m", "slotkeeper.cli", "--url", url, "functions", "status", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )  # readable by the namespace user too (FCALL_RO sk_version)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == {
            "library": "slotkeeper",
            "loaded": F.version(),
            "needed": F.version(),
            "current": True,
        }
        b = Broker.from_url(url, ns)
        b.create_limit("v", 1)  # positive control: the command the error named fixed it
        assert b.list_limits() == ["v"]
        b.close()
    finally:
        r.stop()
