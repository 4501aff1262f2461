"""Fixtures for the store and registry tests: a real registry (Debian's docker-registry) and a scriptable fake."""

from registry_fixture import fake_registry, registry

__all__ = ["fake_registry", "registry"]
