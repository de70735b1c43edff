"""The per-IPC pipeline of ``autoselmatch tune``: beta stage, alpha stage, final set.

For each IPC, in ascending order:

1. **beta** (study ``{prefix}-ipc{N}-beta``): the search strategy walks the
   beta grid (cut to feasible window starts, and to at most the previous
   IPC's optimum when the prior applies); each trial is scored by the
   objectives' ``beta`` callable (few-epoch training on the window).
2. **alpha** (study ``{prefix}-ipc{N}-alpha``): beta fixed at stage 1's best;
   each trial distils with one alpha and reports quick validation
   accuracies so the pruner can stop it.
3. **final**: the objectives' ``finish`` continues the best trial to the full
   budget, evaluates it on the test split and saves it; what it returns goes
   into the alpha study's user attrs.

What is evaluated comes from an :class:`Objectives` object built by a
factory from the config; :class:`~._objectives.SelMatchObjectives` is the
real one, tests inject synthetic ones. A rerun of the same command resumes
every study where it stopped.

    result = tune(load_preset("digits"), [10])
    result.ipcs[0].alpha.best_point, result.ipcs[0].final["test_accuracy"]
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import optuna
from optuna.trial import FrozenTrial

from ..config import RunConfig, to_dict
from ..errors import AutoSelMatchError, DataError, InvalidArgument, TrainingDiverged
from ..fileio import file_lock, stable_hash
from ..runtime import LOG
from ..storage import (
    StorageSpec,
    default_artifacts_dir,
    default_storage_url,
    open_storage,
    parse_storage,
    safe_name,
)
from ._controller import Objective, SearchController, StageOutcome
from ._pruners import build_pruner
from ._search import SEARCHES, SearchStrategy, check_grid
from ._storage import check_settings, open_study

STAGES = ("beta", "alpha")
#: Exceptions that fail one trial but let the study go on (divergence, out of memory).
TRIAL_ERRORS: tuple[type[Exception], ...] = (TrainingDiverged, RuntimeError)
_EPS = 1e-9


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
               study: optuna.Study) -> dict[str, Any]:
        """Make and evaluate the final set from the best alpha ``trial`` of ``study``; JSON-able
        facts for the study's user attrs (``result_path``, ``test_accuracy``, ...)."""


ObjectivesFactory = Callable[[RunConfig], Objectives]


@dataclass(frozen=True)
class IpcResult:
    """What tuning one IPC produced.

    Attributes:
        ipc: Images per class.
        beta: Outcome of stage 1.
        alpha: Outcome of stage 2 (``None`` if stage 1 did not finish).
        final: What ``finish`` returned (``None`` if stage 2 did not finish).
        prior: ``{"ipc", "alpha", "beta"}`` of the IPC whose optima bounded the grids, or ``None``.
    """

    ipc: int
    beta: StageOutcome
    alpha: StageOutcome | None
    final: dict[str, Any] | None
    prior: dict[str, Any] | None

    @property
    def complete(self) -> bool:
        return self.final is not None


@dataclass(frozen=True)
class TuneResult:
    """Every IPC's result, and where the studies are."""

    storage: str
    artifacts: str
    ipcs: list[IpcResult]

    @property
    def complete(self) -> bool:
        return all(r.complete for r in self.ipcs) and len(self.ipcs) > 0

    def to_dict(self) -> dict[str, Any]:
        return {"storage": self.storage, "artifacts": self.artifacts, "complete": self.complete,
                "ipcs": [dataclasses.asdict(r) for r in self.ipcs]}


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


def trial_iterations(cfg: RunConfig) -> int:
    """Distillation iterations of one alpha trial under ``cfg.tune.budget``."""
    full = cfg.distill.iterations
    if cfg.tune.budget == "paper" or cfg.tune.trial_iterations is None:
        return full
    return min(cfg.tune.trial_iterations, full)


def stage_settings(cfg: RunConfig, stage: str, ipc: int) -> dict[str, Any]:
    """Every setting that shapes a trial's value in ``stage`` (stored in the study; changes are refused)."""
    data = {k: v for k, v in to_dict(cfg.data).items() if k not in ("root", "download")}
    # runs and stack_runs shape the final report only: trials train tune.beta_seeds / tune.alpha_seeds
    # networks, and stacking them changes no network's training
    evaluate = {k: v for k, v in to_dict(cfg.evaluate).items() if k not in ("runs", "stack_runs")}
    common = {"stage": stage, "ipc": ipc, "seed": cfg.seed, "data": data, "scores": to_dict(cfg.scores),
              "evaluate": evaluate}
    if stage == "beta":
        return {**common, "beta_seeds": cfg.tune.beta_seeds}
    distill = {**to_dict(cfg.distill), "iterations": trial_iterations(cfg)}
    return {**common, "experts": to_dict(cfg.experts), "distill": distill, "alpha_seeds": cfg.tune.alpha_seeds}


