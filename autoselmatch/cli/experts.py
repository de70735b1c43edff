"""`autoselmatch experts`: train, finish or reuse cached expert trajectories."""

from __future__ import annotations

import click

from ._common import emit, output_option, print_config_and_exit, resolve_config, run_options


@click.command()
@run_options
@click.option("--num-experts", "-k", type=click.IntRange(min=1), default=None,
              help="Experts to train (default: the preset's experts.num_experts).")
@click.option("--epochs", "-e", type=click.IntRange(min=1), default=None,
              help="Epochs per expert (default: distill.max_start_epoch + distill.expert_epochs).")
@click.option("--augment", type=click.Choice(["none", "simple", "dsa"]), default=None,
              help="Augmentation while training experts (default: the preset's).")
@click.option("--zca/--no-zca", default=None, help="ZCA-whiten the images (fitted on the training split).")
@output_option
@click.pass_context
def experts(ctx: click.Context, num_experts: int | None, epochs: int | None, augment: str | None, zca: bool | None,
            output: str, print_config: bool, **run: object) -> None:
    """Train and cache expert trajectories (flat parameters after every epoch) on the real training split.

    Experts already in the cache with the same settings are reused; an
    interrupted run resumes from the last finished epoch. Files live in
    CACHE_DIR/experts/<dataset>-<hash of the settings>/.

    \b
    Example:
      autoselmatch experts --dataset fashion-mnist --num-experts 5
    """
    cfg = resolve_config(ctx, **run, overrides={  # type: ignore[arg-type]
        "experts.num_experts": num_experts,
        "experts.epochs": epochs,
        "experts.augment": augment,
        "experts.zca": zca,
    })
    if print_config:
        print_config_and_exit(cfg)

    from ..data import load_configured
    from ..experts import train_experts

    ds = load_configured(cfg.data)
    store = train_experts(ds, cfg)
    accuracies = store.test_accuracies
    emit({
        "directory": str(store.directory),
        "num_experts": store.num_experts,
        "num_epochs": store.num_epochs,
        "num_params": store.num_params,
        "test_accuracy": [round(a, 4) for a in accuracies],
        "mean_test_accuracy": round(sum(accuracies) / len(accuracies), 4),
    }, output)
