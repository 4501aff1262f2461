"""The README's set-up prints no warning of Corral's own.

setuptools prints one notice for every editable install that maps packages to other folders (ours:
``corral`` -> ``core/``): "be careful with folders in your working directory with the same name as
your package". scripts/setup.sh filters that notice by its text; this test keeps the filter honest by
checking that no folder here is named like a package we install.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_folder_is_named_like_an_installed_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    top_level = {name.split(".")[0] for name in config["packages"]}
    assert top_level == {
        "corral",
        "corral_backend_cpu",
        "corral_backend_cuda",
        "corral_backend_rocm",
        "corral_backend_metal",
    }
    shadowing = sorted(name for name in top_level if (ROOT / name).exists())
    assert shadowing == []


def test_setup_filters_only_that_notice() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'PYTHONWARNINGS="ignore:Editable installation"' in setup
    assert setup.count("PYTHONWARNINGS") == 1  # no blanket silencing of other warnings
