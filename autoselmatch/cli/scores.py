"""`autoselmatch scores`."""

import click

from ._common import not_available, run_options


@click.command()
@run_options
def scores(**_options) -> None:
    """Compute, load or show difficulty scores (cscore, forgetting, el2n) and sweep the selection window beta.

    Not available yet in this version.
    """
    not_available("scores", issue=4)
