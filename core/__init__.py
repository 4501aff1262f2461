"""Corral: run open language models locally, over Ollama's and OpenAI's APIs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("corral")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

from .hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]
