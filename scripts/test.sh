#!/usr/bin/env bash
# Set up .venv with the test dependencies, install the services the tests use, check the layers, style
# and types (import-linter, ruff, mypy), then run the whole suite. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: a real registry for the pull/push tests (docker-registry, the CNCF
# distribution registry) and a real browser for the chat page's tests (chromium, driven by Playwright
# through executable_path; Playwright's own browser download is never used).
NEEDED=()
command -v docker-registry >/dev/null 2>&1 || NEEDED+=(docker-registry)
[ -x /usr/bin/chromium ] || NEEDED+=(chromium chromium-driver)
# The container image test: rootful podman with runc, and mmdebstrap for a base image where no
# registry is reachable (see docs/deploy.md).
for tool in podman runc mmdebstrap; do command -v "$tool" >/dev/null 2>&1 || NEEDED+=("$tool"); done
# The JavaScript client tests (tests/js): node and npm.
command -v node >/dev/null 2>&1 || NEEDED+=(nodejs)
command -v npm >/dev/null 2>&1 || NEEDED+=(npm)
# Without apt-get (macOS, Windows) those tests skip, saying why (tests/conftest.py).
if [ ${#NEEDED[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${NEEDED[@]}" >/dev/null
fi

EXTRAS=test bash scripts/setup.sh

# The official JavaScript clients, at the versions tests/js/package-lock.json pins; installed again
# only when the lock file differs from the one the last install recorded.
JS_STAMP=tests/js/node_modules/.installed-from-lock.json
if command -v npm >/dev/null 2>&1 && ! cmp -s tests/js/package-lock.json "$JS_STAMP"; then
    npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
    cp tests/js/package-lock.json "$JS_STAMP"
fi

bash scripts/check.sh

# Plugins that fail to load are errors here, not silently skipped.
export CORRAL_STRICT_PLUGINS=1
VENV_BIN=.venv/bin
[ -d .venv/Scripts ] && VENV_BIN=.venv/Scripts  # Windows
exec "$VENV_BIN/python" -m pytest "$@"
