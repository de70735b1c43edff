"""`autoselmatch evaluate`."""

import click

from ._common import not_available, run_options


@click.command()
@run_options
def evaluate(**_options) -> None:
    """Train fresh networks on a distilled set or subset and report accuracy (mean and std over runs).

    Not available yet in this version.
    """
    not_available("evaluate", issue=3)
