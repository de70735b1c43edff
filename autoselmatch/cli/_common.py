"""What every command shares: the context object, option decorators, config resolution."""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable

import click

from ..errors import AutoSelMatchError


@dataclass
class CliContext:
    """Global options, stored on the click context as ``obj``."""

    device: str = "auto"
    seed: int | None = None
    verbosity: int = 0


class NotAvailableYet(AutoSelMatchError):
    """A command whose capability has not been built yet."""

    exit_code = 3


def not_available(command: str, issue: int) -> None:
    raise NotAvailableYet(
        f"`autoselmatch {command}` is not available yet in this version (tracked in issue {issue})"
    )


def run_options(func: Callable) -> Callable:
    """--dataset, --preset, --data-root, --download, --cache-dir, --set, --print-config."""
    decorators = [
        click.option("--dataset", "-d", default=None, metavar="NAME",
                     help="Dataset: digits, fashion-mnist, mnist, cifar10, cifar100, tinyimagenet, or folder:PATH."),
        click.option("--preset", default=None, metavar="NAME|FILE.toml",
                     help="Settings preset from configs/ (default: the one named after the dataset)."),
        click.option("--data-root", type=click.Path(file_okay=False), default=None,
                     help="Where datasets are read from / downloaded to (default ~/.cache/autoselmatch/data)."),
        click.option("--download/--no-download", default=None, help="Download the dataset if it is missing."),
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     help="Cache for scores and experts (default ~/.cache/autoselmatch)."),
        click.option("--set", "assignments", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Override any preset value, e.g. --set distill.iterations=500 (repeatable)."),
        click.option("--print-config", is_flag=True, help="Print the resolved settings and exit."),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), func)


def resolve_config(ctx: click.Context, *, dataset: str | None, preset: str | None, data_root: str | None,
                   download: bool | None, cache_dir: str | None, assignments: tuple[str, ...],
                   overrides: dict[str, Any] | None = None):
    """Preset -> flags -> ``--set`` -> global options, as one :class:`RunConfig`."""
    from ..config import apply_overrides, list_presets, load_preset, parse_assignment

    obj: CliContext = ctx.find_object(CliContext) or CliContext()
    if dataset is not None:
        check_dataset_name(dataset)
    if preset is None:
        preset = dataset if dataset in list_presets() else ("cifar10" if dataset else "digits")
    cfg = load_preset(preset)
    values: dict[str, Any] = {
        "data.name": dataset,
        "data.root": data_root,
        "data.download": download,
        "cache_dir": cache_dir,
        "device": obj.device,
        "seed": obj.seed,
    }
    values.update(overrides or {})
    values.update(dict(parse_assignment(a) for a in assignments))
    return apply_overrides(cfg, values)


def check_dataset_name(name: str) -> None:
    """Fail early (exit 2) on an unknown dataset name, before any work starts."""
    from ..data import DATASETS, dataset_names
    from ..errors import InvalidArgument

    if not name.startswith("folder:") and name not in DATASETS:
        raise InvalidArgument(f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}")
    if name == "folder:":
        raise InvalidArgument("dataset 'folder:' needs a path, e.g. folder:/data/pets")


def print_config_and_exit(cfg) -> None:
    from ..config import format_config

    click.echo(format_config(cfg), nl=False)
    sys.exit(0)


def emit(result: dict[str, Any], output: str) -> None:
    """Print a result for people (``text``) or scripts (``json``)."""
    if output == "json":
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))
    else:
        for key, value in result.items():
            click.echo(f"{key}: {value}")


output_option = click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
                             help="Result format; json is for scripts.")
