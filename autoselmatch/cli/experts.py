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
@click.option("--from-mtt", "from_mtt", type=click.Path(exists=True, file_okay=False), default=None, metavar="DIR",
              help="Import experts instead of training them: a folder of replay_buffer_<n>.pt files written by "
                   "MTT's buffer.py (or SelMatch, FTD, DATM), e.g. buffers/CIFAR100/ConvNetBN. They are filed "
                   "under these settings: import with the preset and --set options you distill with.")
@click.option("--norm", type=click.Choice(["batch", "instance", "none"]), default=None,
              help="With --from-mtt: the norm of the experts' ConvNet (default: from the folder name, "
                   "ConvNetBN = batch, ConvNet = instance).")
@output_option
@global_options
@click.pass_context
def experts(ctx: click.Context, num_experts: int | None, epochs: int | None, snapshot_every: int | None,
            augment: str | None, zca: bool | None, from_mtt: str | None, norm: str | None, output: str,
            print_config: bool, **run: object) -> None:
    """Train and cache expert trajectories on the real training split.

    Each expert stores its flat parameters after every epoch (or every
    --snapshot-every SGD steps) and, per epoch, which training samples its
    training forward passes got right (what `autoselmatch scores --score
    forgetting|learning-speed` reads).

    Experts already in the cache with the same settings are reused; an
    interrupted run resumes from the last finished epoch. Files live in
    CACHE_DIR/experts/<dataset>-<hash of the settings>/.

    --from-mtt DIR converts existing reference experts instead (one file at a
    time; the first --epochs epochs of each, all experts unless
    --num-experts): distill and tune with the same settings then use them
    without training. An interrupted import resumes.

    \b
    Examples:
      autoselmatch experts --dataset fashion-mnist --num-experts 5
      autoselmatch experts --dataset digits --set experts.epochs=8 --print-config
      autoselmatch experts --dataset fashion-mnist --snapshot-every 50
      autoselmatch experts --dataset cifar100 --from-mtt buffers/CIFAR100_NO_ZCA/ConvNetBN --epochs 50
    """
    cfg = resolve_config(ctx, **run, overrides={  # type: ignore[arg-type]
        "experts.num_experts": num_experts,
        "experts.epochs": epochs,
        "experts.snapshot_every": snapshot_every,
        "experts.augment": augment,
        "experts.zca": zca,
    })
    ready(cfg, print_config)
    if from_mtt is None and norm is not None:
        raise click.UsageError("--norm describes imported experts; it needs --from-mtt DIR")
    if from_mtt is not None and snapshot_every is not None:
        raise click.UsageError("--snapshot-every does not apply to --from-mtt: MTT buffers hold one row per epoch")

    from ..data import load_configured
    from ..experts import import_mtt_experts, train_experts

    ds = load_configured(cfg.data)
    if from_mtt is not None:
        store = import_mtt_experts(from_mtt, ds, cfg, num_experts=num_experts, norm=norm)
    else:
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
