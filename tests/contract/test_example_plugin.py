"""The example third-party backend (examples/corral-backend-example), installed as a user would install it.

pip installs the example with ``--target`` into a temporary folder, which then goes on PYTHONPATH of a
fresh interpreter: that interpreter sees corral from .venv and the example's .dist-info (with its
entry point) from the folder, exactly as if both were installed in one environment, and the test
never changes .venv. ``--no-deps``: corral is already there. The build runs offline with the
environment's own setuptools where that can build wheels (setuptools >= 70.1, or the ``wheel``
package beside it); otherwise pip builds in an isolated environment, fetching setuptools from the
index as ``pip install`` normally does (test_packaging's wheel build does the same).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "corral-backend-example"


def _can_build_wheels() -> bool:
    try:
        setuptools_version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    major, minor = (int(part) for part in (setuptools_version.split(".") + ["0"])[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("example-plugin")
    source = tmp / "src"
    # Build from a copy, so setuptools' build/ and *.egg-info never land in the checkout.
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp / "site"
    offline = ["--no-build-isolation", "--no-index"] if _can_build_wheels() else []
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            *offline,
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (target / "corral_backend_example" / "__init__.py").is_file()
    return target


def run_python(site: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env["CORRAL_STRICT_PLUGINS"] = "1"  # a plugin that fails to import is an error, not a quiet skip
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=site)


def test_the_installed_example_declares_only_its_entry_point(site: Path) -> None:
    (info,) = site.glob("corral_backend_example-*.dist-info")
    assert (info / "entry_points.txt").read_text().split() == ["[corral]", "example", "=", "corral_backend_example"]


def test_corral_backends_lists_the_example_as_available(site: Path) -> None:
    done = run_python(site, "-m", "corral.cli.main", "backends")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert "example" in rows, done.stdout
    assert rows["example"].split()[1] == "yes"  # available, but not the default (priority 5 < cpu's 10)
    assert "1 CPU thread" in rows["example"]
    assert "(default)" not in rows["example"]


def test_the_example_imports_cheaply(site: Path) -> None:
    code = "import sys, corral_backend_example; print(sorted(m for m in ('llama_cpp', 'numpy') if m in sys.modules))"
    done = run_python(site, "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


GENERATE = textwrap.dedent(
    """
    import asyncio

    from corral.config import Settings
    from corral.runtime.scheduler import Scheduler


    async def main() -> None:
        sched = Scheduler(Settings(num_parallel=2, num_ctx=512))  # runners isolated in a child, as in `corral serve`
        try:
            ticket = await sched.acquire("smollm2:135m", options={"temperature": 0}, backend="example")
            try:
                text = "".join([e.text async for e in sched.stream(ticket, "The capital of France is", num_predict=8)])
            finally:
                sched.release(ticket)
            print("backend:", ticket.loaded.backend)
            print("text:", repr(text))
        finally:
            await sched.close()


    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_a_generation_runs_on_the_example_backend_through_the_scheduler(site: Path) -> None:
    done = run_python(site, "-c", GENERATE, timeout=240)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert lines["backend"] == "example"
    text = eval(lines["text"])  # noqa: S307 - our own repr() from the child
    assert text.strip(), done.stdout
    assert "Paris" in text  # SmolLM2-135M knows this much, greedily


def test_an_unavailable_forced_example_is_an_error_that_says_why(site: Path) -> None:
    code = textwrap.dedent(
        """
        import corral_backend_example
        corral_backend_example.find_spec = lambda name: None  # as if llama-cpp-python were not installed
        from corral.plugins import Plugins
        try:
            Plugins().select("example")
        except Exception as exc:
            print(type(exc).__name__, exc)
        """
    )
    done = run_python(site, "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "BackendUnavailable backend 'example' is unavailable: "
        "llama-cpp-python is not installed (pip install llama-cpp-python)"
    )
