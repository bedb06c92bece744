"""Static checks as tests: ruff (lint + format) and mypy --strict over the installed layout.

mypy needs the `slotkeeper.*` import names: the source folders are mirrored into a temporary
`slotkeeper/` tree of symlinks (what the wheel holds) and checked there."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = BIN / name
    if not found.exists():
        pytest.fail(f"{name} is not installed in the test environment (dev extra)")
    return str(found)


def test_ruff_clean() -> None:
    res = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_strict(tmp_path: Path) -> None:
    pkg = tmp_path / "slotkeeper"
    pkg.mkdir()
    for item in (ROOT / "sdk").iterdir():
        if item.name != "__pycache__":
            (pkg / item.name).symlink_to(item)
    for sub in ("broker", "cli", "lua", "bench"):
        (pkg / sub).symlink_to(ROOT / sub)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    res = subprocess.run(
        [_tool("mypy"), "--strict", "--config-file", str(tmp_path / "pyproject.toml"),
         "--cache-dir", str(tmp_path / ".mypy_cache"), "-p", "slotkeeper"],
        cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
