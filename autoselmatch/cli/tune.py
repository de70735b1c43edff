"""`autoselmatch tune`: the product's main job."""

from __future__ import annotations

import click

from ..choices import DISTILL_METHODS, TUNE_BUDGETS
from ._common import (check_finite, emit, format_accuracy, global_options, output_option, ready, resolve_config,
                      run_options)


@click.command()
@run_options
@click.option("--ipc", "ipcs", default=None, metavar="N[,N...]",
              help="Images per class to tune, e.g. 10 or 25,50,100 (tuned in ascending order).")
@click.option("--storage", default=None, metavar="URL",
              help="Optuna storage: sqlite:///F.db (one process), journal:///F.log or F.log (several "
                   "processes on one machine), postgresql://... (several machines). "
                   "Default: sqlite:///studies/{dataset}.db.")
@click.option("--artifacts", type=click.Path(file_okay=False), default=None,
              help="Folder of trial images, checkpoints and sets (default: {storage stem}-artifacts/).")
@click.option("--study-prefix", default=None, metavar="NAME",
              help="Studies are named PREFIX-ipcN-beta / -alpha (default: the dataset name).")
@click.option("--search", default=None, metavar="NAME",
              help="Search strategy of the alpha stage (and the beta refinement): line (default), grid or tpe.")
@click.option("--beta-search", default=None, metavar="NAME",
              help="Search strategy of the beta stage: grid (default: beta trials are cheap), line or tpe.")
@click.option("--pruner", default=None, metavar="NAME",
              help="Pruner: median (default), successive-halving, hyperband or none.")
@click.option("--patience", type=int, default=None, help="Drops the line search tolerates before it stops (default 1).")
@click.option("--score", default=None, metavar="NAME", help="Difficulty score: cscore, el2n, forgetting or learning-speed.")
@click.option("--method", type=click.Choice(DISTILL_METHODS), default=None,
              help="Base distillation method of the alpha trials (default: preset): mtt, dsa or sre2l.")
@click.option("--budget", default=None, metavar="|".join(TUNE_BUDGETS),
              help="quick: alpha trials distil tune.trial_iterations, the best is then finished; "
                   "paper: every trial distils the full budget.")
@click.option("--beta-trials", type=int, default=None, help="Most trials of the beta stage.")
@click.option("--alpha-trials", type=int, default=None, help="Most trials of the alpha stage.")
@click.option("--timeout", type=float, default=None, metavar="SECONDS",
              help="Start no trial after this many seconds; rerun the command to resume.")
@click.option("--z", "z", type=float, default=None,
              help="The line search moves only on an improvement beyond Z paired standard errors (default 1).")
@click.option("--max-seeds", type=int, default=None,
              help="Replicates the line search may give a point to settle a comparison inside the noise (default 1).")
@click.option("--no-prior", is_flag=True,
              help="Do not start a larger IPC's search at the smaller IPC's optima, nor bound it there.")
