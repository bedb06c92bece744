#!/usr/bin/env bash
# Install slotkeeper with every extra into .venv and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e '.[dev,dask,embedded,prefect,otel,ray,prefect-ray,plot]'
# the status page is tested in a real headless browser (Debian's chromium + chromedriver)
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
  else
    echo "scripts/test.sh: install chromium and chromium-driver (tests/test_status_page.py needs them)" >&2
  fi
fi
bash deploy/ci-tools.sh          # promtool, hadolint, kubernetes-validate for tests/test_deploy*.py
.venv/bin/python -m pytest -q --durations=20 "$@"
[ $# -gt 0 ] || bash scripts/test-pythons.sh   # the SDK/async/core subset on 3.10, 3.12, 3.13
