"""`autoselmatch report`."""

import click

from ._common import not_available, run_options


@click.command()
@run_options
def report(**_options) -> None:
    """Write a self-contained HTML report of a dataset's studies (beta and alpha curves, pruning, results).

    Not available yet in this version.
    """
    not_available("report", issue=8)
