"""Plugin manager: loads backends from the entry-point group ``corral``, tolerating broken ones."""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass, field
from types import ModuleType

import pluggy

from corral import hookspecs
from corral.errors import BackendUnavailable, CorralError
from corral.hookspecs import Backend, Probe

ENTRY_POINT_GROUP = "corral"
STRICT_ENV = "CORRAL_STRICT_PLUGINS"


@dataclass
class PluginFailure:
    plugin: str  # entry-point name or backend name
    reason: str


@dataclass
class BackendEntry:
    backend: Backend
    plugin: str  # where it came from
    _probe: Probe | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.backend.name

    def probe(self) -> Probe:
        """Probe once; a probe that raises is recorded as unavailable, never propagated."""
        if self._probe is None:
            try:
                self._probe = self.backend.probe()
            except Exception as exc:  # a broken plugin must not take Corral down
                if _strict():
                    raise
                self._probe = Probe(available=False, reason=f"probe failed: {type(exc).__name__}: {exc}")
        return self._probe


def _strict() -> bool:
    return os.environ.get(STRICT_ENV, "") not in ("", "0", "false", "no")


class Plugins:
    """The backends known to this process, in priority order."""

    def __init__(self, *, load_entry_points: bool = True, modules: list[ModuleType] | None = None) -> None:
        self.pm = pluggy.PluginManager("corral")
        self.pm.add_hookspecs(hookspecs.HookSpecs)
        self.failures: list[PluginFailure] = []
        if load_entry_points:
            self._load_entry_points()
        for module in modules or []:
            self.pm.register(module)
        # A misspelled hook implementation is an error, not silently never called.
        self.pm.check_pending()
        self.backends: list[BackendEntry] = self._collect()

    def _load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if self.pm.get_plugin(ep.name) is not None:
                continue  # the same distribution seen twice on sys.path
            try:
                self.pm.register(ep.load(), name=ep.name)
            except Exception as exc:
                if _strict():
                    raise
                self.failures.append(PluginFailure(ep.name, f"import failed: {type(exc).__name__}: {exc}"))

    def register(self, module: object, name: str | None = None) -> None:
        """Register a plugin object at run time (tests use this for fakes)."""
        self.pm.register(module, name=name)
        self.pm.check_pending()
        self.backends = self._collect()

    def unregister(self, module: object) -> None:
        self.pm.unregister(module)
        self.backends = self._collect()

    def _collect(self) -> list[BackendEntry]:
        entries: list[BackendEntry] = []
        for impl in self.pm.hook.corral_register_backends.get_hookimpls():
            plugin_name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
            found: list[Backend] = []
            try:
                impl.function(register=found.append)
            except Exception as exc:
                if _strict():
                    raise
                self.failures.append(PluginFailure(plugin_name, f"registration failed: {type(exc).__name__}: {exc}"))
                continue
            entries.extend(BackendEntry(b, plugin_name) for b in found)
        entries.sort(key=lambda e: -e.backend.priority)
        return entries

    def names(self) -> list[str]:
        return [e.name for e in self.backends]

    def get(self, name: str) -> BackendEntry:
        for entry in self.backends:
            if entry.name == name:
                return entry
        known = ", ".join(self.names()) or "none"
        raise BackendUnavailable(f"unknown backend '{name}' (known backends: {known})")

    def select(self, forced: str | None = None) -> BackendEntry:
        """The forced backend if given (an error if it is unavailable), else the best available."""
        if forced:
            entry = self.get(forced)
            probe = entry.probe()
            if not probe.available:
                raise BackendUnavailable(f"backend '{forced}' is unavailable: {probe.reason}")
            return entry
        for entry in self.backends:
            if entry.probe().available:
                return entry
        reasons = "; ".join(f"{e.name}: {e.probe().reason}" for e in self.backends) or "no backend plugins installed"
        raise CorralError(f"no backend is available ({reasons})")
