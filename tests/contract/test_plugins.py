"""The plugin contract: entry-point discovery, tolerance, strictness, selection and --backend."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pluggy
import pytest

from corral.errors import BackendUnavailable
from corral.hookspecs import hookimpl
from corral.plugins import Plugins
from fakes import FakeBackend, FakePlugin


def test_first_party_backends_come_from_entry_points() -> None:
    plugins = Plugins()
    assert plugins.names() == ["cuda", "rocm", "metal", "cpu"]  # priority order
    assert {e.plugin for e in plugins.backends} == {"cuda", "rocm", "metal", "cpu"}
    assert plugins.failures == []


def test_this_machine_has_only_the_cpu() -> None:
    plugins = Plugins()
    assert plugins.get("cpu").probe().available
    for name in ("cuda", "rocm", "metal"):
        probe = plugins.get(name).probe()
        assert not probe.available
        assert len(probe.reason) > 10
    assert plugins.select().name == "cpu"


def test_best_available_backend_wins_and_can_be_forced() -> None:
    plugins = Plugins()
    plugins.register(FakePlugin(FakeBackend(priority=100)), name="fake")
    assert plugins.select().name == "fake"
    assert plugins.select("cpu").name == "cpu"


def test_an_unavailable_forced_backend_says_why() -> None:
    plugins = Plugins()
    with pytest.raises(BackendUnavailable, match=r"backend 'cuda' is unavailable: .*NVIDIA"):
        plugins.select("cuda")
    plugins.register(FakePlugin(FakeBackend(available=False)), name="fake")
    with pytest.raises(BackendUnavailable, match="switched off"):
        plugins.select("fake")
    assert plugins.select().name == "cpu"  # an unavailable higher-priority backend is passed over


def test_an_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(BackendUnavailable, match=r"unknown backend 'tpu' \(known backends: cuda, rocm, metal, cpu\)"):
        Plugins().select("tpu")


def _install_dist(site: Path, dist: str, module: str, source: str) -> None:
    """A distribution as pip leaves it: a module plus a .dist-info declaring an entry point."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[corral]\n{dist} = {module}\n")


def test_a_third_party_backend_is_discovered_without_touching_core(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_dist(
        tmp_path,
        "npu",
        "corral_npu_backend",
        """
        from corral.hookspecs import Probe, hookimpl

        class Npu:
            name, priority, description = "npu", 5, "an imaginary accelerator"
            def probe(self):
                return Probe(available=False, reason="no NPU in this machine")
            def load(self, spec):
                raise NotImplementedError

        @hookimpl
        def corral_register_backends(register):
            register(Npu())
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = Plugins()
    assert "npu" in plugins.names()
    assert plugins.get("npu").probe().reason == "no NPU in this machine"
    sys.modules.pop("corral_npu_backend", None)


def test_a_broken_plugin_is_recorded_and_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_dist(tmp_path, "broken", "corral_broken_backend", "raise ImportError('libfoo.so missing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CORRAL_STRICT_PLUGINS", raising=False)
    plugins = Plugins()
    assert "cpu" in plugins.names()
    assert [(f.plugin, "libfoo.so missing" in f.reason) for f in plugins.failures] == [("broken", True)]
    monkeypatch.setenv("CORRAL_STRICT_PLUGINS", "1")
    with pytest.raises(ImportError, match="libfoo.so missing"):
        Plugins()


def test_a_probe_that_raises_is_unavailable_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Exploding(FakeBackend):
        def probe(self):  # type: ignore[override]
            raise RuntimeError("driver exploded")

    monkeypatch.delenv("CORRAL_STRICT_PLUGINS", raising=False)
    plugins = Plugins()
    plugins.register(FakePlugin(Exploding()), name="exploding")
    probe = plugins.get("fake").probe()
    assert not probe.available and "driver exploded" in probe.reason
    assert plugins.select().name == "cpu"


def test_a_misspelled_hook_is_an_error() -> None:
    class Misspelled:
        @hookimpl
        def corral_register_backend(self, register):  # type: ignore[no-untyped-def]
            pass

    with pytest.raises(pluggy.PluginValidationError, match="corral_register_backend"):
        Plugins(load_entry_points=False, modules=[Misspelled()])  # type: ignore[list-item]