@click.option("--new-study", is_flag=True, help="Delete existing studies of these names (and checkpoints) first.")
@click.option("--force", is_flag=True, help="Continue studies that were made with other settings.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Processes per stage (one per GPU); needs a journal or server storage.")
@output_option
@global_options
@click.pass_context
def tune(ctx: click.Context, dataset, preset, data_root, download, cache_dir, assignments, print_config, ipcs,
         storage, artifacts, study_prefix, search, beta_search, pruner, patience, score, method, budget, beta_trials, alpha_trials,
         timeout, z, max_seeds, no_prior, new_study, force, workers, output) -> None:
    """Tune alpha and beta for one or more IPCs with Optuna and save the best distilled set.

    \b
    Per IPC: stage 1 searches the window start beta (short trainings on the
    selected window), stage 2 the distillation portion alpha (pruned
    distillations with beta fixed), then the best set is finished and
    evaluated on the test split. Rerunning the same command resumes.

    \b
    Examples:
      autoselmatch tune --dataset digits --ipc 10
      autoselmatch tune --dataset digits --ipc 10 --method dsa
      autoselmatch tune --dataset cifar100 --ipc 25,50 --device cuda
      autoselmatch tune --dataset cifar10 --ipc 50 --storage journal:///studies/c10.log --workers 2

    A file storage gets a lock file beside it (F.db.tune.lock, F.log.tune.lock):
    workers on one machine take turns on it to claim trials. It holds no data;
    it is safe to delete when no tune runs.
    """
    overrides = {
        "tune.search": search,
        "tune.beta_search": beta_search,
        "tune.pruner": pruner,
        "tune.patience": patience,
        "tune.budget": budget,
        "tune.beta_trials": beta_trials,
        "tune.alpha_trials": alpha_trials,
        "tune.z": z,
        "tune.max_seeds": max_seeds,
        "tune.prior": False if no_prior else None,
        "scores.name": score,
        "distill.method": method,
    }
    cfg = resolve_config(ctx, dataset=dataset, preset=preset, data_root=data_root, download=download,
                         cache_dir=cache_dir, assignments=assignments, overrides=overrides)
    check_finite(timeout, "--timeout")  # (> 0 is checked with the other tune arguments)
    ready(cfg, print_config)
    if ipcs is None:
        raise click.UsageError("Missing option '--ipc' (e.g. --ipc 10 or --ipc 25,50).")

    import optuna

    from ..records import SELMATCH, WINDOW, FinalRecord, label
    from ..tune import parse_ipcs, tune as run_tune

    check_tunable(cfg, parse_ipcs(ipcs))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    result = run_tune(cfg, ipcs, storage=storage, artifacts=artifacts, study_prefix=study_prefix,
                      new_study=new_study, force=force, workers=workers, timeout=timeout)
    if output == "json":
        emit(result.to_dict(), output)
        return
    for r in result.ipcs:
        line = f"ipc {r.ipc}: beta {_fmt(r.beta.best_point)}"
        if r.alpha is not None:
            line += f", alpha {_fmt(r.alpha.best_point)}"
        if r.final is not None:
            final = FinalRecord.from_dict(r.final)
            if final.chosen not in (None, SELMATCH):  # beta and alpha above are SelMatch's best point, not the set's
                line += f"; chosen set: {label(final.chosen, cfg.distill.method)}"
                line += f" at beta {final.beta:g}" if final.chosen == WINDOW else ""
            acc = final.test_accuracy
            runs = len(acc.get('accuracies') or []) or None
            line += f", test accuracy {format_accuracy(acc['mean'], acc['std'], runs)}"
            if final.evaluation and "steps" in final.evaluation:
                from ..evaluate import budget_text

                line += f", {budget_text(final.evaluation['steps'], final.evaluation.get('paper_share'))}"
            line += f", set {final.result_path}"
        click.echo(line)
        if r.final is not None and final.summary:
            click.echo(f"  {final.summary}")
    if not result.complete:
        click.echo("stopped before the end (timeout); rerun the same command to resume")
    click.echo(f"studies: {result.storage}   (autoselmatch dashboard --storage {result.storage})")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def check_tunable(cfg, ipcs: list[int]) -> None:
    """What would stop a tune after minutes of work, checked before any: the trials need a
    validation split, and the student's minibatch (distill.batch_syn) must fit in the set."""
    from ..errors import InvalidArgument

    if cfg.data.val_fraction == 0:
        raise InvalidArgument("data.val_fraction is 0, but tune scores every trial on the validation split; "
                              "set it in (0, 0.5], e.g. --set data.val_fraction=0.1")
    merge = cfg.distill.mode == "merge"
    if cfg.distill.method != "mtt" or (not merge and cfg.distill.batch_syn <= 2 * min(ipcs)):  # fits whatever the class count (>= 2)
        return
    from ..data import load_configured
    from .distill import check_batch_fits

    classes = load_configured(cfg.data).num_classes
    alpha = min((a for a in cfg.tune.alpha_grid if a > 0), default=0.0)  # merge: the fewest distilled rows
    for ipc in ipcs:
        check_batch_fits(cfg, classes, ipc=ipc, alpha=alpha if merge else 1.0)
