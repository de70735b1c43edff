"""`autoselmatch scores`: compute, load or show difficulty scores; sweep the window start beta."""

from __future__ import annotations

import math
from typing import Any

import click

from ._common import (check_writable, emit, format_accuracy, global_options, out_option, output_option, plural,
                      ready, resolve_config, run_options)

SHOWN_CLASSES = 10


def parse_betas(text: str) -> list[float]:
    """``START:STOP:STEP`` (STOP included) or a comma list ``0,0.2,0.5`` -> list of betas."""
    try:
        if ":" in text:
            start, stop, step = (float(part) for part in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = math.floor((stop - start) / step + 1e-9) + 1
            return [round(start + i * step, 10) for i in range(count)]
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected START:STOP:STEP (STOP >= START, STEP > 0) or a comma list, got {text!r}",
                                 param_hint="--sweep-beta") from None


@click.command()
@run_options
@click.option("--score", "-s", default=None, metavar="NAME",
              help="Difficulty score: cscore (CIFAR-10/100), el2n, or forgetting or learning-speed "
                   "(from the experts' training, trained if missing) (default: the preset's).")
@click.option("--scores-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Load scores from a .npz (keys scores[, labels]) or .npy file instead of downloading/computing.")
@click.option("--sweep-beta", default=None, metavar="START:STOP:STEP",
              help="Train on the window at each beta and print the beta -> accuracy curve (e.g. 0:0.9:0.1).")
@click.option("--ipc", type=click.IntRange(min=1), default=None, help="Images per class of the swept window.")
@click.option("--epochs", "-e", type=click.IntRange(min=1), default=None,
              help="Sweep: epochs per network on the window (default: --fraction of the evaluation budget).")
@click.option("--fraction", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
              help="Sweep: share of the evaluation budget per network (default: evaluate.quick_fraction).")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Sweep: networks trained per beta (default: tune.beta_seeds).")
@out_option(file=True, metavar="FILE.json", name="save", aliases=("--save",),
            help="Also write the result and its settings to this JSON file.")
@output_option
@global_options
@click.pass_context
def scores(ctx: click.Context, score: str | None, scores_file: str | None, sweep_beta: str | None, ipc: int | None,
           epochs: int | None, fraction: float | None, seeds: int | None, save: str | None, output: str,
           print_config: bool, **run: Any) -> None:
    """Compute, load or show difficulty scores (cscore, el2n, forgetting, learning-speed) and sweep beta.

    Scores are oriented higher = harder; EL2N is cached under CACHE_DIR/scores;
    forgetting and learning-speed come from the experts' training (the
    experts of these settings, trained first if missing); --scores-file (for
    example a published forgetting file) always wins. The summary shows them
    per class over the selectable pool. With
    --sweep-beta, networks are trained from scratch on the selection-only
    window (IPC per class, starting at beta) and scored on the validation
    split: the paper's Figure 3, without Optuna.

    \b
    Examples:
      autoselmatch scores --dataset digits --score el2n
      autoselmatch scores --dataset cifar100 --score cscore
      autoselmatch scores --dataset fashion-mnist --score forgetting
      autoselmatch scores --dataset fashion-mnist --sweep-beta 0:0.8:0.1 --ipc 60 --epochs 20 -o sweep.json
    """
    cfg = resolve_config(ctx, **run, overrides={"scores.name": score, "scores.file": scores_file,
                                                "tune.beta_seeds": seeds})
    ready(cfg, print_config)
    betas = parse_betas(sweep_beta) if sweep_beta is not None else None
    if betas is not None and ipc is None:
        raise click.UsageError("--sweep-beta needs --ipc")
    if betas is not None and cfg.data.val_fraction == 0:
        from ..errors import InvalidArgument

        raise InvalidArgument("data.val_fraction is 0, but --sweep-beta scores each beta on the validation split; "
                              "set it in (0, 0.5], e.g. --set data.val_fraction=0.1")
    if save is not None:
        check_writable(save, "--out")

    from ..config import to_dict
    from ..data import load_configured
    from ..fileio import save_json
    from ..runtime import resolve_device
    from ..scores import get_scores, summarize
    from ..selection import class_sizes, max_beta, sweep_beta as run_sweep

    device = resolve_device(cfg.device)
    ds = load_configured(cfg.data, device=device)
    values = get_scores(ds, cfg.scores, cache_dir=cfg.cache_path, seed=cfg.seed, device=device, run=cfg)
    result: dict[str, Any] = {
        "dataset": ds.name,
        "score": cfg.scores.name,
        "source": _source(cfg),
        "n_train": len(values),
        "n_pool": len(ds.train_index),
        "per_class": summarize(values, ds),
    }
    if betas is not None and ipc is not None:
        sweep_fraction = fraction if fraction is not None else cfg.evaluate.quick_fraction
        # the windows train like the beta stage's (tune.beta_augment: DSA by default, as in the paper's Figure 3)
        curve = run_sweep(ds, values, ipc=ipc, betas=betas, cfg=cfg.evaluate, fraction=sweep_fraction, epochs=epochs,
                          seeds=cfg.tune.beta_seeds, seed=cfg.seed, augment=cfg.tune.beta_augment)
        best = max(curve, key=lambda point: point[1])
        result["sweep"] = {
            "ipc": ipc,
            "max_beta": max_beta(ipc, class_sizes(ds.train_labels, ds.train_index)),
            "epochs": epochs,
            "fraction": None if epochs is not None else sweep_fraction,
            "seeds": cfg.tune.beta_seeds,
            "augment": cfg.tune.beta_augment,
            "curve": [{"beta": b, "mean": m, "std": s} for b, m, s in curve],
            "best_beta": best[0],
            "best_accuracy": best[1],
        }
    if save is not None:
        save_json({**result, "settings": to_dict(cfg)}, save)
    if output == "json":
        emit(result, output)
    else:
        _print_text(result)


