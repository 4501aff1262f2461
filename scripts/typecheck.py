"""Type-check corral and its backends with mypy under their import names, not their folder names.

The folders (core/, cli/, plugins/backend_*) become packages through setuptools' package-dir, which
mypy cannot read, so this lays a tree of symbolic links named as the packages are (build/typecheck/),
runs mypy on it and prints mypy's paths as the repository's own. Extra arguments go to mypy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VIEW = ROOT / "build" / "typecheck"


def lay_view(package_dirs: dict[str, str]) -> dict[str, str]:
    """Link each package folder under its dotted name; return link prefix -> repository prefix."""
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


def main() -> int:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    back = lay_view(setuptools["package-dir"])
    top_level = sorted({name.split(".")[0] for name in setuptools["packages"]})
    command = [sys.executable, "-m", "mypy", *(arg for name in top_level for arg in ("-p", name)), *sys.argv[1:]]
    run = subprocess.run(command, cwd=ROOT, env={**os.environ, "MYPYPATH": str(VIEW)}, capture_output=True, text=True)
    for line in (run.stdout + run.stderr).splitlines():
        # The longest prefix first: build/typecheck/corral/cli/ is cli/, not core/cli/.
        for prefix in sorted(back, key=len, reverse=True):
            if line.startswith(prefix):
                line = back[prefix] + line[len(prefix) :]
                break
        print(line)
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
