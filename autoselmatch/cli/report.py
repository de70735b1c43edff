"""`autoselmatch report`."""

from __future__ import annotations

import click

from ._common import emit, output_option, print_config_and_exit, resolve_config, run_options


@click.command()
@run_options
@click.option("--storage", default=None, metavar="URL",
              help="Study storage (default: sqlite:///studies/<dataset>.db).")
@click.option("--study-prefix", "prefix", default=None, metavar="NAME",
              help="Studies are named PREFIX-ipcN-beta / -alpha (default: the dataset name).")
@click.option("--artifacts", type=click.Path(file_okay=False), default=None,
              help="Artifact folder with the image grids (default: <storage stem>-artifacts).")
@click.option("--out", "-o", "out_file", type=click.Path(dir_okay=False), default=None, metavar="FILE.html",
              help="Report to write (default: studies/<dataset>-report.html).")
@output_option
@click.pass_context
def report(ctx: click.Context, print_config: bool, storage: str | None, prefix: str | None, artifacts: str | None,
           out_file: str | None, output: str, **options) -> None:
    """Write a self-contained HTML report of a dataset's studies (beta and alpha curves, pruning, results).

    One page, plotly.js embedded (opens offline): per IPC the beta curve, the
    alpha curve, the intermediate accuracies of every distillation trial with
    pruned ones visible, test accuracy vs baselines, the image grid and the
    settings; and the optimal alpha and beta against IPC.

    \b
    Example:
      autoselmatch report --dataset digits --out digits-report.html
    """
    cfg = resolve_config(ctx, **options)
    if print_config:
        print_config_and_exit(cfg)
    from ..report import build_report
    from ..storage import default_storage_url, safe_name

    dataset = cfg.data.name
    summary = build_report(storage or default_storage_url(dataset), dataset,
                           out_file or f"studies/{safe_name(dataset)}-report.html", prefix=prefix,
                           artifacts=artifacts)
    emit(summary, output)
