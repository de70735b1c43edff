"""What every command shares: the context object, option decorators, config resolution,
the checks made before any work, and how results are printed.

Every command's options come in one order: the run options (``run_options``),
the command's own, ``-o/--out``, ``--output``, then the global options
(``global_options``: ``--device``, ``--seed``, ``-q``, ``-v``, also accepted
before the command name).
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from ..choices import MAX_SEED
from ..errors import InvalidArgument
from ..runtime import DEVICES

DEVICE_CHOICES = DEVICES  # what runtime.resolve_device accepts (without the :N of cuda:N)


@dataclass
class CliContext:
    """Global options, stored on the click context as ``obj``."""

    device: str = "auto"
    seed: int | None = None
    verbosity: int = 0


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def _set_global(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Store a global option given after the command name on the shared :class:`CliContext`."""
    if value is None or value is False or (param.name == "verbose" and value == 0):  # not given
        return
    from ..runtime import setup_logging

    obj = ctx.ensure_object(CliContext)
    if param.name == "quiet":
        obj.verbosity = -1
    elif param.name == "verbose":
        obj.verbosity = max(obj.verbosity, value) if obj.verbosity >= 0 else obj.verbosity
    else:
        setattr(obj, param.name, value)
    setup_logging(obj.verbosity)


DEVICE_HELP = "Where tensors live and networks train."
SEED_HELP = "Seed of the run, in [0, 2**63-1] (default: the preset's)."
QUIET_HELP = "Only warnings and errors; no progress bars."
VERBOSE_HELP = "More logging (-v debug)."


def global_options(func: Callable) -> Callable:
    """--device, --seed, -q/--quiet, -v/--verbose after the command name (as before it)."""
    decorators = [
        click.option("--device", type=click.Choice(DEVICE_CHOICES), default=None, expose_value=False,
                     callback=_set_global, help=DEVICE_HELP + " [default: auto]"),
        click.option("--seed", type=click.IntRange(0, MAX_SEED), default=None, expose_value=False,
                     callback=_set_global, help=SEED_HELP),
        click.option("--quiet", "-q", is_flag=True, default=False, expose_value=False, callback=_set_global,
                     help=QUIET_HELP),
        click.option("--verbose", "-v", count=True, expose_value=False, callback=_set_global, help=VERBOSE_HELP),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), func)


def run_options(func: Callable) -> Callable:
    """--dataset, --preset, --data-root, --download, --cache-dir, --set, --print-config."""
    decorators = [
        click.option("--dataset", "-d", default=None, metavar="NAME",
                     help="Dataset: digits, fashion-mnist, mnist, cifar10, cifar100, tinyimagenet, or folder:PATH "
                          "(any case).", callback=_check_dataset_option),
        click.option("--preset", default=None, metavar="NAME|FILE.toml",
                     help="Settings preset from configs/ (default: the one named after the dataset; "
                          "fashion-mnist for mnist; digits, small, for folder:PATH)."),
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


def out_option(*, file: bool, help: str, required: bool = False, default_text: str | None = None,
               metavar: str | None = None, name: str = "out", aliases: tuple[str, ...] = ()) -> Callable:
    """``-o/--out``: where a command writes its file (``file=True``) or folder."""
    return click.option("--out", "-o", *aliases, name, required=required, metavar=metavar,
                        type=click.Path(dir_okay=not file, file_okay=file),
                        help=help + (f" (default: {default_text})" if default_text else ""))


output_option = click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
                             help="How the result is printed on stdout (json for scripts); the file a command "
                                  "writes is -o/--out.")


def _check_dataset_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None or ctx.resilient_parsing:
        return value
    return canonical_dataset(value)


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


