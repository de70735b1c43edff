"""``autoselmatch`` command line: a thin layer over the Python API.

Each command lives in its own module and imports the heavy parts (torch,
optuna) only when it runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import sys

import click

from .._version import __version__
from ..errors import AutoSelMatchError
from ._common import (DEVICE_CHOICES, DEVICE_HELP, MAX_SEED, QUIET_HELP, SEED_HELP, VERBOSE_HELP,
                      CliContext)

COMMANDS = {
    "tune": "tune",
    "experts": "experts",
    "scores": "scores",
    "distill": "distill",
    "evaluate": "evaluate",
    "export": "export",
    "export-study": "export",
    "report": "report",
    "dashboard": "studies",
    "studies": "studies",
    "bench": "bench",
}


class LazyGroup(click.Group):
    """Loads a command's module only when that command is listed or run; turns
    :class:`AutoSelMatchError` into one line on stderr and its exit code, and
    an ``OSError`` into one line and exit code 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        import importlib

        module = importlib.import_module(f".{COMMANDS[name]}", __name__)
        return getattr(module, name.replace("-", "_"))

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AutoSelMatchError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:  # a file system fault the checks could not foresee (disk full, a vanished folder)
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted; finished work is saved, rerun the same command to resume.", err=True)
            sys.exit(130)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="autoselmatch")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=None, help=SEED_HELP)
@click.option("--quiet", "-q", is_flag=True, help=QUIET_HELP)
@click.option("--verbose", "-v", count=True, help=VERBOSE_HELP)
@click.pass_context
def cli(ctx: click.Context, device: str, seed: int | None, quiet: bool, verbose: int) -> None:
    """autoselmatch: SelMatch dataset distillation with alpha/beta tuned by Optuna.

    The global options (--device, --seed, -q, -v) may also come after the
    command name.

    \b
    Typical use:
      autoselmatch tune --dataset digits --ipc 10
      autoselmatch tune --dataset cifar100 --ipc 100 --device cuda
      autoselmatch --seed 1 -q tune --dataset digits --ipc 10
    """
    from ..runtime import setup_logging

    ctx.obj = CliContext(device=device, seed=seed, verbosity=-1 if quiet else verbose)
    setup_logging(ctx.obj.verbosity)


def main() -> None:
    cli(prog_name="autoselmatch")


__all__ = ["cli", "main"]
