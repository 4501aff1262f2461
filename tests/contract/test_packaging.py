"""The wheel (a plain `pip install .`) carries every sub-package under its import name, and nothing else."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAPPING = {
    "core": "corral",
    "cli": "corral/cli",
    "plugins/backend_cpu": "corral_backend_cpu",
    "plugins/backend_cuda": "corral_backend_cuda",
    "plugins/backend_rocm": "corral_backend_rocm",
    "plugins/backend_metal": "corral_backend_metal",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=600,
    )
    (path,) = out.glob("corral-*.whl")
    return zipfile.ZipFile(path)


@pytest.fixture(scope="module")
def wheel_files(wheel: zipfile.ZipFile) -> set[str]:
    return set(wheel.namelist())


def test_every_source_module_is_in_the_wheel(wheel_files: set[str]) -> None:
    """Sub-packages too, at any depth: one missing from pyproject.toml's list is left out of the wheel."""
    missing = []
    for folder, package in MAPPING.items():
        for source in (ROOT / folder).rglob("*.py"):
            relative = source.relative_to(ROOT / folder).as_posix()
            if f"{package}/{relative}" not in wheel_files:
                missing.append(f"{folder}/{relative}")
    assert not missing, f"not in the wheel: {', '.join(missing)}; add their packages to [tool.setuptools] packages"


def test_typed_marker_is_in_the_wheel(wheel_files: set[str]) -> None:
    assert "corral/py.typed" in wheel_files


def test_the_chat_pages_files_are_in_the_wheel(wheel_files: set[str]) -> None:
    page = sorted(p.name for p in (ROOT / "core/server/ui").iterdir())
    assert "index.html" in page
    assert [name for name in page if f"corral/server/ui/{name}" not in wheel_files] == []


def test_no_top_level_core_cli_or_plugins(wheel_files: set[str]) -> None:
    tops = {name.split("/")[0] for name in wheel_files}
    assert not tops & {"core", "cli", "plugins", "tests"}


def test_backends_are_entry_points_in_the_wheel(wheel: zipfile.ZipFile) -> None:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(name).decode()
    section = text.split("[corral]", 1)[1].split("[", 1)[0]
    pairs = {line.split("=")[0].strip(): line.split("=")[1].strip() for line in section.strip().splitlines()}
    assert pairs == {
        "cpu": "corral_backend_cpu",
        "cuda": "corral_backend_cuda",
        "rocm": "corral_backend_rocm",
        "metal": "corral_backend_metal",
    }
    assert "corral = corral.cli.main:main" in text
