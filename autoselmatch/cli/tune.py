"""`autoselmatch tune`."""

import click

from ._common import not_available, run_options


@click.command()
@run_options
def tune(**_options) -> None:
    """Tune alpha and beta for one or more IPCs with Optuna (beta stage, then pruned alpha stage) and save the best distilled set.

    Not available yet in this version.
    """
    not_available("tune", issue=7)
