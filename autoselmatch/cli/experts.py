"""`autoselmatch experts`: train, finish or reuse cached expert trajectories."""

from __future__ import annotations

import click

from ..choices import EXPERT_AUGMENTATIONS
from ._common import emit, format_accuracy, global_options, output_option, ready, resolve_config, run_options


@click.command()
@run_options
@click.option("--num-experts", "-k", type=click.IntRange(min=1), default=None,
              help="Experts to train (default: the preset's experts.num_experts).")
@click.option("--epochs", "-e", type=click.IntRange(min=1), default=None,
              help="Epochs per expert (default: enough for distill.max_start_epoch + distill.expert_epochs snapshots).")
@click.option("--snapshot-every", type=click.IntRange(min=1), default=None, metavar="STEPS",
              help="SGD steps between stored parameter rows (default: one row per epoch). Then "
                   "distill.expert_epochs and distill.max_start_epoch count these snapshots.")
@click.option("--augment", type=click.Choice(EXPERT_AUGMENTATIONS), default=None,
              help="Augmentation while training experts (default: the preset's).")
@click.option("--zca/--no-zca", default=None, help="ZCA-whiten the images (fitted on the training split).")
@output_option
@global_options
@click.pass_context
def experts(ctx: click.Context, num_experts: int | None, epochs: int | None, snapshot_every: int | None,
            augment: str | None, zca: bool | None, output: str, print_config: bool, **run: object) -> None:
    """Train and cache expert trajectories on the real training split.

    Each expert stores its flat parameters after every epoch (or every
    --snapshot-every SGD steps) and, per epoch, which training samples its
    training forward passes got right (what `autoselmatch scores --score
    forgetting|learning-speed` reads).

    Experts already in the cache with the same settings are reused; an
    interrupted run resumes from the last finished epoch. Files live in
    CACHE_DIR/experts/<dataset>-<hash of the settings>/.

    \b
    Examples:
      autoselmatch experts --dataset fashion-mnist --num-experts 5
      autoselmatch experts --dataset digits --set experts.epochs=8 --print-config
      autoselmatch experts --dataset fashion-mnist --snapshot-every 50
    """
    cfg = resolve_config(ctx, **run, overrides={  # type: ignore[arg-type]
        "experts.num_experts": num_experts,
        "experts.epochs": epochs,
        "experts.snapshot_every": snapshot_every,
        "experts.augment": augment,
        "experts.zca": zca,
    })
    ready(cfg, print_config)

    from ..data import load_configured
    from ..experts import train_experts

    ds = load_configured(cfg.data)
    store = train_experts(ds, cfg)
    accuracies = [a for a in store.val_accuracies if a is not None]  # held out: validation, not test
    mean = sum(accuracies) / len(accuracies) if accuracies else None
    emit({
        "directory": str(store.directory),
        "num_experts": store.num_experts,
        "num_epochs": store.num_epochs,
        "snapshot_every": store.snapshot_every,
        "num_params": store.num_params,
        "validation_accuracy": [round(a, 4) for a in accuracies] if output == "json" else
                               ", ".join(format_accuracy(a) for a in accuracies) or "-",
        "mean_validation_accuracy": (None if mean is None else round(mean, 4)) if output == "json" else
                                    "-" if mean is None else format_accuracy(mean),
    }, output)
