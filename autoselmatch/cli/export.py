"""`autoselmatch export` and `autoselmatch export-study`."""

from __future__ import annotations

import click

from ._common import emit, output_option


@click.command()
@click.option("--storage", default=None, metavar="URL",
              help="Study storage: sqlite:///F.db, journal:///F.log or postgresql://... "
                   "(default: sqlite:///studies/<dataset>.db).")
@click.option("--study", default=None, metavar="NAME", help="Study to export from, e.g. digits-ipc10-alpha.")
@click.option("--dataset", "-d", default=None, metavar="NAME", help="With --ipc: the study <dataset>-ipc<N>-alpha.")
@click.option("--ipc", type=click.IntRange(min=1), default=None, help="Images per class (with --dataset).")
@click.option("--trial", type=click.IntRange(min=0), default=None, help="Trial number (default: the best trial).")
@click.option("--from", "from_file", type=click.Path(dir_okay=False), default=None, metavar="RESULT.pt",
              help="Export a result file written by distill/tune instead of a study's trial.")
@click.option("--artifacts", type=click.Path(file_okay=False), default=None,
              help="Artifact folder of the storage (default: <storage stem>-artifacts).")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False), help="Export folder.")
@click.option("--format", "formats", default="pt,npz,png", show_default=True, metavar="LIST",
              help="Comma-separated formats: pt, npz, png.")
@click.option("--overwrite", is_flag=True, help="Replace an existing, non-empty export folder.")
@output_option
def export(storage: str | None, study: str | None, dataset: str | None, ipc: int | None, trial: int | None,
           from_file: str | None, artifacts: str | None, out_dir: str, formats: str, overwrite: bool,
           output: str) -> None:
    """Export the best (or a given) trial's distilled set as .pt/.npz, a PNG tree and a manifest.

    \b
    Examples:
      autoselmatch export --dataset digits --ipc 10 --out exports/digits-ipc10
      autoselmatch export --study digits-ipc10-alpha --trial 3 --out exports/t3 --format pt
      autoselmatch export --from studies/distill/digits/result.pt --out exports/run1

    Load it back with autoselmatch.load_distilled(DIR), which checks every file's sha256.
    """
    from ..export import export_set, export_trial
    from ..storage import default_storage_url, safe_name
    from ._common import check_dataset_name

    sources = [from_file is not None, study is not None, dataset is not None or ipc is not None]
    if sum(sources) != 1:
        raise click.UsageError("give exactly one of --from RESULT.pt, --study NAME, or --dataset X --ipc N")
    if (dataset is None) != (ipc is None):
        raise click.UsageError("--dataset and --ipc go together")
    if from_file is not None and (storage or trial is not None or artifacts):
        raise click.UsageError("--from exports a file; --storage, --trial and --artifacts apply to studies")
    format_list = formats.split(",")
    if from_file is not None:
        manifest = export_set(from_file, out_dir, formats=format_list, overwrite=overwrite)
    else:
        if dataset is not None:
            check_dataset_name(dataset)
            study = f"{safe_name(dataset)}-ipc{ipc}-alpha"
        storage = storage or default_storage_url(dataset or study.split("-ipc")[0])
        manifest = export_trial(storage, study, out_dir, trial=trial, artifacts=artifacts, formats=format_list,
                                overwrite=overwrite)
    emit({key: manifest[key] for key in ("dataset", "ipc", "alpha", "beta", "score", "study", "trial",
                                         "num_images", "formats")} | {"out": out_dir}, output)


@click.command("export-study")
@click.option("--storage", required=True, metavar="URL",
              help="Source storage: sqlite:///F.db, journal:///F.log (or F.log), postgresql://...")
@click.option("--out", "-o", "out_file", required=True, type=click.Path(dir_okay=False), metavar="FILE.db",
              help="SQLite file to create; artifacts go to <FILE stem>-artifacts/ beside it.")
@click.option("--study", "studies", multiple=True, metavar="NAME", help="Study to copy (repeatable; default: all).")
@click.option("--artifacts", type=click.Path(file_okay=False), default=None,
              help="Source artifact folder (default: <storage stem>-artifacts beside a file storage).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file and artifact folder.")
@output_option
def export_study(storage: str, out_file: str, studies: tuple[str, ...], artifacts: str | None, overwrite: bool,
                 output: str) -> None:
    """Copy studies from any Optuna storage into one self-contained SQLite file with their artifacts.

    \b
    Example:
      autoselmatch export-study --storage journal:///studies/cifar100.log --out cifar100.db
      optuna-dashboard sqlite:///cifar100.db --artifact-dir cifar100-artifacts
    """
    from ..export import export_study as copy_studies

    summary = copy_studies(storage, out_file, studies=studies or None, artifacts=artifacts, overwrite=overwrite)
    summary["dashboard"] = f"optuna-dashboard sqlite:///{summary['out']} --artifact-dir {summary['artifact_dir']}"
    emit(summary, output)
