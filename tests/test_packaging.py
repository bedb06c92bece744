"""The built wheel holds the whole namespace (every subpackage, the Lua files, py.typed) and works
from its own files, not from this checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.redisproc import RedisProc

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contents_and_smoke(tmp_path: Path, redis_server: RedisProc) -> None:
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(ROOT)], check=True)
    wheel = next(out.glob("slotkeeper-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert not {"broker", "sdk", "cli", "bench"} & tops
    for lua in sorted((ROOT / "lua").glob("*.lua")):
        assert f"slotkeeper/lua/{lua.name}" in names
    for pkg in ("slotkeeper", "slotkeeper/broker", "slotkeeper/cli", "slotkeeper/lua",
                "slotkeeper/bench"):
        assert f"{pkg}/__init__.py" in names
    for src in ("sdk", "broker", "cli", "bench"):
        for py in (ROOT / src).rglob("*.py"):
            rel = py.relative_to(ROOT / src)
            pkg = {"sdk": "slotkeeper", "broker": "slotkeeper/broker", "cli": "slotkeeper/cli",
                   "bench": "slotkeeper/bench"}[src]
            assert f"{pkg}/{rel.as_posix()}" in names, f"{py} missing from the wheel"
    assert "slotkeeper/py.typed" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import slotkeeper, sys; from slotkeeper import Limiter, limit;"
        f"assert slotkeeper.__file__.startswith({str(site)!r}), slotkeeper.__file__;"
        f"lim = Limiter({redis_server.url!r}, 'wheel');"
        "lim.set('w', slots=1, create=True);"
        "exec('with limit(\"w\", limiter=lim) as l: print(l.token)')"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.strip()) >= 1
