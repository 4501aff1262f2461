"""``corral verify [MODEL...]``: re-hash the store's blobs and say which models are damaged.

It reads the store on this machine directly (no server needed: a store is worth checking before a
server starts on it, after a disk problem); ``--repair`` takes the store's writer lock to move a
corrupt blob aside, so it is safe while a server runs.
"""

from __future__ import annotations

import click

from corral.cli.base import cli, friendly_errors
from corral.errors import CorralError


@cli.command()
@click.argument("models", nargs=-1)
@click.option(
    "--repair",
    is_flag=True,
    help="Move corrupt blobs aside (into <store>/corrupt) so that `corral pull` fetches them again.",
)
@friendly_errors
def verify(models: tuple[str, ...], repair: bool) -> None:
    """Check that MODELS (all by default) are whole: every blob present with its sha256."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from corral.config import Settings
    from corral.models.store import Store
    from corral.models.verify import planned_bytes, verify_store

    store = Store(Settings().models_dir)
    names = list(models) or None
    total = planned_bytes(store, names)
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("verifying sha256 digests"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # a log or a pipe gets the result lines alone
    )
    with bar:
        task = bar.add_task("verify", total=total)
        report = verify_store(store, names, repair=repair, advance=lambda n: bar.advance(task, n))

    for model in report.damaged:
        for damage in model.damage:
            click.echo(f"{model.name}: {damage.describe()}")
    for digest, where in report.moved.items():
        click.echo(f"moved the corrupt blob {digest} aside to {where}")
    summary = f"{len(report.models)} model(s), {report.blobs} blob(s), {report.bytes} bytes hashed"
    if report.ok:
        click.echo(f"all whole: {summary}")
        return
    damaged = ", ".join(m.name for m in report.damaged)
    then = "pull (or create) them again" if repair else "`corral verify --repair`, then pull (or create) them again"
    raise CorralError(f"{len(report.damaged)} of {len(report.models)} model(s) damaged ({damaged}): {then}")
