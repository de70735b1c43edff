"""`autoselmatch studies` and `autoselmatch dashboard`."""

from __future__ import annotations

import click

from ._common import emit, output_option

storage_option = click.option(
    "--storage", default=None, metavar="URL",
    help="sqlite:///F.db, journal:///F.log (or F.log) or postgresql://... (default: the one storage under "
         "studies/, or sqlite:///studies/{dataset}.db with --dataset).")
dataset_option = click.option("--dataset", "-d", default=None, metavar="NAME",
                              help="Use the default storage of this dataset.")


@click.command()
@storage_option
@dataset_option
@output_option
def studies(storage: str | None, dataset: str | None, output: str) -> None:
    """List the studies in a storage: direction, trials by state, best value and parameters.

    \b
    Example:
      autoselmatch studies --storage sqlite:///studies/digits.db
    """
    from ..tune._studies import list_studies, resolve_storage_url

    rows = list_studies(resolve_storage_url(storage, dataset))
    if output == "json":
        emit({"studies": rows}, output)
        return
    if not rows:
        click.echo("no studies")
        return
    for row in rows:
        counts = ", ".join(f"{n} {state.lower()}" for state, n in row["trials"].items() if n)
        best = "-" if row["best_value"] is None else f"{row['best_value']:.4f} at " + ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["best_params"].items())
        line = f"{row['name']}  ({row['direction']}; {counts or 'no trials'})  best {best}"
        if row.get("test_accuracy") is not None:
            line += f"  test {100 * row['test_accuracy']:.2f} %"
        click.echo(line)


@click.command()
@storage_option
@dataset_option
@click.option("--artifacts", type=click.Path(file_okay=False), default=None,
              help="Artifact folder (default: {storage stem}-artifacts/ beside a file storage).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="Port to listen on.")
def dashboard(storage: str | None, dataset: str | None, artifacts: str | None, host: str, port: int) -> None:
    """Start optuna-dashboard for a storage, with trial artifacts (image grids, sets) wired.

    \b
    Example:
      autoselmatch dashboard --storage sqlite:///studies/digits.db --port 8080
    """
    from ..tune._studies import resolve_storage_url, serve_dashboard

    url = resolve_storage_url(storage, dataset)
    serve_dashboard(url, dataset=dataset, artifacts=artifacts, host=host, port=port,
                    announce=lambda text: click.echo(text, err=True))
