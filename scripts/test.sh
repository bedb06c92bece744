#!/usr/bin/env bash
# Install slotkeeper with every extra into .venv and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e '.[dev,dask,embedded,prefect]'
bash deploy/ci-tools.sh          # promtool, hadolint, kubernetes-validate for tests/test_deploy*.py
.venv/bin/python -m pytest -q "$@"
