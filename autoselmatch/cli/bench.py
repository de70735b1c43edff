"""`autoselmatch bench`: benchmarks; `bench reproduce` fills the paper's tables on any dataset.

    autoselmatch bench reproduce -d digits --ipc 5%,10% --alpha 0.5 --beta 0.2 --runs 2 --out bench-digits
    autoselmatch bench reproduce -d fashion-mnist --ipc 1%,5%,10% --storage sqlite:///studies/fashion-mnist.db
    autoselmatch bench combine runs/s0 runs/s1 runs/s2 --out runs/seeds
"""

from __future__ import annotations

from typing import Any

import click

from ..choices import REPRODUCE_METHODS
from ._common import check_writable, global_options, out_option, ready, resolve_config, run_options


@click.group()
def bench() -> None:
    """Benchmarks of the method (tables of the paper on your data)."""


@bench.command()
@run_options
@click.option("--ipc", default=None, metavar="LIST",
              help="IPCs (60,300) or shares of each class of the training split (1%,5%,10%) "
                   "(default: the preset's reproduce.ratios).")
@click.option("--methods", default=None, metavar="LIST",
              help=f"Methods of the main table: {', '.join(REPRODUCE_METHODS)} "
                   "(default: the preset's reproduce.methods, i.e. all).")
@click.option("--method", default=None, metavar="NAME",
              help="Base distillation method: mtt (default; the table of every method above), dsa or sre2l "
                   "(the paper's Table 7 / 8: the method's own baseline, select init, SelMatch per IPC, scored "
                   "by the method's protocol).")
@click.option("--models", default=None, metavar="LIST",
              help="Cross-architecture table (paper Table 2, cross_arch.md): also score every main-table set with "
                   "each of these evaluation networks, e.g. convnet,resnet18,vgg11 (registered models; the "
                   "evaluation model's name uses its options and cells, the others their builders' defaults).")
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True,
              help="Seeds (networks trained from scratch) per method and IPC.")
@click.option("--alpha", default=None, metavar="A[,A...]",
              help="Given alpha: one value, or one per IPC in --ipc order (default: from --storage, else tuned).")
@click.option("--beta", default=None, metavar="B[,B...]", help="Given beta, same rules as --alpha.")
@click.option("--storage", default=None, metavar="URL",
              help="Storage with finished tune studies {prefix}-ipc{N}-beta|alpha to read alpha and beta from "
                   "(read only). Without it and without --alpha/--beta, they are tuned into OUT/studies.db.")
@click.option("--study-prefix", default=None, metavar="P",
              help="Study name prefix (default: the dataset name for --storage, 'reproduce' for OUT/studies.db).")
@click.option("--scores-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Difficulty scores from a .npz (keys scores[, labels]) or .npy file (e.g. for folder:PATH data).")
@click.option("--ablation/--no-ablation", default=True, show_default=True,
              help="Also the ablation table (selection init x partial update x combined augmentation).")
@click.option("--coverage/--no-coverage", default=True, show_default=True,
              help="Also coverage of easy and hard test halves per set (coverage.md and coverage.html).")
@click.option("--extra", "extras", multiple=True, metavar="NAME=PATH",
              help="Also score a set made elsewhere as row NAME: a folder with images_best.pt and labels_best.pt "
                   "(MTT, FTD, DATM; hard or soft labels) at one of the run's IPCs (repeatable).")
@click.option("--only", default=None, metavar="CELL_ID", help="Recompute just this cell (ids are in OUT/cells/).")
@out_option(file=False, required=True, metavar="DIR",
            help="Output folder: cells/, sets/, table.md/.csv, results.json, ablation.md, coverage.md/.html.")
