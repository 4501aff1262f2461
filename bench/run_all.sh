#!/usr/bin/env bash
# Every benchmark, one after another (never two at once: on 2 cores they ruin each other's numbers).
# Run on an otherwise idle machine; trials disturbed by other processes are repeated.
set -euo pipefail
cd "$(dirname "$0")"
PY=../.venv/bin/python
# llama-cpp-python's own server (the concurrency reference) needs its server extra.
$PY -m pip install --quiet sse-starlette starlette-context
$PY run_verbose.py
$PY single_stream.py "$@"
$PY concurrency.py "$@"
$PY chat_turns.py "$@"
$PY engines.py
