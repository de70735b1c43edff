"""`autoselmatch export` and `autoselmatch export-study`."""

from __future__ import annotations

import click

from ..choices import EXPORT_FORMATS
from ._common import canonical_dataset, check_writable, emit, format_accuracy, global_options, out_option, output_option


@click.command()
@click.option("--dataset", "-d", default=None, metavar="NAME", help="With --ipc: the study <dataset>-ipc<N>-alpha.")
@click.option("--ipc", type=click.IntRange(min=1), default=None, help="Images per class (with --dataset).")
@click.option("--storage", default=None, metavar="URL",
              help="Study storage: sqlite:///F.db, journal:///F.log or postgresql://... "
                   "(default: sqlite:///studies/<dataset>.db).")
@click.option("--study", default=None, metavar="NAME",
              help="Alpha study to export from, e.g. digits-ipc10-alpha (beta studies hold no set).")
@click.option("--trial", type=click.IntRange(min=0), default=None, help="Trial number (default: the best trial).")
@click.option("--from", "from_file", type=click.Path(dir_okay=False), default=None, metavar="RESULT.pt",
              help="Export a result file written by distill/tune instead of a study's trial.")
@click.option("--artifacts", type=click.Path(file_okay=False), default=None,
              help="Artifact folder of the storage (default: <storage stem>-artifacts).")
@click.option("--format", "formats", default=",".join(EXPORT_FORMATS), show_default=True, metavar="LIST",
              help=f"Comma-separated formats: {', '.join(EXPORT_FORMATS)}.")
@click.option("--overwrite", is_flag=True, help="Replace an existing, non-empty export folder.")
@out_option(file=False, required=True, metavar="DIR", name="out_dir", help="Export folder to create.")
@output_option
@global_options
def export(storage: str | None, study: str | None, dataset: str | None, ipc: int | None, trial: int | None,
           from_file: str | None, artifacts: str | None, out_dir: str, formats: str, overwrite: bool,
           output: str) -> None:
    """Export the best (or a given) trial's distilled set as .pt/.npz, a PNG tree and a manifest.

    \b
    Examples:
      autoselmatch export --dataset digits --ipc 10 --out exports/digits-ipc10
      autoselmatch export --study digits-ipc10-alpha --trial 3 --out exports/t3 --format pt
      autoselmatch export --from studies/distill/digits/result.pt -o exports/run1

    Load it back with autoselmatch.load_distilled(DIR), which checks every file's sha256.
    """
    from ..errors import InvalidArgument
    from ..export import export_set, export_trial
    from ..records import ALPHA, BETA, parse_study_name, prefix_of, study_name
    from ..storage import default_storage_url, safe_name

    sources = [from_file is not None, study is not None, dataset is not None or ipc is not None]
    if sum(sources) != 1:
        raise click.UsageError("give exactly one of --from RESULT.pt, --study NAME, or --dataset X --ipc N")
    if (dataset is None) != (ipc is None):
        raise click.UsageError("--dataset and --ipc go together")
    if from_file is not None and (storage or trial is not None or artifacts):
        raise click.UsageError("--from exports a file; --storage, --trial and --artifacts apply to studies")
    parsed = parse_study_name(study) if study is not None else None
    if parsed is not None and parsed.stage == BETA:
        raise InvalidArgument(f"{study} is a beta study (the window search): its trials train networks and keep "
                              f"no set; export the alpha study, --study {study_name(parsed.prefix, parsed.ipc, ALPHA)}")
    check_writable(out_dir, "--out", folder=True)
    format_list = formats.split(",")
    if from_file is not None:
        manifest = export_set(from_file, out_dir, formats=format_list, overwrite=overwrite)
    else:
        if dataset is not None:
            dataset = canonical_dataset(dataset)
            study = study_name(safe_name(dataset), ipc, ALPHA)
        storage = storage or default_storage_url(dataset or prefix_of(study))
        manifest = export_trial(storage, study, out_dir, trial=trial, artifacts=artifacts, formats=format_list,
                                overwrite=overwrite)
    result = {key: manifest.get(key) for key in ("dataset", "ipc", "alpha", "beta", "score", "study", "trial",
                                                 "num_images", "formats")}
    result |= {key: manifest[key] for key in ("val_accuracy", "test_accuracy") if manifest.get(key) is not None}
    result["out"] = out_dir
    if output == "text":
        for key in ("val_accuracy", "test_accuracy"):
            if key in result:
                result[key] = _accuracy_text(result[key])
        result = {k: v for k, v in result.items() if v is not None}
    emit(result, output)


def _accuracy_text(value) -> str:
    """A stored accuracy: a number, or ``{"mean", "std", "accuracies"}`` over several runs."""
    if isinstance(value, dict):
        return format_accuracy(value["mean"], value.get("std"), len(value.get("accuracies") or []) or None)
    return format_accuracy(float(value))


@click.command("export-study")
@click.option("--storage", required=True, metavar="URL",
              help="Source storage: sqlite:///F.db, journal:///F.log (or F.log), postgresql://...")
@click.option("--study", "studies", multiple=True, metavar="NAME", help="Study to copy (repeatable; default: all).")
@click.option("--artifacts", type=click.Path(file_okay=False), default=None,
              help="Source artifact folder (default: <storage stem>-artifacts beside a file storage).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file and artifact folder.")
@out_option(file=True, required=True, metavar="FILE.db", name="out_file",
            help="SQLite file to create; artifacts go to <FILE stem>-artifacts/ beside it.")
@output_option
@global_options
def export_study(storage: str, out_file: str, studies: tuple[str, ...], artifacts: str | None, overwrite: bool,
                 output: str) -> None:
    """Copy studies from any Optuna storage into one self-contained SQLite file with their artifacts.

    \b
    Example:
      autoselmatch export-study --storage journal:///studies/cifar100.log --out cifar100.db
      optuna-dashboard sqlite:///cifar100.db --artifact-dir cifar100-artifacts
    """
    from ..export import export_study as copy_studies

    check_writable(out_file, "--out")
    summary = copy_studies(storage, out_file, studies=studies or None, artifacts=artifacts, overwrite=overwrite)
    summary["dashboard"] = f"optuna-dashboard sqlite:///{summary['out']} --artifact-dir {summary['artifact_dir']}"
    emit(summary, output)
