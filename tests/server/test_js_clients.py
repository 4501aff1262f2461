"""End to end: the official JavaScript clients from npm (`ollama`, `openai`, `@anthropic-ai/sdk`, pinned
in tests/js/package.json) against a real `corral serve` with the bundled SmolLM2.

Each tests/js/*.test.mjs runs under node's own test runner (`node --test`, TAP output), with the
server's URL in CORRAL_URL. A run fails with node's output when any test fails, and also when the
TAP summary does not count every `test(` the file declares as passed, so an empty or half-skipped
run cannot pass. scripts/test.sh installs node (Debian's nodejs and npm) and the packages
(`npm ci --prefix tests/js`); missing either here is a set-up failure, not a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from registry_fixture import FakeRegistry, fake_registry  # noqa: F401 - fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # minutes on a busy 2-core machine

JS = Path(__file__).resolve().parents[1] / "js"
FILES = sorted(path.name for path in JS.glob("*.test.mjs"))
SETUP = "run the README's test command (bash scripts/test.sh), which installs them (npm ci --prefix tests/js)"


def declared_tests(file: Path) -> int:
    """The tests a file declares: its top-level ``test(`` calls (the files keep one per line start)."""
    return len(re.findall(r"^test\(", file.read_text(encoding="utf-8"), flags=re.M))


def tap_summary(output: str) -> dict[str, int]:
    """The counts node's TAP reporter prints at the end: ``# pass 12``, ``# fail 0``, ..."""
    return {key: int(value) for key, value in re.findall(r"^# (\w+) (\d+)$", output, flags=re.M)}


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not installed: {SETUP}")
    return node


def _installed(file: Path) -> None:
    imported = re.findall(r"^import .* from '([^.][^']*)'", file.read_text(encoding="utf-8"), flags=re.M)
    missing = [p for p in imported if not p.startswith("node:") and not (JS / "node_modules" / p).is_dir()]
    if missing:
        pytest.fail(f"tests/js/node_modules lacks {', '.join(missing)}: {SETUP}")


def test_every_client_file_is_run() -> None:
    assert FILES == ["anthropic.test.mjs", "ollama.test.mjs", "openai.test.mjs"]
    assert all(declared_tests(JS / name) >= 5 for name in FILES)


@pytest.mark.parametrize("name", FILES)
def test_javascript_client(name: str, corral_server: str, fake_registry: FakeRegistry) -> None:  # noqa: F811
    file = JS / name
    node = _node()
    _installed(file)
    env = {**os.environ, "CORRAL_URL": corral_server, "CORRAL_TEST_REGISTRY": fake_registry.host}
    run = subprocess.run(
        [node, "--test", "--test-reporter=tap", name],
        cwd=JS, env=env, capture_output=True, text=True, encoding="utf-8", timeout=1700,
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"node --test {name} exited {run.returncode}:\n{output}"
    summary = tap_summary(run.stdout)
    expected = declared_tests(file)
    counts = {key: summary.get(key) for key in ("tests", "pass", "fail", "skipped", "todo", "cancelled")}
    assert counts == {"tests": expected, "pass": expected, "fail": 0, "skipped": 0, "todo": 0, "cancelled": 0}, (
        f"{name} declares {expected} tests; node's summary: {counts}\n{output}"
    )
