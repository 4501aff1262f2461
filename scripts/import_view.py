"""Run a checker (mypy, lint-imports) on corral and its backends under their import names.

The folders (core/, cli/, plugins/backend_*) become packages through setuptools' package-dir, which
neither mypy nor grimp can read, so this lays a tree of symbolic links named as the packages are
(build/import-view/), runs the command given with that tree first on PYTHONPATH and MYPYPATH, and
prints the checker's paths as the repository's own. Usage: python scripts/import_view.py COMMAND...
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VIEW = ROOT / "build" / "import-view"


def lay_view(package_dirs: dict[str, str]) -> dict[str, str]:
    """Link each package folder under its dotted name; return view prefix -> repository prefix."""
    shutil.rmtree(VIEW, ignore_errors=True)
    VIEW.mkdir(parents=True)
    back: dict[str, str] = {}
    # A parent first, so that a package nested in it by name (corral.cli in corral) is linked inside it.
    for package, folder in sorted(package_dirs.items(), key=lambda item: item[0].count(".")):
        target = VIEW.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for entry in sorted((ROOT / folder).iterdir()):
            if entry.name != "__pycache__" and not (target / entry.name).exists():
                (target / entry.name).symlink_to(entry)
        back[f"{target.relative_to(ROOT)}/"] = f"{folder}/"
    return back


def main(command: list[str]) -> int:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    back = lay_view(setuptools["package-dir"])
    paths = os.pathsep.join(filter(None, [str(VIEW), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": paths, "MYPYPATH": str(VIEW)}
    run = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # The longest prefix first: build/import-view/corral/cli/ is cli/, not core/cli/.
    prefixes = sorted(back, key=len, reverse=True)
    for line in run.stdout.splitlines():
        for prefix in prefixes:
            line = line.replace(prefix, back[prefix]) if prefix in line else line
        print(line)
    return run.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
