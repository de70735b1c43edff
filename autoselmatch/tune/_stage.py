"""The contract between the pipeline and the objectives: one stage of one IPC.

- :class:`StageContext`: what an objective knows about the study it runs in.
- :class:`Objectives`: what the pipeline evaluates (the real one is
  :class:`~._objectives.SelMatchObjectives`; tests inject synthetic ones),
  built per process by an :data:`ObjectivesFactory`.
- :func:`stage_settings`: every setting that shapes a trial's value, stored
  in the study so that a rerun with other settings is refused.
- :class:`TunePlan` and :class:`StageJob`: the checked inputs of a run and
  one stage of it, picklable, so that any worker process (the pipeline's or
  a spawned one, :mod:`._workers`) opens the same study and runs the same search.

    job = StageJob(plan, ipc=10, stage="beta", strategy=strategy, fixed={}, trial_attrs={...})
    study = job.open(storage)
    job.controller(study, objectives.beta(job.context(plan.cfg, study))).run()
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import optuna
from optuna.trial import FrozenTrial

from .. import records
from ..choices import MAX_SEED
from ..config import DistillConfig, ExpertConfig, RunConfig, to_dict
from ..distill import expert_settings, method_revision, method_settings
from ..errors import TrainingDiverged
from ..records import study_name
from ..storage import StorageSpec
from ._controller import BaselineObjective, Objective, SearchController
from ._pruners import build_pruner
from ._search import SearchStrategy
from ._storage import open_study

#: Exceptions that fail one trial but let the study go on (divergence, out of memory).
TRIAL_ERRORS: tuple[type[Exception], ...] = (TrainingDiverged, RuntimeError)


@dataclass(frozen=True)
class StageContext:
    """What an objective needs to know about the study it runs in.

    Attributes:
        cfg: The run's settings.
        ipc: Images per class.
        study_name: The study, e.g. ``digits-ipc10-alpha``.
        workdir: This study's folder for checkpoints and sets
            (``{artifacts}/runs/{study_name}/{study uid}``: a study made anew,
            e.g. in a fresh storage, never resumes another one's checkpoints).
        artifacts: The artifact folder (an ``optuna.artifacts.FileSystemArtifactStore`` root).
    """

    cfg: RunConfig
    ipc: int
    study_name: str
    workdir: Path
    artifacts: Path

    def artifact_store(self) -> optuna.artifacts.FileSystemArtifactStore:
        from optuna.artifacts import FileSystemArtifactStore

        return FileSystemArtifactStore(str(self.artifacts))


class Objectives(Protocol):
    """What the pipeline evaluates. Values are maximised (validation accuracy)."""

    def max_beta(self, ipc: int) -> float:
        """Largest feasible window start at ``ipc``."""

    def beta(self, ctx: StageContext) -> Objective:
        """``objective(beta, trial) -> score`` of stage 1."""

    def alpha(self, ctx: StageContext, beta: float) -> Objective:
        """``objective(alpha, trial) -> score`` of stage 2, beta fixed."""

    def finish(self, ctx: StageContext, *, alpha: float, beta: float, trial: FrozenTrial,
               validate: bool = False) -> dict[str, Any]:
        """Make and evaluate the final set from the best alpha ``trial``; JSON-able facts for the
        study's :class:`~autoselmatch.records.FinalRecord` (``result_path``, ``test_accuracy``, ...).
        ``validate`` (``tune.choose_on = final``): also ``final_val_accuracy``, the set trained as
        for the test and scored on the validation split, and optionally ``final_val_hits``, a (m,)
        tensor of how many of those networks were right on each validation image (not stored: the
        final choice's margin compares the candidates image by image with it)."""

    def baseline(self, ctx: StageContext, name: str) -> BaselineObjective:
        """``objective(trial) -> score`` of baseline ``name`` in its stage's study: ``random``
        (random selection, scored like a window in stage 1) or ``mtt`` (alpha 1 from a random
        real init, scored like an alpha trial in stage 2)."""

    def finish_baseline(self, ctx: StageContext, *, name: str, trial: FrozenTrial,
                        validate: bool = False) -> dict[str, Any]:
        """Make and evaluate the final set of candidate ``name`` from its ``trial``, like :meth:`finish`:
        a baseline (MTT continued to ``distill.iterations``, random selection as it is) or ``window``
        (stage 1's best window alone, from that beta trial); ``ctx`` is the alpha study's."""


ObjectivesFactory = Callable[[RunConfig], Objectives]


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


def trial_iterations(cfg: RunConfig) -> int:
    """Distillation iterations of one alpha trial under ``cfg.tune.budget``."""
    full = cfg.distill.iterations
    if cfg.tune.budget == "paper" or cfg.tune.trial_iterations is None:
        return full
    return min(cfg.tune.trial_iterations, full)


#: How a trial's seeds follow from ``seed`` (stored in the settings; see :func:`replicate_seeds`). Trials of
#: versions before replicates were all replicate 0 of this scheme, so older studies read the same value.
SEED_SCHEME = "paired"


def networks_per_trial(cfg: RunConfig, stage: str) -> int:
    """Networks one trial of ``stage`` trains for its value (``tune.beta_seeds`` / ``tune.alpha_seeds``)."""
    return cfg.tune.beta_seeds if stage == records.BETA else cfg.tune.alpha_seeds


def replicate_seeds(cfg: RunConfig, stage: str, replicate: int) -> dict[str, Any]:
    """The seeds of ``replicate`` of every grid point of ``stage`` (common random numbers).

    Network ``i`` of replicate ``r`` trains from ``seed + r * n + i`` (``n``: networks per trial), with
    the same initialisation, batch order and augmentation draws at every point; an alpha trial of
    replicate ``r`` also distils from ``seed + r * n``. Replicate 0 is what every trial used before
    replicates existed. Seeds wrap around past ``MAX_SEED`` (to 0), so every replicate's seed is valid.

    Returns:
        ``{"seed": s, "networks": [s, s + 1, ...]}``: the run seed of the replicate and its network seeds.
    """
    n = networks_per_trial(cfg, stage)
    first = (cfg.seed + replicate * n) % (MAX_SEED + 1)  # wraps around near the largest seed, as a seed must
    return {"seed": first, "networks": [(first + i) % (MAX_SEED + 1) for i in range(n)]}


def stage_settings(cfg: RunConfig, stage: str, ipc: int) -> dict[str, Any]:
    """Every setting that shapes a trial's value in ``stage`` (stored in the study; changes are refused).

    Of the ``distill`` and ``experts`` settings, those of the base method ``distill.method``
    (:func:`~autoselmatch.distill.method_settings`, :func:`~autoselmatch.distill.expert_settings`): an MTT
    study ignores the ``gm_*`` and ``sre2l_*`` settings, a DSA study MTT's expert segment and the experts'
    training, ...
    """
    data = {k: v for k, v in to_dict(cfg.data).items() if k not in ("root", "download")}
    # runs and stack_runs shape the final report only: trials train tune.beta_seeds / tune.alpha_seeds
    # networks, and stacking them changes no network's training
    evaluate = {k: v for k, v in to_dict(cfg.evaluate).items() if k not in ("runs", "stack_runs")}
    common = {"stage": stage, "ipc": ipc, "seed": cfg.seed, "seed_scheme": SEED_SCHEME, "data": data,
              "scores": to_dict(cfg.scores), "evaluate": evaluate, "baselines": cfg.tune.baselines}
    if stage == records.BETA:
        return {**common, "beta_seeds": cfg.tune.beta_seeds, "beta_augment": cfg.tune.beta_augment}
    distill = {**method_settings(cfg.distill), **method_revision(cfg.distill), "iterations": trial_iterations(cfg)}
    return {**common, "experts": expert_settings(cfg), "distill": distill, "alpha_seeds": cfg.tune.alpha_seeds,
            "alpha_fraction": cfg.tune.alpha_fraction, "alpha_augment": cfg.tune.alpha_augment}


#: What a setting that older studies lack stood for, where that differs from today's default: beta trials
#: trained on crop + flip before ``tune.beta_augment`` existed (so such a study is refused under ``dsa``).
LEGACY_SETTINGS: dict[str, dict[str, Any]] = {records.BETA: {"beta_augment": "simple"}, records.ALPHA: {}}


def default_settings(stage: str, ipc: int) -> dict[str, Any]:
    """:func:`stage_settings` of the built-in defaults: what a setting an older study lacks stood for.

    A setting added since the study was stored counts as unchanged only at this value; it is the
    built-in default, except in :data:`LEGACY_SETTINGS`. The alpha stage's defaults hold every
    ``distill`` and ``experts`` setting, those of every base method: a stored setting that today's
    settings leave out (another method's; older versions stored them all) is not a change
    (:func:`~._storage.settings_diff`).
    """
    defaults = {**stage_settings(RunConfig(), stage, ipc), **LEGACY_SETTINGS[stage]}
    if stage == records.ALPHA:
        defaults["distill"] = {**to_dict(DistillConfig()), **defaults["distill"]}
        defaults["experts"] = {**to_dict(ExpertConfig()), **defaults["experts"]}
    return defaults


# --------------------------------------------------------------------------------------------
# A run and one of its stages, as every worker process sees them
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TunePlan:
    """Checked inputs of one tune run (everything a worker process needs, picklable).

    Attributes:
        cfg: The run's settings.
        ipcs: Images per class, ascending.
        spec: The storage.
        artifacts: The artifact folder.
        prefix: Study prefix (see :func:`autoselmatch.records.study_name`).
        workers: Processes per stage.
        deadline: ``time.monotonic()`` after which no trial starts, or ``None``.
        new_study: Replace existing studies.
        force: Continue studies made with other settings.
        factory: Builds the objectives in each process.
    """

    cfg: RunConfig
    ipcs: list[int]
    spec: StorageSpec
    artifacts: Path
    prefix: str
    workers: int
    deadline: float | None
    new_study: bool
    force: bool
    factory: ObjectivesFactory


def stage_context(plan: TunePlan, cfg: RunConfig, ipc: int, study: optuna.Study) -> StageContext:
    """The context of ``study`` (its folder is named by the study's uid)."""
    workdir = plan.artifacts / "runs" / study.study_name / study.user_attrs[records.UID]
    return StageContext(cfg, ipc, study.study_name, workdir, plan.artifacts)


@dataclass(frozen=True)
class StageJob:
    """One search of one IPC: enough for any worker process to rebuild and run it.

    Attributes:
        plan: The run.
        ipc: Images per class.
        stage: ``"beta"``, ``"alpha"`` or ``"refine"`` (beta again, at the chosen alpha, with
            alpha-stage trials in the alpha study).
        strategy: The search over the stage's grid.
        fixed: Knobs fixed during the stage, the line it searches on (``{"beta": b}`` in stage 2,
            ``{"alpha": a}`` when refining).
        trial_attrs: User attrs set on every trial.
    """

    plan: TunePlan
    ipc: int
    stage: str
    strategy: SearchStrategy
    fixed: dict[str, float]
    trial_attrs: dict[str, Any]

    @property
    def study_stage(self) -> str:
        """The stage whose study holds this search's trials (the refinement's are alpha trials)."""
        return records.ALPHA if self.stage == records.REFINE else self.stage

    @property
    def param(self) -> str:
        """The knob the search walks."""
        return records.BETA if self.stage == records.REFINE else self.stage

    @property
    def name(self) -> str:
        return study_name(self.plan.prefix, self.ipc, self.study_stage)

    def context(self, cfg: RunConfig, study: optuna.Study) -> StageContext:
        return stage_context(self.plan, cfg, self.ipc, study)

    def objective(self, objs: Objectives, ctx: StageContext) -> Objective:
        """The stage's objective from ``objs``."""
        if self.stage == records.BETA:
            return objs.beta(ctx)
        if self.stage == records.ALPHA:
            return objs.alpha(ctx, self.fixed[records.BETA])
        alpha, at_beta = self.fixed[records.ALPHA], {}

        def refine(beta: float, trial: optuna.Trial) -> float:  # an alpha trial at (beta, the chosen alpha)
            trial.set_user_attr(records.BETA, beta)  # as every alpha trial carries its window start
            if beta not in at_beta:
                at_beta[beta] = objs.alpha(ctx, beta)
            return at_beta[beta](alpha, trial)

        return refine

    def baselines(self, objs: Objectives, ctx: StageContext) -> dict[str, BaselineObjective]:
        """The stage's baselines from ``objs`` (none with ``tune.baselines = false``, none when refining)."""
        if not self.plan.cfg.tune.baselines or self.stage == records.REFINE:
            return {}
        return {name: objs.baseline(ctx, name) for name in records.BASELINES[self.stage]}

    def max_trials(self) -> int | None:
        tc = self.plan.cfg.tune
        return {records.BETA: tc.beta_trials, records.ALPHA: tc.alpha_trials}.get(self.stage)

    def open(self, storage: optuna.storages.BaseStorage, *, new_study: bool = False) -> optuna.Study:
        tc = self.plan.cfg.tune
        pruner = build_pruner(tc.pruner, startup_trials=tc.pruner_startup_trials, warmup_steps=tc.pruner_warmup_steps)
        stage = self.study_stage
        return open_study(storage, self.name, settings=stage_settings(self.plan.cfg, stage, self.ipc),
                          sampler=self.strategy.sampler(), pruner=pruner, new_study=new_study, force=self.plan.force,
                          defaults=default_settings(stage, self.ipc))

    def controller(self, study: optuna.Study, objs: Objectives, ctx: StageContext) -> SearchController:
        """The search of this stage in ``study``, with the objective and baselines of ``objs``."""
        return SearchController(study, self.plan.spec, self.strategy, param=self.param,
                                objective=self.objective(objs, ctx), max_trials=self.max_trials(),
                                deadline=self.plan.deadline, max_failures=self.plan.cfg.tune.max_failures,
                                catch=TRIAL_ERRORS, trial_attrs=self.trial_attrs, line=self.fixed,
                                baselines=self.baselines(objs, ctx))


__all__ = [
    "Objectives",
    "ObjectivesFactory",
    "StageContext",
    "StageJob",
    "TunePlan",
    "SEED_SCHEME",
    "networks_per_trial",
    "replicate_seeds",
    "stage_settings",
    "study_name",
    "trial_iterations",
]
