"""`autoselmatch studies` and `autoselmatch dashboard`."""

import click

from ._common import not_available


@click.command()
def studies() -> None:
    """List the studies in a storage with their best values.

    Not available yet in this version.
    """
    not_available("studies", issue=7)


@click.command()
def dashboard() -> None:
    """Start optuna-dashboard on 127.0.0.1 for a storage, with trial artifacts wired.

    Not available yet in this version.
    """
    not_available("dashboard", issue=7)
