"""The embedded broker's state and socket directories must be private to the user: a directory
another local user pre-created (or opened up, or replaced by a symlink) is refused, never used."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from slotkeeper import UnsafeDirectory
from slotkeeper.broker import embedded


def test_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "a" / "b"
    monkeypatch.setenv("SLOTKEEPER_HOME", str(home))
    assert embedded.state_dir() == home
    assert home.stat().st_mode & 0o777 == 0o700


def test_open_directory_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "open"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    monkeypatch.setenv("SLOTKEEPER_HOME", str(home))
    with pytest.raises(UnsafeDirectory, match="chmod 700"):
        embedded.state_dir()
    home.chmod(0o700)  # positive control: the same directory, private, is used
    assert embedded.state_dir() == home


def test_symlink_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv("SLOTKEEPER_HOME", str(tmp_path / "link"))
    with pytest.raises(UnsafeDirectory, match="not a directory"):
        embedded.state_dir()


def _foreign_dir(tmp_path: Path) -> Path:
    """A directory owned by another user: chown'ed when we are root, else one root owns."""
    if os.getuid() == 0:
        d = tmp_path / "foreign"
        d.mkdir(mode=0o700)
        os.chown(d, 65534, 65534)
        return d
    return Path("/")


def test_foreign_owner_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _foreign_dir(tmp_path)
    monkeypatch.setenv("SLOTKEEPER_HOME", str(d))
    with pytest.raises(UnsafeDirectory, match="owned by uid"):
        embedded.state_dir()


def test_short_socket_dir_pre_created_by_someone_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state dir too deep for a unix socket path falls back to a short per-user directory in
    the temp dir: the classic place for another user to plant one first."""
    home = tmp_path / ("x" * 120)
    monkeypatch.setenv("SLOTKEEPER_HOME", str(home))
    d = embedded.state_dir()
    tag = hashlib.sha1(str(d).encode()).hexdigest()[:10]
    short = Path(tempfile.gettempdir()) / f"slotkeeper-{os.getuid()}-{tag}"
    try:
        assert embedded.socket_path(d).parent == short  # positive control: made private
        short.chmod(0o777)  # as if someone else had made it world-writable first
        with pytest.raises(UnsafeDirectory):
            embedded.socket_path(d)
    finally:
        short.rmdir()


def test_cli_refuses_cleanly(tmp_path: Path) -> None:
    home = tmp_path / "open"
    home.mkdir()
    home.chmod(0o777)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTKEEPER_URL")}
    env["SLOTKEEPER_HOME"] = str(home)
    p = subprocess.run(
        [sys.executable, "-m", "slotkeeper.cli", "ls"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0 and "chmod 700" in p.stderr and "Traceback" not in p.stderr
    assert not (home / "redis.sock").exists()
