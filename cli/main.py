"""The ``corral`` command line: a client of ``corral serve`` (started on demand), plus ``serve`` itself.

The commands live in ``commands``, ``model_commands`` and ``verify_command``, which register on the group in ``base``;
importing them here is what puts them on the command line.
"""

from __future__ import annotations

from corral.cli import commands as _commands  # noqa: F401  (registers run, list, ps, serve, …)
from corral.cli import model_commands as _model_commands  # noqa: F401  (registers create, show, pull, push)
from corral.cli import verify_command as _verify_command  # noqa: F401  (registers verify)
from corral.cli.base import cli

__all__ = ["cli", "main"]


def main() -> None:
    cli(prog_name="corral")


if __name__ == "__main__":
    main()
