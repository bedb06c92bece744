#!/usr/bin/env bash
# Run the SDK, async, core and runner tests on every other supported Python this machine has
# (3.10, 3.12, 3.13; the main suite runs on the default python3). Each gets its own venv with
# '.[dev,dask]', pinned by constraints.txt where its pins exist for that Python (3.10 lacks some:
# it then gets the newest versions that support it, and says so). A version the machine lacks is
# reported, not silently skipped. (Multi-process behaviour is not version-specific: it runs once,
# in the main suite.)
set -euo pipefail
cd "$(dirname "$0")/.."
SUBSET=(
  tests/test_protocol.py tests/test_core_basic.py tests/test_core_fairness.py
  tests/test_deadlines.py tests/test_lease_runtime.py
  tests/test_executor.py tests/test_executor_aio.py tests/test_notify_before_register.py
)
find_python() {  # PATH first (if it really runs), then pyenv's versions folder
  local v=$1 cand
  for cand in "$(command -v "python$v" 2>/dev/null || true)" \
              "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/"$v".*/bin/"python$v"; do
    if [ -n "$cand" ] && [ -x "$cand" ] && "$cand" -c 'import sys' >/dev/null 2>&1; then
      echo "$cand"; return 0
    fi
  done
  return 1
}
missing=()
for v in ${SLOTKEEPER_PYTHONS:-3.10 3.12 3.13}; do
  if ! py=$(find_python "$v"); then
    missing+=("$v"); continue
  fi
  venv=".venv-$v"
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  if ! "$venv/bin/python" -m pip install -q -c constraints.txt -e '.[dev,dask]' 2>/dev/null; then
    echo "Python $v: constraints.txt does not resolve here; installing the newest compatible versions"
    "$venv/bin/python" -m pip install -q -e '.[dev,dask]'
  fi
  echo "== Python $v: SDK, async, core and runner tests"
  "$venv/bin/python" -m pytest -q -p no:cacheprovider "${SUBSET[@]}"
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "Python(s) not on this machine, not tested: ${missing[*]}"
fi
