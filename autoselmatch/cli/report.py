"""`autoselmatch report`."""

import click

from ._common import not_available, print_config_and_exit, resolve_config, run_options


@click.command()
@run_options
@click.pass_context
def report(ctx: click.Context, print_config: bool, **options) -> None:
    """Write a self-contained HTML report of a dataset's studies (beta and alpha curves, pruning, results).

    Not available yet in this version.
    """
    cfg = resolve_config(ctx, **options)
    if print_config:
        print_config_and_exit(cfg)
    not_available("report", issue=8)