@global_options
@click.pass_context
def reproduce(ctx: click.Context, ipc: str | None, methods: str | None, method: str | None, models: str | None,
              runs: int, out: str,
              alpha: str | None,
              beta: str | None, storage: str | None, study_prefix: str | None, scores_file: str | None,
              ablation: bool, coverage: bool, extras: tuple[str, ...], only: str | None, print_config: bool,
              **run: Any) -> None:
    """Every method at the same IPCs, one evaluation protocol: the paper's Tables 1 and 3 and Figure 1.

    With --models, also the cross-architecture table (Table 2): every set of
    the main table scored with each listed network.

    Each number is a cell (one network, one seed, test split) saved under
    OUT/cells/ with the command that reruns it; a finished cell is never
    recomputed, so rerunning the same command resumes. Prints table.md;
    with -q only that (no progress or per-cell lines).

    \b
    Examples:
      autoselmatch bench reproduce -d digits --ipc 5%,10% --alpha 0.5 --beta 0.2 --out bench-digits
      autoselmatch bench reproduce -d fashion-mnist --ipc 1%,5%,10% --storage sqlite:///studies/fashion-mnist.db \\
          --out bench-fmnist
      autoselmatch bench reproduce -d digits --ipc 10% --alpha 0.5 --beta 0.2 --models convnet,resnet18,vgg11 \\
          --out bench-digits
      autoselmatch bench reproduce -d folder:~/pets --preset digits --scores-file pets-el2n.npy --ipc 10 --out pets
      autoselmatch bench reproduce -d cifar10 --ipc 10 --extra DATM=logged_files/CIFAR10/datm-ipc10 --out c10
      autoselmatch bench reproduce -d digits --ipc 5%,10% --alpha 0.5 --beta 0.2 --method sre2l --out bench-sre2l
    """
    from ..reproduce import (ReproducePlan, parse_base_method, parse_extras, parse_floats, parse_ipc_tokens,
                             parse_methods, parse_models, reproduce as run_reproduce)

    base = parse_base_method(method) if method is not None else None
    cfg = resolve_config(ctx, **run, overrides={"scores.file": scores_file, "distill.method": base})
    ready(cfg, print_config)
    from pathlib import Path

    import optuna

    check_writable(out, "--out", folder=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # as in `tune`: its own log says what each trial did
    plan = ReproducePlan(
        cfg=cfg,
        out=Path(out),
        ipcs=parse_ipc_tokens(ipc) if ipc is not None else (),
        methods=parse_methods(methods) if methods is not None else (),
        runs=runs,
        alphas=parse_floats(alpha, "--alpha") if alpha is not None else (),
        betas=parse_floats(beta, "--beta") if beta is not None else (),
        storage=storage,
        study_prefix=study_prefix,
        ablation=ablation,
        coverage=coverage,
        only=only,
        preset=run.get("preset"),
        extras=parse_extras(extras),
        models=parse_models(models) if models is not None else (),
    )
    result = run_reproduce(plan)
    click.echo(result.table_md, nl=False)
    if result.cross_arch_md:
        click.echo("\n" + result.cross_arch_md, nl=False)
    click.echo(f"\n{result.computed} cell(s) computed, {result.reused} reused; outputs in {result.out}/: "
               + ", ".join(sorted(result.files)))


@bench.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--against", default=None, metavar="METHOD",
              help="Method of the paired differences (default: selmatch when the runs have it, else their first).")
@out_option(file=False, required=True, metavar="DIR", help="Output folder: seeds.md and seeds.json.")
@global_options
def combine(folders: tuple[str, ...], against: str | None, out: str) -> None:
    """Combine `bench reproduce` runs that differ only in --seed: mean ± std across the seeds.

    One run's spread is its evaluation networks' alone: its seed fixes the split
    draw, the scores, the experts and the distillations. Rerun with other seeds
    (same settings, any --out) and combine: each seed's mean, then the mean ±
    std across seeds, SelMatch's alpha and beta per seed, each method's paired
    difference against --against, seed by seed, ± its standard error, and the
    ablation and coverage where the runs have them. Prints seeds.md.

    \b
    Example:
      for s in 0 1 2; do autoselmatch --seed $s bench reproduce -d digits --ipc 10% --alpha 0.5 --beta 0.2 \\
          --out runs/s$s; done
      autoselmatch bench combine runs/s0 runs/s1 runs/s2 --out runs/seeds
    """
    from pathlib import Path

    from ..reproduce import combine_seeds

    check_writable(out, "--out", folder=True)
    result = combine_seeds([Path(f) for f in folders], Path(out), against=against)
    click.echo(result.table_md, nl=False)
    click.echo(f"\noutputs in {result.out}/: " + ", ".join(sorted(result.files)))
