"""`autoselmatch export` and `autoselmatch export-study`."""

import click

from ._common import not_available


@click.command()
def export() -> None:
    """Export the best (or a given) trial's distilled set as .pt/.npz, a PNG tree and a manifest.

    Not available yet in this version.
    """
    not_available("export", issue=8)


@click.command("export-study")
def export_study() -> None:
    """Copy studies from any Optuna storage into one self-contained SQLite file with their artifacts.

    Not available yet in this version.
    """
    not_available("export-study", issue=8)
