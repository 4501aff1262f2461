#!/usr/bin/env bash
# Set up .venv with the test dependencies, install the services the tests use, run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# A real registry for the pull/push tests: Debian's docker-registry (the CNCF distribution registry).
if ! command -v docker-registry >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker-registry >/dev/null
fi

EXTRAS=test bash scripts/setup.sh
# Plugins that fail to load are errors here, not silently skipped.
export CORRAL_STRICT_PLUGINS=1
VENV_BIN=.venv/bin
[ -d .venv/Scripts ] && VENV_BIN=.venv/Scripts  # Windows
# Without apt-get (macOS, Windows) the registry tests skip, saying why (tests/conftest.py).
exec "$VENV_BIN/python" -m pytest "$@"