def _source(cfg: Any) -> str:
    if cfg.scores.file is not None:
        return f"file {cfg.scores.file}"
    if cfg.scores.name == "cscore":
        return "published"
    if cfg.scores.name in ("forgetting", "learning-speed"):
        return f"from the experts' correctness records under {cfg.cache_path / 'experts'}"
    return f"computed, cached under {cfg.cache_path / 'scores'}"


def _print_text(result: dict[str, Any]) -> None:
    click.echo(f"{result['score']} scores of {result['dataset']} ({result['source']}): {result['n_train']} samples, "
               f"{result['n_pool']} in the selectable pool; higher = harder")
    click.echo(f"{'class':>5}  {'name':<14}{'n':>7}{'mean':>10}{'min':>10}{'max':>10}")
    rows = result["per_class"]
    for row in rows[:SHOWN_CLASSES]:
        if row["n"] == 0:
            click.echo(f"{row['class']:>5}  {row['name'][:13]:<14}{0:>7}{'-':>10}{'-':>10}{'-':>10}")
            continue
        click.echo(f"{row['class']:>5}  {row['name'][:13]:<14}{row['n']:>7}"
                   f"{row['mean']:>10.4f}{row['min']:>10.4f}{row['max']:>10.4f}")
    if len(rows) > SHOWN_CLASSES:
        click.echo(f"  ... {len(rows) - SHOWN_CLASSES} more classes (--output json lists them all)")
    sweep = result.get("sweep")
    if sweep is None:
        return
    budget = f"{sweep['epochs']} epochs" if sweep["epochs"] is not None else f"{sweep['fraction']:g} of the budget"
    click.echo(f"\nwindow sweep, ipc={sweep['ipc']} (beta <= {sweep['max_beta']:.4f}), {budget}, "
               f"{plural(sweep['seeds'], 'network')} per beta ({sweep['augment']} augmentation); validation accuracy:")
    for point in sweep["curve"]:
        bar = "#" * round(40 * point["mean"])
        click.echo(f"  beta={point['beta']:.3f}  {format_accuracy(point['mean'], point['std'] if sweep['seeds'] > 1 else None):>16}  {bar}")
    click.echo(f"best beta = {sweep['best_beta']:.3f} ({format_accuracy(sweep['best_accuracy'])})")
