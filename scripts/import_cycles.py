"""Import circles import-linter cannot see: a package's __init__ and a module inside it that import each other.

pyproject's acyclic_siblings contract compares sibling modules only, so it passes a package whose
__init__ imports a module that imports the package back (planted: corral.client <-> corral.client.base,
kept by lint-imports, found here). This walks every import of Corral's own modules (core/, cli/,
plugins/), those inside functions too (a function-level import hides a circle from Python, not from a
reader), and lists every strongly connected group, sibling circles included; exit 1 when there is one.
Run by scripts/check.sh. Usage:
    python scripts/import_cycles.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Folder -> import name, as pyproject's package-dir maps them.
PACKAGES = {"core": "corral", "cli": "corral.cli"}


def module_names() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, name in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            found[_dotted(name, path.relative_to(ROOT / folder))] = path
    for plugin in sorted((ROOT / "plugins").iterdir()):
        if plugin.is_dir():
            for path in sorted(plugin.rglob("*.py")):
                found[_dotted(f"corral_{plugin.name}", path.relative_to(plugin))] = path
    return found


def _dotted(package: str, relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The known modules that ``module`` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {t for t in targets if t in known and t != module}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def main() -> int:
    modules = module_names()
    known = set(modules)
    graph = {m: imports_of(m, p, known) for m, p in modules.items()}
    found = cycles(graph)
    for group in found:
        members = set(group)
        print("cycle: " + ", ".join(group))
        for m in group:
            for target in sorted(graph[m] & members):
                print(f"    {m} -> {target}")
    print(f"{len(modules)} modules, {len(found)} import cycle(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