def resolve_config(ctx: click.Context, *, dataset: str | None, preset: str | None, data_root: str | None,
                   download: bool | None, cache_dir: str | None, assignments: tuple[str, ...],
                   overrides: dict[str, Any] | None = None):
    """Preset -> flags -> ``--set`` -> global options, as one :class:`RunConfig`.

    The preset is the one named after the dataset's canonical (lower-case) name
    unless ``--preset`` is given (see :func:`autoselmatch.config.preset_for_dataset`).
    """
    from ..config import apply_overrides, load_preset, parse_assignment, preset_for_dataset

    obj: CliContext = ctx.find_object(CliContext) or CliContext()
    if dataset is not None:
        dataset = canonical_dataset(dataset)
    cfg = load_preset(preset if preset is not None else preset_for_dataset(dataset))
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
    cfg = apply_overrides(cfg, values)
    name = canonical_dataset(cfg.data.name)  # a preset file or --set may name it in any case
    if name != cfg.data.name:
        cfg = apply_overrides(cfg, {"data.name": name})
    return cfg


def canonical_dataset(name: str) -> str:
    """A registered dataset's lower-case name; ``folder:PATH`` as given."""
    check_dataset_name(name)
    return name if name.startswith("folder:") else name.lower()


def check_dataset_name(name: str) -> None:
    """Fail early (exit 2) on an unknown dataset name, before any work starts."""
    from ..data import DATASETS, dataset_names

    if not name.startswith("folder:") and name not in DATASETS:
        raise InvalidArgument(f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}")
    if name == "folder:":
        raise InvalidArgument("dataset 'folder:' needs a path, e.g. folder:/data/pets")


def ready(cfg, print_config: bool) -> None:
    """``--print-config``: print the settings and exit; else check what must hold before any work:
    the device exists, the cache folder can be written."""
    if print_config:
        from ..config import format_config

        click.echo(format_config(cfg), nl=False)
        sys.exit(0)
    from ..runtime import resolve_device

    resolve_device(cfg.device)
    check_writable(cfg.cache_path, "--cache-dir", folder=True)


def check_finite(value: float | None, option: str) -> None:
    """Refuse ``nan`` and ``inf`` given to a float option (click's FLOAT takes them)."""
    if value is not None and not math.isfinite(value):
        raise InvalidArgument(f"{option} must be a finite number, got {value}")


def check_writable(path: str | os.PathLike, option: str, *, folder: bool = False) -> None:
    """Refuse, before any work, an output path that cannot be written; creates nothing.

    The path (a file, or a ``folder``) may not exist yet: its nearest existing
    ancestor must be a writable folder. An existing path must be of the right kind.
    """
    target = Path(path).expanduser()
    if target.exists():
        if folder and not target.is_dir():
            raise InvalidArgument(f"{option} {path} is a file; a folder is needed")
        if not folder and target.is_dir():
            raise InvalidArgument(f"{option} {path} is a folder; give a file path")
        if not os.access(target, os.W_OK):
            raise InvalidArgument(f"{option} {path} is not writable")
        return
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InvalidArgument(f"{option} {path} cannot be created: {parent} is a file, not a folder")
    import tempfile

    try:  # a real write (root passes os.access everywhere); an unnamed file, gone when closed
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise InvalidArgument(f"{option} {path} cannot be created: {parent} is not writable "
                              f"({exc.strerror or exc})") from None


# --------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------


def format_accuracy(mean: float, std: float | None = None, runs: int | None = None) -> str:
    """An accuracy in [0, 1] as people read it: ``93.25 %``, ``93.25 ± 0.40 % (5 runs)``, ``93.25 % (1 run)``.

    The ``±`` part appears only for two or more runs (a single run has no spread).
    """
    text = f"{100 * mean:.2f}"
    if std is not None and (runs is None or runs > 1):
        text += f" ± {100 * std:.2f}"
    text += " %"
    if runs is not None:
        text += f" ({plural(runs, 'run')})"
    return text


def plural(count: int, noun: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def emit(result: dict[str, Any], output: str) -> None:
    """Print a result for people (``text``) or scripts (``json``)."""
    if output == "json":
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))
    else:
        for key, value in result.items():
            click.echo(f"{key}: {value}")
