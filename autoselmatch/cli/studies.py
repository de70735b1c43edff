"""`autoselmatch studies` and `autoselmatch dashboard`."""

from __future__ import annotations

import click

from ._common import emit, format_accuracy, global_options, output_option

storage_option = click.option(
    "--storage", default=None, metavar="URL",
    help="sqlite:///F.db, journal:///F.log (or F.log) or postgresql://... (default: the one storage under "
         "studies/, or sqlite:///studies/{dataset}.db with --dataset).")
def _registered_lower(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A registered dataset's name in any case -> its canonical (lower-case) name; other names as given."""
    if value is None or value.startswith("folder:"):
        return value
    from ..data import DATASETS

    return value.lower() if value in DATASETS else value


dataset_option = click.option("--dataset", "-d", default=None, metavar="NAME", callback=_registered_lower,
                              help="Use the default storage of this dataset (studies/<dataset>.db).")


@click.command()
@dataset_option
@storage_option
@output_option
@global_options
def studies(storage: str | None, dataset: str | None, output: str) -> None:
    """List the studies in a storage: direction, trials by state, best value and parameters.

    Per IPC the beta study (stage 1) comes before the alpha study (stage 2);
    tune's values are validation accuracies, the test accuracy is the final set's.

    \b
    Examples:
      autoselmatch studies --storage sqlite:///studies/digits.db
      autoselmatch studies --dataset digits --output json
    """
    from ..records import MTT, label, parse_study_name
    from ..tune._studies import list_studies, resolve_storage_url

    rows = sorted(list_studies(resolve_storage_url(storage, dataset)), key=_study_order)
    if output == "json":
        emit({"studies": rows}, output)
        return
    if not rows:
        click.echo("no studies")
        return
    for row in rows:
        ours = parse_study_name(row["name"]) is not None  # its values are accuracies
        counts = ", ".join(f"{n} {state.lower()}" for state, n in row["trials"].items() if n)
        value = row["best_value"]
        best = "-" if value is None else (format_accuracy(value) if ours else f"{value:.4f}") + " at " + ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["best_params"].items())
        line = f"{row['name']}  ({row['direction']}; {counts or 'no trials'})  best {best}"
        method = row.get("method", "mtt")
        for name, value in row.get("baselines", {}).items():  # the "mtt" baseline is the study's base method
            line += f"  baseline {method if name == MTT else name} {format_accuracy(value)}"
        if row.get("test_accuracy") is not None:
            chosen = f" ({label(row['chosen'], method)} chosen)" if row.get("chosen") else ""
            tests = ", ".join(f"{label(n, method)} {format_accuracy(v)}"
                              for n, v in row.get("baseline_tests", {}).items() if v is not None)
            line += f"  test {format_accuracy(row['test_accuracy'])}{chosen}"
            line += f"; baselines {tests}" if tests else ""
        click.echo(line)
        if row.get("summary"):
            click.echo(f"  {row['summary']}")


def _study_order(row: dict) -> tuple:
    """By prefix, then IPC, then stage in the order they run (beta, alpha); other names by name."""
    from ..records import STAGES, parse_study_name

    parsed = parse_study_name(row["name"])
    if parsed is None:
        return (row["name"], 0, 0)
    return (parsed.prefix, parsed.ipc, STAGES.index(parsed.stage))


@click.command()
@dataset_option
@storage_option
@click.option("--artifacts", type=click.Path(file_okay=False), default=None,
              help="Artifact folder (default: {storage stem}-artifacts/ beside a file storage).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="Port to listen on.")
@global_options
def dashboard(storage: str | None, dataset: str | None, artifacts: str | None, host: str, port: int) -> None:
    """Start optuna-dashboard for a storage, with trial artifacts (image grids, sets) wired.

    \b
    Examples:
      autoselmatch dashboard --storage sqlite:///studies/digits.db --port 8080
      autoselmatch dashboard --dataset digits
    """
    from ..tune._studies import resolve_storage_url, serve_dashboard

    url = resolve_storage_url(storage, dataset)
    check_port_free(host, port)
    serve_dashboard(url, dataset=dataset, artifacts=artifacts, host=host, port=port,
                    announce=lambda text: click.echo(text, err=True))


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another program listens on, naming a free one to use instead."""
    import os
    import socket

    from ..errors import InvalidArgument

    try:
        with socket.create_server((host, port)):
            return
    except socket.gaierror as exc:
        raise InvalidArgument(f"--host {host} is not an address of this machine ({exc.strerror})") from None
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
    try:
        with socket.create_server((host, 0)) as probe:
            hint = f"; try --port {probe.getsockname()[1]}"
    except OSError:
        hint = ""
    raise InvalidArgument(f"cannot listen on {host}:{port}: {reason}{hint}")
