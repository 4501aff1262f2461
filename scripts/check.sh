#!/usr/bin/env bash
# The guards scripts/test.sh runs before the tests: the layers (import-linter, import_cycles.py), style (ruff),
# types (mypy).
# Each runs; the script fails if any failed. Run it alone after `EXTRAS=test bash scripts/setup.sh`.
set -uo pipefail
cd "$(dirname "$0")/.."

failed=()
.venv/bin/python scripts/import_view.py .venv/bin/lint-imports --no-cache ||
    failed+=("lint-imports: the import rule in pyproject's [tool.importlinter]")
.venv/bin/python scripts/import_cycles.py ||
    failed+=("import_cycles.py: an import circle through a package's __init__, which lint-imports cannot see")
.venv/bin/ruff check || failed+=("ruff check: pyproject's [tool.ruff]")
.venv/bin/python scripts/import_view.py .venv/bin/mypy || failed+=("mypy: pyproject's [tool.mypy]")
if [ ${#failed[@]} -gt 0 ]; then
    printf 'Failed: %s\n' "${failed[@]}" >&2
    exit 1
fi
