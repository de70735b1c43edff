"""Pruners by name: which policy stops a trial whose intermediate accuracy falls behind.

Both stages report at steps (epochs for beta, distillation iterations for
alpha). A line search runs few trials, so the default lets the median pruner
act as soon as two of a trial's peers have finished instead of Optuna's five.

    pruner = build_pruner("median", startup_trials=2, warmup_steps=0)
"""

from __future__ import annotations

from typing import Any, Callable, Container

import optuna
from optuna.trial import FrozenTrial

from .. import records
from ..errors import InvalidArgument
from ..registry import Registry
from ._controller import coordinate

PrunerBuilder = Callable[[int, int], optuna.pruners.BasePruner]
PRUNERS: Registry[PrunerBuilder] = Registry("pruner")

_KNOBS = (records.BETA, records.ALPHA)


def peers(a: FrozenTrial, b: FrozenTrial) -> bool:
    """Whether ``a`` and ``b`` are grid trials of one line: neither is a baseline, they search the same
    knob, and the knob fixed on the line (a user attr: ``alpha`` 0 in the beta stage, stage 1's ``beta``
    in the alpha stage, the chosen ``alpha`` in the beta refinement) has the same value."""
    if a.user_attrs.get(records.BASELINE) is not None or b.user_attrs.get(records.BASELINE) is not None:
        return False
    if set(a.params) != set(b.params):
        return False
    return all(coordinate(a, knob) == coordinate(b, knob) for knob in _KNOBS if knob not in b.params)


class _PeerView:
    """``study`` as a pruner reads it, with ``get_trials`` narrowed to the peers of ``trial``."""

    def __init__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._study, self._trial = study, trial

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states: Container[Any] | None = None) -> list[FrozenTrial]:
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states) if peers(t, self._trial)]


class PeerMedianPruner(optuna.pruners.MedianPruner):
    """Optuna's median pruner, comparing a trial only with its peers (:func:`peers`).

    A stage's study also holds its baseline (random selection in the beta study, MTT in the alpha
    study), whose sets are of another kind and often score far above or below the grid early on,
    and the alpha study holds the beta refinement's line too. Compared with them, a window or a
    portion was pruned for being worse than a different method, and a line search treats a pruned
    point as the worst, so one such comparison could end a walk. A baseline is compared with nothing
    (it has no peers), so it always finishes.

    Args:
        n_startup_trials: Finished peers before it may prune.
        n_warmup_steps: Steps of each trial that are never pruned.
    """

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return super().prune(_PeerView(study, trial), trial)  # type: ignore[arg-type]


class PeerSuccessiveHalvingPruner(optuna.pruners.SuccessiveHalvingPruner):
    """Optuna's asynchronous successive halving, ranking a trial at each rung only among its peers
    (:func:`peers`), for the reasons of :class:`PeerMedianPruner`. With ``min_resource="auto"`` the first
    rung is estimated from the first finished peers' steps; a baseline is never pruned.
    """

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if trial.user_attrs.get(records.BASELINE) is not None:
            return False
        return super().prune(_PeerView(study, trial), trial)  # type: ignore[arg-type]


class PeerHyperbandPruner(optuna.pruners.HyperbandPruner):
    """Optuna's Hyperband, whose successive-halving brackets rank a trial only among its peers
    (:func:`peers`). A baseline is never pruned.

    Optuna's Hyperband hands each bracket a study of its own that reads the storage directly, so the
    peer view is put around that bracket study, through Hyperband's bracket helpers (Optuna 4-5).
    """

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if trial.user_attrs.get(records.BASELINE) is not None:
            return False
        view = _PeerView(study, trial)
        if not self._pruners:
            self._try_initialization(view)  # type: ignore[arg-type]  # brackets from the first finished peers
            if not self._pruners:
                return False
        bracket = self._get_bracket_id(study, trial)
        return self._pruners[bracket].prune(_PeerView(self._create_bracket_study(study, bracket), trial), trial)


@PRUNERS.register("median")
def _median(startup_trials: int, warmup_steps: int) -> optuna.pruners.BasePruner:
    """Stop a trial below the median of its finished peers at the same step (:class:`PeerMedianPruner`)."""
    return PeerMedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_steps)


@PRUNERS.register("successive-halving")
def _successive_halving(startup_trials: int, warmup_steps: int) -> optuna.pruners.BasePruner:
    """Asynchronous successive halving (Li et al. 2020) among peers; rungs from the first finished peers' steps."""
    return PeerSuccessiveHalvingPruner(min_resource="auto", reduction_factor=3)


@PRUNERS.register("hyperband")
def _hyperband(startup_trials: int, warmup_steps: int) -> optuna.pruners.BasePruner:
    """Hyperband (Li et al. 2018) over successive-halving brackets, among peers."""
    return PeerHyperbandPruner(min_resource=max(1, warmup_steps), reduction_factor=3)


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


__all__ = ["PRUNERS", "PeerHyperbandPruner", "PeerMedianPruner", "PeerSuccessiveHalvingPruner", "build_pruner",
           "peers"]
