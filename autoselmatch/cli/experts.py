"""`autoselmatch experts`."""

import click

from ._common import not_available, run_options


@click.command()
@run_options
def experts(**_options) -> None:
    """Train and cache expert trajectories (flat parameters after every epoch) on the real training split.

    Not available yet in this version.
    """
    not_available("experts", issue=5)
