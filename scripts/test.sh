#!/usr/bin/env bash
# Set up .venv with the test dependencies, install the services the tests use, run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: a real registry for the pull/push tests (docker-registry, the CNCF
# distribution registry) and a real browser for the chat page's tests (chromium, driven by Playwright
# through executable_path; Playwright's own browser download is never used).
NEEDED=()
command -v docker-registry >/dev/null 2>&1 || NEEDED+=(docker-registry)
[ -x /usr/bin/chromium ] || NEEDED+=(chromium chromium-driver)
if [ ${#NEEDED[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${NEEDED[@]}" >/dev/null
fi

EXTRAS=test bash scripts/setup.sh
# Plugins that fail to load are errors here, not silently skipped.
export CORRAL_STRICT_PLUGINS=1
exec .venv/bin/python -m pytest "$@"
