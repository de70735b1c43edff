"""Pruners by name: which policy stops a trial whose intermediate accuracy falls behind.

Both stages report at steps (epochs for beta, distillation iterations for
alpha). A line search runs few trials, so the default lets the median pruner
act as soon as two trials have finished instead of Optuna's five.

    pruner = build_pruner("median", startup_trials=2, warmup_steps=0)
"""

from __future__ import annotations

from typing import Callable

import optuna

from ..errors import InvalidArgument
from ..registry import Registry

PrunerBuilder = Callable[[int, int], optuna.pruners.BasePruner]
PRUNERS: Registry[PrunerBuilder] = Registry("pruner")


@PRUNERS.register("median")
def _median(startup_trials: int, warmup_steps: int) -> optuna.pruners.BasePruner:
    """Stop a trial below the median of earlier trials at the same step."""
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_steps)


@PRUNERS.register("successive-halving")
def _successive_halving(startup_trials: int, warmup_steps: int) -> optuna.pruners.BasePruner:
    """Asynchronous successive halving (Li et al. 2020); rungs from the first trial's steps."""
    return optuna.pruners.SuccessiveHalvingPruner(min_resource="auto", reduction_factor=3)


@PRUNERS.register("hyperband")
def _hyperband(startup_trials: int, warmup_steps: int) -> optuna.pruners.BasePruner:
    """Hyperband (Li et al. 2018) over successive-halving brackets."""
    return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup_steps), reduction_factor=3)


@PRUNERS.register("none")
def _none(startup_trials: int, warmup_steps: int) -> optuna.pruners.BasePruner:
    """Never prune."""
    return optuna.pruners.NopPruner()


def build_pruner(name: str, *, startup_trials: int = 2, warmup_steps: int = 0) -> optuna.pruners.BasePruner:
    """The pruner registered as ``name``.

    Args:
        name: One of :data:`PRUNERS` (``median``, ``successive-halving``, ``hyperband``, ``none``).
        startup_trials: Finished trials before the median pruner may prune.
        warmup_steps: Steps of each trial that are never pruned (median, hyperband's minimum resource).
    """
    builder = PRUNERS.get(name)
    if startup_trials < 0:
        raise InvalidArgument(f"pruner startup trials must be >= 0, got {startup_trials}")
    if warmup_steps < 0:
        raise InvalidArgument(f"pruner warmup steps must be >= 0, got {warmup_steps}")
    return builder(startup_trials, warmup_steps)


__all__ = ["PRUNERS", "build_pruner"]
