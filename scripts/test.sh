#!/usr/bin/env bash
# Set up .venv with the test dependencies, install the services the tests use, check the layers, style
# and types (import-linter, ruff, mypy), then run the whole suite. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# A real registry for the pull/push tests: Debian's docker-registry (the CNCF distribution registry).
if ! command -v docker-registry >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker-registry >/dev/null
fi

EXTRAS=test bash scripts/setup.sh

bash scripts/check.sh

# Plugins that fail to load are errors here, not silently skipped.
export CORRAL_STRICT_PLUGINS=1
exec .venv/bin/python -m pytest "$@"