def default_settings(stage: str, ipc: int) -> dict[str, Any]:
    """:func:`stage_settings` of the built-in defaults: what a setting an older study lacks stood for."""
    return stage_settings(RunConfig(), stage, ipc)


def study_name(prefix: str, ipc: int, stage: str) -> str:
    return f"{prefix}-ipc{ipc}-{stage}"


def parse_ipcs(text: str | Sequence[int]) -> list[int]:
    """``"25,50"`` (or a list) -> ascending distinct positive ints; junk raises :class:`InvalidArgument`."""
    items = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    if not items or any(item == "" for item in items):
        raise InvalidArgument(f"--ipc must be a comma-separated list of positive integers such as 10 or 25,50, got {text!r}")
    ipcs = []
    for item in items:
        if isinstance(item, float) and not item.is_integer():
            raise InvalidArgument(f"--ipc values must be integers, got {item!r}")
        try:
            value = int(item)
        except (TypeError, ValueError):
            raise InvalidArgument(f"--ipc must be a comma-separated list of positive integers, got {item!r} in {text!r}") from None
        if value < 1:
            raise InvalidArgument(f"--ipc values must be >= 1, got {value}")
        ipcs.append(value)
    return sorted(set(ipcs))


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Checked inputs of one tune run (everything a worker process needs, picklable)."""

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


def tune(
    cfg: RunConfig,
    ipcs: Sequence[int] | str,
    *,
    storage: str | None = None,
    artifacts: str | os.PathLike | None = None,
    study_prefix: str | None = None,
    new_study: bool = False,
    force: bool = False,
    workers: int = 1,
    timeout: float | None = None,
    objectives: ObjectivesFactory | None = None,
) -> TuneResult:
    """Tune alpha and beta for each IPC and make the final sets.

    Args:
        cfg: Run settings (``cfg.tune`` holds grids, strategy, pruner, budgets).
        ipcs: Images per class to tune, e.g. ``[25, 50]`` or ``"25,50"``; run in ascending order.
        storage: Optuna storage URL (default ``sqlite:///studies/{dataset}.db``).
        artifacts: Artifact folder (default: ``{storage stem}-artifacts`` beside a file storage).
        study_prefix: Study names are ``{prefix}-ipc{N}-{stage}`` (default: the dataset name).
        new_study: Delete existing studies of these names (and their checkpoints) first.
        force: Continue studies made with other settings.
        workers: Processes per stage (1 + workers - 1 spawned); needs a journal or server storage.
        timeout: Seconds after which no new trial starts; the run stops with resumable studies.
        objectives: Factory ``cfg -> Objectives`` (default: the real SelMatch objectives).
    """
    plan = _check(cfg, ipcs, storage=storage, artifacts=artifacts, study_prefix=study_prefix, new_study=new_study,
                  force=force, workers=workers, timeout=timeout, objectives=objectives)
    opened = open_storage(plan.spec, heartbeat_interval=plan.cfg.tune.heartbeat_interval,
                          grace_period=plan.cfg.tune.grace_period)
    _preflight(plan, opened)
    objs = plan.factory(plan.cfg)
    for ipc in plan.ipcs:
        _feasible_betas(plan.cfg, objs, ipc)  # an infeasible IPC fails now, not after the smaller ones are tuned
    results: list[IpcResult] = []
    prior: dict[str, Any] | None = None
    for ipc in plan.ipcs:
        result = _tune_ipc(plan, opened, objs, ipc, prior)
        results.append(result)
        if not result.complete:
            break
        if plan.cfg.tune.prior:
            prior = {"ipc": ipc, "alpha": result.alpha.best_point, "beta": result.beta.best_point}
    return TuneResult(plan.spec.display(), str(plan.artifacts), results)


def _check(cfg: RunConfig, ipcs: Sequence[int] | str, *, storage: str | None, artifacts: str | os.PathLike | None,
           study_prefix: str | None, new_study: bool, force: bool, workers: int, timeout: float | None,
           objectives: ObjectivesFactory | None) -> _Plan:
    """Every argument check, before any work."""
    from ..scores import SCORES
    from ._objectives import SelMatchObjectives

    ipc_list = parse_ipcs(ipcs)
    SEARCHES.get(cfg.tune.search)
    SCORES.get(cfg.scores.name)
    build_pruner(cfg.tune.pruner, startup_trials=cfg.tune.pruner_startup_trials,
                 warmup_steps=cfg.tune.pruner_warmup_steps)
    check_grid("beta", cfg.tune.beta_grid)
    check_grid("alpha", cfg.tune.alpha_grid)
    if workers < 1:
        raise InvalidArgument(f"--workers must be >= 1, got {workers}")
    if timeout is not None and timeout <= 0:
        raise InvalidArgument(f"--timeout must be > 0 seconds, got {timeout}")
    if new_study and force:
        raise InvalidArgument("--new-study and --force exclude each other: replace the studies or continue them")
    spec = parse_storage(storage or default_storage_url(cfg.data.name))
    if workers > 1 and not spec.shareable:
        raise InvalidArgument(
            f"--workers {workers} needs a storage several processes can write: a journal file "
            f"(--storage journal:///studies/{safe_name(cfg.data.name)}.log) or a server database; "
            f"SQLite ({spec.display()}) is for one process")
    prefix = safe_name(study_prefix) if study_prefix else safe_name(cfg.data.name)
    art = Path(artifacts).expanduser() if artifacts is not None else default_artifacts_dir(spec, cfg.data.name)
    deadline = None if timeout is None else time.monotonic() + timeout
    return _Plan(cfg, ipc_list, spec, art, prefix, workers, deadline, new_study, force,
                 objectives or SelMatchObjectives)


def _preflight(plan: _Plan, storage: optuna.storages.BaseStorage) -> None:
    """Refuse studies made with other settings before anything is computed."""
    if plan.new_study:
        return
    for ipc in plan.ipcs:
        for stage in STAGES:
            check_settings(storage, study_name(plan.prefix, ipc, stage), stage_settings(plan.cfg, stage, ipc),
                           force=plan.force, defaults=default_settings(stage, ipc))


def _tune_ipc(plan: _Plan, storage: optuna.storages.BaseStorage, objs: Objectives, ipc: int,
              prior: dict[str, Any] | None) -> IpcResult:
    cfg = plan.cfg
    LOG.info("tuning ipc=%d%s", ipc, f" (grids bounded by ipc={prior['ipc']}'s optimum)" if prior else "")

    beta_grid = _feasible_betas(cfg, objs, ipc)
    if prior is not None:
        beta_grid = [b for b in beta_grid if b <= prior["beta"] + _EPS]  # holds the grid's smallest value
    beta_start = cfg.tune.beta_start if cfg.tune.beta_start is not None else (prior["beta"] if prior else None)
    beta_out = _run_stage(plan, storage, objs, ipc, "beta", beta_grid, beta_start, prior, fixed={})
    if beta_out.stopped == "timeout" or beta_out.best_point is None:
        _explain_stop(beta_out)
        return IpcResult(ipc, beta_out, None, None, prior)

    beta = beta_out.best_point
    alpha_grid = list(check_grid("alpha", cfg.tune.alpha_grid))
    if prior is not None:
        alpha_grid = [a for a in alpha_grid if a <= prior["alpha"] + _EPS]  # holds prior["alpha"] itself
    alpha_out = _run_stage(plan, storage, objs, ipc, "alpha", alpha_grid, cfg.tune.alpha_start, prior,
                           fixed={"beta": beta})
    if alpha_out.stopped == "timeout" or alpha_out.best_point is None:
        _explain_stop(alpha_out)
        return IpcResult(ipc, beta_out, alpha_out, None, prior)

    final = _finish(plan, storage, objs, ipc, beta, alpha_out)
    return IpcResult(ipc, beta_out, alpha_out, final, prior)


def _feasible_betas(cfg: RunConfig, objs: Objectives, ipc: int) -> list[float]:
    """The beta grid cut to window starts that keep ``ipc`` samples inside every class."""
    highest = objs.max_beta(ipc)
    grid = [b for b in check_grid("beta", cfg.tune.beta_grid) if b <= highest + _EPS]
    if not grid:
        raise InvalidArgument(f"no value of tune.beta_grid is a feasible window start at ipc={ipc} "
                              f"(the largest is {highest:.3f}); add smaller values")
    return grid


def _explain_stop(outcome: StageOutcome) -> None:
    if outcome.stopped == "timeout":
        LOG.warning("%s: time is up after %d trial(s) of this run; rerun the same command to resume",
                    outcome.study_name, outcome.ran)
    else:
        raise DataError(f"{outcome.study_name}: no trial finished (all failed or were pruned); "
                        f"see the study (autoselmatch studies) and the log")


# --------------------------------------------------------------------------------------------
# One stage, in one or several processes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StageJob:
    """One stage of one IPC: enough for any worker process to rebuild and run it."""

    plan: _Plan
    ipc: int
    stage: str
    strategy: SearchStrategy
    fixed: dict[str, float]
    trial_attrs: dict[str, Any]

    @property
    def name(self) -> str:
        return study_name(self.plan.prefix, self.ipc, self.stage)

    def context(self, cfg: RunConfig, study: optuna.Study) -> StageContext:
        return _context(self.plan, cfg, self.ipc, study)

    def max_trials(self) -> int | None:
        return self.plan.cfg.tune.beta_trials if self.stage == "beta" else self.plan.cfg.tune.alpha_trials

    def open(self, storage: optuna.storages.BaseStorage, *, new_study: bool = False) -> optuna.Study:
        tc = self.plan.cfg.tune
        pruner = build_pruner(tc.pruner, startup_trials=tc.pruner_startup_trials, warmup_steps=tc.pruner_warmup_steps)
        return open_study(storage, self.name, settings=stage_settings(self.plan.cfg, self.stage, self.ipc),
                          sampler=self.strategy.sampler(), pruner=pruner, new_study=new_study, force=self.plan.force,
                          defaults=default_settings(self.stage, self.ipc))

    def controller(self, study: optuna.Study, objective: Objective) -> SearchController:
        return SearchController(study, self.plan.spec, self.strategy, param=self.stage, objective=objective,
                                max_trials=self.max_trials(), deadline=self.plan.deadline,
                                max_failures=self.plan.cfg.tune.max_failures, catch=TRIAL_ERRORS,
                                trial_attrs=self.trial_attrs)


def _run_stage(plan: _Plan, storage: optuna.storages.BaseStorage, objs: Objectives, ipc: int, stage: str,
               grid: list[float], start: float | None, prior: dict[str, Any] | None,
               fixed: dict[str, float]) -> StageOutcome:
    cfg = plan.cfg
    strategy = SEARCHES.get(cfg.tune.search)(grid, start=start, patience=cfg.tune.patience, seed=cfg.seed)
    settings = stage_settings(cfg, stage, ipc)
    attrs = {"ipc": ipc, "fingerprint": stable_hash(settings), **fixed}
    if stage == "beta":
        attrs["alpha"] = 0.0  # stage 1 scores the selection-only window
    job = _StageJob(plan, ipc, stage, strategy, fixed, attrs)
    if plan.new_study:
        shutil.rmtree(plan.artifacts / "runs" / job.name, ignore_errors=True)
    study = job.open(storage, new_study=plan.new_study)
    _record_stage(study, job, prior)
    ctx = job.context(cfg, study)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    objective = objs.beta(ctx) if stage == "beta" else objs.alpha(ctx, fixed["beta"])
    LOG.info("%s: %s search over %s from %s", job.name, strategy.name, list(strategy.grid), strategy.start)
    controller = job.controller(study, objective)
    if plan.workers == 1:
        return controller.run()
    return _run_parallel(job, controller)


def _context(plan: _Plan, cfg: RunConfig, ipc: int, study: optuna.Study) -> StageContext:
    workdir = plan.artifacts / "runs" / study.study_name / study.user_attrs["uid"]
    return StageContext(cfg, ipc, study.study_name, workdir, plan.artifacts)


def _record_stage(study: optuna.Study, job: _StageJob, prior: dict[str, Any] | None) -> None:
    """Study attrs: what was searched and why (fixed values, prior), for the dashboard and the report."""
    stored_fixed = study.user_attrs.get("fixed")
    if stored_fixed is not None and stored_fixed != job.fixed and not job.plan.force:
        shown = ", ".join(f"{k}={stored_fixed.get(k)} in the study, {v} now" for k, v in job.fixed.items())
        raise InvalidArgument(f"study {job.name!r} was searched with other fixed values ({shown}); "
                              f"pass --new-study to replace it or --force to continue it")
    tc = job.plan.cfg.tune
    attrs = {
        "dataset": job.plan.cfg.data.name,
        "ipc": job.ipc,
        "stage": job.stage,
        "fixed": job.fixed,
        "search": {"strategy": job.strategy.name, "grid": list(job.strategy.grid), "start": job.strategy.start,
                   "patience": tc.patience, "pruner": tc.pruner, "budget": tc.budget},
        "prior": prior,
        "run_config": to_dict(job.plan.cfg),
    }
    stored = study.user_attrs
    for key, value in attrs.items():
        if key not in stored or stored[key] != value:  # each write is a storage transaction
            study.set_user_attr(key, value)


def _run_parallel(job: _StageJob, controller: SearchController) -> StageOutcome:
    """This process is worker 0; ``workers - 1`` spawned processes run the same search on the same study."""
    context = multiprocessing.get_context("spawn")
    levels = (LOG.getEffectiveLevel(), optuna.logging.get_verbosity())
    children = [context.Process(target=_worker_main, args=(job, rank, levels), name=f"tune-worker-{rank}")
                for rank in range(1, job.plan.workers)]
    for child in children:
        child.start()
    try:
        outcome = controller.run()
    except BaseException:
        _stop_children(children)
        raise
    for child in children:
        child.join()
        if child.exitcode != 0:
            LOG.warning("%s: worker %s exited with code %s", job.name, child.name, child.exitcode)
    return controller.outcome(outcome.ran, outcome.stopped)


def _stop_children(children: list[multiprocessing.process.BaseProcess]) -> None:
    """Let the workers stop (a Ctrl-C reaches them too; each marks its running trial failed),
    interrupt those still running, and make sure they are gone."""
    for child in children:
        child.join(timeout=10)
        if child.is_alive() and child.pid is not None:
            os.kill(child.pid, signal.SIGINT)
    for child in children:
        child.join(timeout=30)
        if child.is_alive():
            child.terminate()
            child.join()


def _worker_main(job: _StageJob, rank: int, levels: tuple[int, int]) -> None:
    """Entry point of a spawned worker: rebuild the objective, open the study, run the search.

    ``levels``: the parent's log level and Optuna verbosity.
    """
    from ..runtime import setup_logging

    setup_logging(0)
    LOG.setLevel(levels[0])
    optuna.logging.set_verbosity(levels[1])
    cfg = _worker_config(job.plan.cfg, rank)
    try:
        objs = job.plan.factory(cfg)
        storage = open_storage(job.plan.spec, heartbeat_interval=cfg.tune.heartbeat_interval,
                               grace_period=cfg.tune.grace_period)
        study = job.open(storage)
        ctx = job.context(cfg, study)
        objective = objs.beta(ctx) if job.stage == "beta" else objs.alpha(ctx, job.fixed["beta"])
        job.controller(study, objective).run()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except AutoSelMatchError as exc:
        LOG.error("worker %d: %s", rank, exc)
        raise SystemExit(exc.exit_code) from None


def _worker_config(cfg: RunConfig, rank: int) -> RunConfig:
    """Worker ``rank`` trains on GPU ``rank % count`` when the run uses CUDA and several GPUs exist."""
    import torch

    if not cfg.device.startswith(("cuda", "auto")) or not torch.cuda.is_available() or ":" in cfg.device:
        return cfg
    return dataclasses.replace(cfg, device=f"cuda:{rank % torch.cuda.device_count()}")


# --------------------------------------------------------------------------------------------
# Final set
# --------------------------------------------------------------------------------------------


def _finish(plan: _Plan, storage: optuna.storages.BaseStorage, objs: Objectives, ipc: int, beta: float,
            alpha_out: StageOutcome) -> dict[str, Any]:
    """Make, evaluate and record the final set, unless the study already holds it for this best trial.

    Workers that end the alpha stage together take turns on a lock in the
    study's folder: the first makes the set, the others wait and reuse it.
    """
    name = study_name(plan.prefix, ipc, "alpha")
    study = optuna.load_study(study_name=name, storage=storage)
    trial = study.trials[alpha_out.best_trial]
    key = stable_hash({"trial": trial.number, "beta": beta, "distill": to_dict(plan.cfg.distill),
                       "evaluate": to_dict(plan.cfg.evaluate)})  # what shapes the final set and its test score
    ctx = _context(plan, plan.cfg, ipc, study)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    with file_lock(ctx.workdir / ".final.lock"):
        done = study.user_attrs.get("final")  # read after the wait: another worker may have made it meanwhile
        if done is not None and done.get("key") == key:
            LOG.info("%s: final set already made (%s)", name, done.get("result_path"))
            return done
        alpha = alpha_out.best_point
        LOG.info("%s: final set from trial %d (alpha=%g, beta=%g)", name, trial.number, alpha, beta)
        facts = objs.finish(ctx, alpha=alpha, beta=beta, trial=trial, study=study)
        final = {**facts, "key": key, "ipc": ipc, "alpha": alpha, "beta": beta, "trial": trial.number}
        for attr, value in final.items():
            if attr != "key":
                study.set_user_attr(attr, value)
        study.set_user_attr("final", final)
    return final


__all__ = [
    "IpcResult",
    "Objectives",
    "ObjectivesFactory",
    "StageContext",
    "TuneResult",
    "parse_ipcs",
    "stage_settings",
    "study_name",
    "trial_iterations",
    "tune",
]
