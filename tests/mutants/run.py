"""Run every hand-picked mutant (tests/mutants/catalog.py) against its tests, each on a copy.

    .venv/bin/python -m tests.mutants.run            # all of them (a few minutes)
    .venv/bin/python -m tests.mutants.run fifo push  # those whose name contains a word

For each mutant: copy the repository's code and tests to a temporary directory, apply the one
change there (the checkout is never modified), lay the copy out as the ``slotkeeper`` package the
way pyproject.toml maps it, and run the mutant's tests with that package first on PYTHONPATH. A
mutant is *killed* when its tests fail. First, the same tests run on an unmutated copy: they must
pass there (otherwise a "kill" would prove nothing). Exit status 0 only if every mutant is killed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.mutants.catalog import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parents[2]
# source folder -> where it lives in the installed package (pyproject.toml [tool.setuptools.package-dir])
PACKAGE_DIRS = {
    "sdk": "slotkeeper",
    "broker": "slotkeeper/broker",
    "cli": "slotkeeper/cli",
    "lua": "slotkeeper/lua",
}
COPIED = (
    "sdk",
    "broker",
    "cli",
    "lua",
    "tests",
    "deploy",
    "pyproject.toml",
    "constraints.txt",
    "README.md",
    "ARCHITECTURE.md",
)  # docs: tests/test_readme.py is imported by others
TIMEOUT = 600


def make_copy(dest: Path, mutant: Mutant | None) -> Path:
    """The repository's code and tests under ``dest/src``, the package under ``dest/pkg``;
    returns the package root to put on PYTHONPATH."""
    src = dest / "src"
    src.mkdir(parents=True)
    for name in COPIED:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif p.exists():
            shutil.copy2(p, src / name)
    if mutant is not None:
        target = src / mutant.path
        text = target.read_text()
        if text.count(mutant.old) != 1:
            raise SystemExit(
                f"mutant {mutant.name!r}: the text to replace occurs {text.count(mutant.old)} "
                f"times in {mutant.path} (must be exactly once): update tests/mutants/catalog.py"
            )
        target.write_text(text.replace(mutant.old, mutant.new))
    pkg = dest / "pkg"
    for folder, where in PACKAGE_DIRS.items():
        shutil.copytree(
            src / folder,
            pkg / where,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    return pkg


def run_tests(dest: Path, pkg: Path, tests: tuple[str, ...]) -> tuple[bool, str]:
    """(passed, output tail) of the tests, run in the copy, importing the copy's package."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(pkg), str(dest / "src")])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    check = subprocess.run(
        [sys.executable, "-c", "import slotkeeper, sys; print(slotkeeper.__file__)"],
        env=env,
        cwd=dest / "src",
        capture_output=True,
        text=True,
        check=True,
    )
    assert check.stdout.startswith(str(pkg)), f"the copy is not what runs: {check.stdout}"
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
        env=env,
        cwd=dest / "src",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return res.returncode == 0, (res.stdout + res.stderr)[-1500:]


def main(words: list[str]) -> int:
    chosen = [m for m in MUTANTS if not words or any(w in m.name for w in words)]
    killed, survived = 0, []
    with tempfile.TemporaryDirectory(prefix="slotkeeper-mutants-") as tmp:
        base = Path(tmp) / "unmutated"
        pkg = make_copy(base, None)
        tests = tuple(sorted({t for m in chosen for t in m.tests}))
        ok, out = run_tests(base, pkg, tests)
        if not ok:
            print(f"the tests fail on the unmutated copy: fix them first\n{out}")
            return 2
        for i, m in enumerate(chosen):
            d = Path(tmp) / f"m{i}"
            t0 = time.monotonic()
            ok, out = run_tests(d, make_copy(d, m), m.tests)
            took = time.monotonic() - t0
            if ok:
                survived.append(m)
                print(f"SURVIVED  {m.name}  ({took:.0f} s)\n{out}")
            else:
                killed += 1
                print(f"killed    {m.name}  ({took:.0f} s)")
            shutil.rmtree(d, ignore_errors=True)
    print(f"\n{killed} of {len(chosen)} mutants killed")
    return 0 if not survived else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
