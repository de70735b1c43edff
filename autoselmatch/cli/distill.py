"""`autoselmatch distill`."""

import click

from ._common import not_available, run_options


@click.command()
@run_options
def distill(**_options) -> None:
    """Distil one synthetic set with SelMatch (selection init at beta, partial update of a fraction alpha).

    Not available yet in this version.
    """
    not_available("distill", issue=6)
