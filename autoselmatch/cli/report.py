"""`autoselmatch report`."""

from __future__ import annotations

import click

from ._common import canonical_dataset, check_writable, emit, global_options, out_option, output_option


@click.command()
@click.option("--dataset", "-d", default="digits", show_default=True, metavar="NAME",
              help="Dataset whose studies are reported (the title, the default storage and study prefix).")
@click.option("--storage", default=None, metavar="URL",
              help="Study storage (default: sqlite:///studies/<dataset>.db).")
@click.option("--study-prefix", "prefix", default=None, metavar="NAME",
              help="Studies are named PREFIX-ipcN-beta / -alpha (default: the dataset name).")
@click.option("--artifacts", type=click.Path(file_okay=False), default=None,
              help="Artifact folder with the image grids (default: <storage stem>-artifacts).")
@out_option(file=True, metavar="FILE.html", name="out_file", help="Report to write",
            default_text="studies/<dataset>-report.html")
@output_option
@global_options
def report(dataset: str, storage: str | None, prefix: str | None, artifacts: str | None, out_file: str | None,
           output: str) -> None:
    """Write a self-contained HTML report of a dataset's studies (beta and alpha curves, pruning, results).

    One page, plotly.js embedded (opens offline): per IPC the beta curve, the
    alpha curve, the intermediate accuracies of every distillation trial with
    pruned ones visible, test accuracy vs baselines, the image grid and the
    settings; and the optimal alpha and beta against IPC.

    \b
    Examples:
      autoselmatch report --dataset digits --out digits-report.html
      autoselmatch report --storage journal:///studies/c10.log --dataset cifar10 -o c10.html
    """
    from ..report import build_report
    from ..storage import default_storage_url, safe_name

    dataset = canonical_dataset(dataset)
    out_file = out_file or f"studies/{safe_name(dataset)}-report.html"
    check_writable(out_file, "--out")
    summary = build_report(storage or default_storage_url(dataset), dataset, out_file, prefix=prefix,
                           artifacts=artifacts)
    emit(summary, output)
