"""The per-IPC pipeline of ``autoselmatch tune``: beta stage, alpha stage, final set.

For each IPC, in ascending order:

1. **beta** (study ``{prefix}-ipc{N}-beta``): the search strategy walks the
   beta grid (cut to feasible window starts); with the prior, the line search
   starts at the previous IPC's optimum and steps past it only while the
   curve still rises there (grid and tpe searches are cut at it); each trial
   is scored by the objectives' ``beta`` callable (few-epoch training on the window).
2. **alpha** (study ``{prefix}-ipc{N}-alpha``): beta fixed at stage 1's best;
   each trial distils with one alpha and reports quick validation
   accuracies so the pruner can stop it.
2b. **refine** (``tune.refine_beta``; in the alpha study): the search walks the
   beta grid again from stage 1's beta, with alpha fixed at stage 2's best and
   alpha-stage trials, so that the chosen point is the best (beta, alpha) of
   both lines: stage 1 scores windows alone, and the best window start for a
   set that is partly distilled can lie elsewhere.
3. **final**: the best candidate on validation is chosen among the best alpha
   trial, stage 1's best window alone (selection only, alpha 0: the beta study's
   best trial) and the baselines (``tune.baselines``: random selection, a trial of the
   beta study, and MTT, a trial of the alpha study); the objectives'
   ``finish`` / ``finish_baseline`` continue it to the full budget, evaluate it on the
   test split and save it, and every other candidate's set is finished and evaluated the
   same way; it all goes into the alpha study as its :class:`~autoselmatch.records.FinalRecord`.

What is evaluated comes from an :class:`Objectives` object built by a
factory from the config; :class:`~._objectives.SelMatchObjectives` is the
real one, tests inject synthetic ones. A rerun of the same command resumes
every study where it stopped.

    result = tune(load_preset("digits"), [10])
    result.ipcs[0].alpha.best_point, result.ipcs[0].final["test_accuracy"]
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from .. import records
from ..config import RunConfig, key_dict, to_dict
from ..errors import DataError, InvalidArgument
from ..fileio import file_lock, save_json, stable_hash
from ..records import (
    ALPHA,
    BASELINES,
    BETA,
    CANDIDATES,
    MTT,
    REFINE,
    SELMATCH,
    STAGES,
    WINDOW,
    FinalRecord,
    label,
    study_name,
)
from ..runtime import LOG
from ..storage import default_artifacts_dir, default_storage_url, open_storage, parse_storage, safe_name
from ._controller import StageOutcome
from ._noise import PointStats, compare
from ._objectives import SelMatchObjectives
from ._pruners import build_pruner
from ._search import SEARCHES, LineSearch, SearchStrategy, check_grid
from ._stage import (
    Objectives,
    ObjectivesFactory,
    StageContext,
    StageJob,
    TunePlan,
    default_settings,
    replicate_seeds,
    stage_context,
    stage_settings,
)
from ._storage import check_settings
from ._workers import run_parallel

_EPS = 1e-9


@dataclass(frozen=True)
class IpcResult:
    """What tuning one IPC produced.

    Attributes:
        ipc: Images per class.
        beta: Outcome of stage 1.
        alpha: Outcome of stage 2 (``None`` if stage 1 did not finish).
        final: The stored final record, :meth:`FinalRecord.to_dict` (``None`` if stage 2 did not finish).
        prior: ``{"ipc", "alpha", "beta"}`` of the IPC whose optima start (soft bound) the searches.
        refine: Outcome of the beta refinement at stage 2's alpha (``None``: ``tune.refine_beta``
            is off, or it did not run).
    """

    ipc: int
    beta: StageOutcome
    alpha: StageOutcome | None
    final: dict[str, Any] | None
    prior: dict[str, Any] | None
    refine: StageOutcome | None = None

    @property
    def complete(self) -> bool:
        return self.final is not None

    @property
    def optimum(self) -> dict[str, float] | None:
        """``{"alpha", "beta"}`` of the best SelMatch point (the final record's, after any refinement)."""
        if self.final is None:
            return None
        point = self.final.get("selmatch") or self.final  # older records: the chosen set's own
        return {ALPHA: point[ALPHA], BETA: point[BETA]}


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


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


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
            prior = {records.IPC: ipc, **result.optimum}
    return TuneResult(plan.spec.display(), str(plan.artifacts), results)


def _check(cfg: RunConfig, ipcs: Sequence[int] | str, *, storage: str | None, artifacts: str | os.PathLike | None,
           study_prefix: str | None, new_study: bool, force: bool, workers: int, timeout: float | None,
           objectives: ObjectivesFactory | None) -> TunePlan:
    """Every argument check, before any work."""
    from ..scores import SCORES

    ipc_list = parse_ipcs(ipcs)
    SEARCHES.get(cfg.tune.search)
    SEARCHES.get(cfg.tune.beta_search)
    SCORES.get(cfg.scores.name)
    build_pruner(cfg.tune.pruner, startup_trials=cfg.tune.pruner_startup_trials,
                 warmup_steps=cfg.tune.pruner_warmup_steps)
    check_grid(BETA, cfg.tune.beta_grid)
    check_grid(ALPHA, cfg.tune.alpha_grid)
    _check_precision(cfg)
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
    return TunePlan(cfg, ipc_list, spec, art, prefix, workers, deadline, new_study, force,
                    objectives or SelMatchObjectives)


def _check_precision(cfg: RunConfig) -> None:
    """Refuse a ``distill.precision`` the device cannot run before the beta stage, not at the first alpha trial."""
    if cfg.distill.precision != "fp32":
        from ..distill import check_precision
        from ..runtime import resolve_device

        check_precision(cfg.distill.precision, resolve_device(cfg.device))


def _preflight(plan: TunePlan, storage: optuna.storages.BaseStorage) -> None:
    """Refuse studies made with other settings before anything is computed."""
    if plan.new_study:
        return
    for ipc in plan.ipcs:
        for stage in STAGES:
            check_settings(storage, study_name(plan.prefix, ipc, stage), stage_settings(plan.cfg, stage, ipc),
                           force=plan.force, defaults=default_settings(stage, ipc))


def _tune_ipc(plan: TunePlan, storage: optuna.storages.BaseStorage, objs: Objectives, ipc: int,
              prior: dict[str, Any] | None) -> IpcResult:
    cfg = plan.cfg
    LOG.info("tuning ipc=%d%s", ipc, f" (from ipc={prior[records.IPC]}'s optimum, a soft bound)" if prior else "")

    beta_grid = _feasible_betas(cfg, objs, ipc)
    beta_start = cfg.tune.beta_start if cfg.tune.beta_start is not None else (prior[BETA] if prior else None)
    beta_out = _run_stage(plan, storage, objs, ipc, BETA, beta_grid, beta_start, prior, fixed={})
    if beta_out.stopped == "timeout" or beta_out.best_point is None:
        _explain_stop(beta_out)
        return IpcResult(ipc, beta_out, None, None, prior)

    beta = beta_out.best_point
    alpha_grid = list(check_grid(ALPHA, cfg.tune.alpha_grid))
    alpha_out = _run_stage(plan, storage, objs, ipc, ALPHA, alpha_grid, cfg.tune.alpha_start, prior,
                           fixed={BETA: beta})
    if alpha_out.stopped == "timeout" or alpha_out.best_point is None:
        _explain_stop(alpha_out)
        return IpcResult(ipc, beta_out, alpha_out, None, prior)

    best, refine_out = alpha_out, None
    if cfg.tune.refine_beta and len(beta_grid) > 1:
        refine_out = _run_stage(plan, storage, objs, ipc, REFINE, beta_grid, beta, None,
                                fixed={ALPHA: alpha_out.best_point})
        if refine_out.stopped == "timeout" or refine_out.best_point is None:
            _explain_stop(refine_out)
            return IpcResult(ipc, beta_out, alpha_out, None, prior, refine_out)
        if refine_out.best_point != beta and refine_out.best_value > alpha_out.best_value:  # a tie keeps beta
            LOG.info("%s: at alpha=%g, beta=%g beats stage 1's beta=%g on validation (%.4f vs %.4f)",
                     refine_out.study_name, alpha_out.best_point, refine_out.best_point, beta,
                     refine_out.best_value, alpha_out.best_value)
            best, beta = refine_out, refine_out.best_point

    final = _finish(plan, storage, objs, ipc, alpha=alpha_out.best_point, beta=beta, best=best, window=beta_out)
    return IpcResult(ipc, beta_out, alpha_out, final, prior, refine_out)


def _feasible_betas(cfg: RunConfig, objs: Objectives, ipc: int) -> list[float]:
    """The beta grid cut to window starts that keep ``ipc`` samples inside every class."""
    highest = objs.max_beta(ipc)
    grid = [b for b in check_grid(BETA, cfg.tune.beta_grid) if b <= highest + _EPS]
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


def _run_stage(plan: TunePlan, storage: optuna.storages.BaseStorage, objs: Objectives, ipc: int, stage: str,
               grid: list[float], start: float | None, prior: dict[str, Any] | None,
               fixed: dict[str, float]) -> StageOutcome:
    cfg = plan.cfg
    bound = None if prior is None else prior[stage]
    search = SEARCHES.get(cfg.tune.beta_search if stage == BETA else cfg.tune.search)
    if bound is not None and search is not LineSearch:  # only a walk can tell whether the curve still rises
        grid = [x for x in grid if x <= bound + _EPS] or grid[:1]  # holds the grid's smallest value
    strategy = search(grid, start=start, patience=cfg.tune.patience, seed=cfg.seed, z=cfg.tune.z,
                      max_seeds=cfg.tune.max_seeds, bound=bound)
    settings = stage_settings(cfg, ALPHA if stage == REFINE else stage, ipc)
    attrs = {records.IPC: ipc, records.FINGERPRINT: stable_hash(settings), records.BASELINE: None, **fixed}
    if stage == BETA:
        attrs[ALPHA] = 0.0  # stage 1 scores the selection-only window
    job = StageJob(plan, ipc, stage, strategy, fixed, attrs)
    new_study = plan.new_study and stage != REFINE  # the refinement continues the alpha study, made anew already
    if new_study:
        shutil.rmtree(plan.artifacts / "runs" / job.name, ignore_errors=True)
    study = job.open(storage, new_study=new_study)
    _record_stage(study, job, prior)
    ctx = job.context(cfg, study)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = len(study.get_trials(deepcopy=False, states=done))
    what = f"{strategy.name} search of beta at alpha={fixed[ALPHA]:g}" if stage == REFINE else f"{strategy.name} search"
    LOG.info("%s: %s over %s from %s%s", job.name, what, list(strategy.grid), strategy.start,
             f"; resuming: {finished} finished trial{'' if finished == 1 else 's'} reused" if finished else "")
    controller = job.controller(study, objs, ctx)
    outcome = controller.run() if plan.workers == 1 else run_parallel(job, controller)
    if stage != REFINE:
        _record_overruled(study, strategy, outcome)
    return outcome


def _record_overruled(study: optuna.Study, strategy: SearchStrategy, outcome: StageOutcome) -> None:
    """Study attr :data:`~autoselmatch.records.PRIOR_OVERRULED`: the settled points past the prior's
    bound, where the curve still rose at the bound (``None``: the prior held, or none applied)."""
    past = sorted(p for p in outcome.scores if strategy.bound is not None and p > strategy.bound + _EPS)
    value = {"bound": strategy.bound, "points": past} if past else None
    if study.user_attrs.get(records.PRIOR_OVERRULED, "unset") != value:
        study.set_user_attr(records.PRIOR_OVERRULED, value)
        if value is not None:
            LOG.info("%s: the curve still rose at the prior's bound %g; searched past it: %s",
                     study.study_name, strategy.bound, past)


def _record_stage(study: optuna.Study, job: StageJob, prior: dict[str, Any] | None) -> None:
    """Study attrs: what was searched and why (fixed values, prior), for the dashboard and the report.
    The refinement, which shares the alpha study, records itself in :data:`~autoselmatch.records.REFINE_ATTR`."""
    tc = job.plan.cfg.tune
    search = {"strategy": job.strategy.name, "grid": list(job.strategy.grid), "start": job.strategy.start,
              "patience": tc.patience, "pruner": tc.pruner, "budget": tc.budget, "z": tc.z,
              "max_seeds": tc.max_seeds, "bound": job.strategy.bound}
    if job.stage == REFINE:
        value = {ALPHA: job.fixed[ALPHA], "from": job.strategy.start, records.SEARCH: search}
        if study.user_attrs.get(records.REFINE_ATTR) != value:
            study.set_user_attr(records.REFINE_ATTR, value)
        return
    stored_fixed = study.user_attrs.get(records.FIXED)
    if stored_fixed is not None and stored_fixed != job.fixed and not job.plan.force:
        shown = ", ".join(f"{k}={stored_fixed.get(k)} in the study, {v} now" for k, v in job.fixed.items())
        raise InvalidArgument(f"study {job.name!r} was searched with other fixed values ({shown}); "
                              f"pass --new-study to replace it or --force to continue it")
    attrs = {
        records.DATASET: job.plan.cfg.data.name,
        records.IPC: job.ipc,
        records.STAGE: job.stage,
        records.FIXED: job.fixed,
        records.SEARCH: search,
        records.PRIOR: prior,
        records.SEEDS: {str(r): replicate_seeds(job.plan.cfg, job.stage, r) for r in range(tc.max_seeds)},
        records.RUN_CONFIG: to_dict(job.plan.cfg),
    }
    stored = study.user_attrs
    for key, value in attrs.items():
        if key not in stored or stored[key] != value:  # each write is a storage transaction
            study.set_user_attr(key, value)


# --------------------------------------------------------------------------------------------
# Final set
# --------------------------------------------------------------------------------------------


def _finish(plan: TunePlan, storage: optuna.storages.BaseStorage, objs: Objectives, ipc: int, *, alpha: float,
            beta: float, best: StageOutcome, window: StageOutcome) -> dict[str, Any]:
    """Choose, make, evaluate and record the final set, unless the study already holds it for these trials.

    ``(alpha, beta)`` is the best SelMatch point and ``best`` the outcome of the search that found
    it (stage 2, or the refinement), which names its value and trial in the alpha study;
    ``window`` is stage 1's outcome, whose best window alone (alpha 0) is a candidate too.
    The final set is the best on validation among that point, the window and the
    finished baselines (a tie goes to the first in :data:`~autoselmatch.records.CANDIDATES`,
    SelMatch), by their trial scores or, under ``tune.choose_on = final``, by their final sets
    scored on validation; every candidate's set is made and evaluated on the test split too
    (SelMatch's only when chosen, under ``trials``), and the chosen one is uploaded as the study's
    artifacts. Workers that end the alpha stage together take turns on a lock in the study's
    folder: the first makes the sets, the others wait and reuse them.
    """
    from ..distill import method_key

    name = study_name(plan.prefix, ipc, ALPHA)
    study = optuna.load_study(study_name=name, storage=storage)
    trial = study.trials[best.best_trial]
    tc = plan.cfg.tune
    on_final = tc.baselines and tc.choose_on == "final"
    shaped = {"trial": trial.number, "beta": beta, "distill": method_key(plan.cfg)["distill"],
              "evaluate": key_dict("evaluate", plan.cfg.evaluate)}  # what shapes the final set and its test score
    measured = _candidate_trials(plan, storage, ipc, window) if tc.baselines else {}
    if tc.alpha_augment is not None:  # (none: the key of records made before tune.alpha_augment)
        shaped["alpha_augment"] = tc.alpha_augment
    if tc.baselines:  # without baselines the key is the one older versions wrote
        shaped["baselines"] = {n: [t.number, t.state.name] for n, (t, _) in measured.items()}
    if on_final:  # `trials` keeps the keys of records made before the setting
        shaped["choose_on"] = tc.choose_on
        if tc.final_augments:  # (none: the key of records made before tune.final_augments)
            shaped["final_augments"] = list(tc.final_augments)
    key = stable_hash(shaped)
    ctx = stage_context(plan, plan.cfg, ipc, study)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    with file_lock(ctx.workdir / ".final.lock"):
        done = FinalRecord.from_attrs(study.user_attrs)  # read after the wait: another worker may have made it
        if done is not None and done.key == key:
            LOG.info("%s: final set already made (%s)", name, done.result_path)
            return done.to_dict()
        method = plan.cfg.distill.method
        names = {n: _named(n, method, window.best_point) for n in measured}
        trial_scores, scores, made = _make_candidates(objs, ctx, measured, names, trial, alpha=alpha, beta=beta,
                                                      best=best, window=window, on_final=on_final, key=key)
        chosen = _best(scores)
        image_hits = {n: out.pop(records.FINAL_VAL_HITS, None) for n, out in made.items()}  # not stored
        baselines = {n: {"label": label(n, method), "study": source, "trial": t.number, "state": t.state.name.lower(),
                         records.VAL_ACCURACY: trial_scores.get(n, _trial_score(t)), **made[n]}
                     for n, (t, source) in measured.items()}
        if WINDOW in baselines:
            baselines[WINDOW][BETA] = window.best_point
        if chosen == SELMATCH:
            number, facts = trial.number, made[SELMATCH]
        else:  # a set with nothing distilled (the window, random selection) or all of it (MTT, from random init)
            number = measured[chosen][0].number if chosen == MTT else None  # the others' trials are the beta study's
            facts = {**made[chosen], ALPHA: 1.0 if chosen == MTT else 0.0,
                     BETA: window.best_point if chosen == WINDOW else 0.0}
        _upload(study, ctx, facts.get(records.RESULT_PATH))
        final = FinalRecord.from_dict(facts)
        if tc.baselines:
            margin = _margin(chosen, list(scores), made, image_hits) if on_final else None
            summary = _summary(chosen, scores, names, alpha, beta, on_final, margin,
                               augments=made.get(SELMATCH, {}).get(records.FINAL_AUGMENTS))
            LOG.info("%s: %s", name, summary)
            point = {ALPHA: alpha, BETA: beta, "trial": trial.number, records.VAL_ACCURACY: float(best.best_value)}
            if on_final:  # SelMatch's final set was made whichever won: its scores and file
                kept = (records.FINAL_VAL_ACCURACY, records.TEST_ACCURACY, records.RESULT_PATH, records.ITERATIONS,
                        records.EVALUATION, records.FINAL_AUGMENTS)
                point.update({k: v for k, v in made[SELMATCH].items() if k in kept})
            final = dataclasses.replace(final, chosen=chosen, val_accuracy=trial_scores[chosen], choose_on=tc.choose_on,
                                        selmatch=point, baselines=baselines, summary=summary, margin=margin)
        final = dataclasses.replace(final, key=key, ipc=ipc, trial=number)
        for attr, value in final.to_attrs().items():  # FINAL last: a record is complete once it is there
            study.set_user_attr(attr, value)
    return final.to_dict()


def _make_candidates(objs: Objectives, ctx: StageContext, measured: dict[str, tuple[FrozenTrial, str]],
                     names: dict[str, str], trial: FrozenTrial, *, alpha: float, beta: float, best: StageOutcome,
                     window: StageOutcome, on_final: bool, key: str
                     ) -> tuple[dict[str, float], dict[str, float], dict[str, dict[str, Any]]]:
    """Make and score the final set of each candidate.

    ``measured`` holds every candidate but SelMatch (:func:`_candidate_trials`), SelMatch is ``trial``
    at ``(alpha, beta)``, the best point of ``best``. Every baseline's set is made; SelMatch's when it
    leads on trial scores, or always when ``on_final``, where each set is also scored on validation.
    Each candidate's outcome is kept as soon as it is made (:func:`_made_once`, under the final record's
    ``key``), so a rerun after a crash starts at the first candidate not yet made.

    Returns:
        ``(trial_scores, scores, made)``: each finished candidate's trial score (a point's replicate
        mean); the scores the choice compares (the trial scores, or the final sets' validation
        means); what ``finish`` / ``finish_baseline`` returned per candidate made.
    """
    trial_scores = {SELMATCH: float(best.best_value)}
    for n, (t, _) in measured.items():
        if t.state == TrialState.COMPLETE:  # the window: its point's replicate mean
            trial_scores[n] = float(window.best_value if n == WINDOW else t.value)
    made: dict[str, dict[str, Any]] = {}
    for n, (t, source) in measured.items():
        LOG.info("%s: final set of a candidate, %s (trial %d of %s)", ctx.study_name, names[n], t.number, source)
        made[n] = _made_once(ctx, n, key, lambda: objs.finish_baseline(ctx, name=n, trial=t, validate=on_final))
    if on_final or _best(trial_scores) == SELMATCH:
        LOG.info("%s: final set of SelMatch, trial %d (alpha=%g, beta=%g)", ctx.study_name, trial.number, alpha, beta)
        made[SELMATCH] = _made_once(ctx, SELMATCH, key, lambda: {
            **objs.finish(ctx, alpha=alpha, beta=beta, trial=trial, validate=on_final), ALPHA: alpha, BETA: beta})
    if not on_final:
        return trial_scores, trial_scores, made
    scores = {n: float(made[n][records.FINAL_VAL_ACCURACY]["mean"]) for n in trial_scores}
    return trial_scores, scores, made


def _made_once(ctx: StageContext, name: str, key: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """What ``make`` returns for the candidate ``name``, kept in ``final/NAME.json`` of the study's folder with
    the final record's ``key`` and read back by a rerun under the same key: a candidate's final set and its
    evaluations can take longer than a trial, and a crash must not cost the candidates already made. The
    per-image validation hits (a tensor) are stored as a list."""
    path = ctx.workdir / "final" / f"{name}.json"
    try:
        saved = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        saved = None  # a file from a crash mid-write is never there (atomic writes), a damaged one is remade
    if isinstance(saved, dict) and saved.get("key") == key:
        LOG.info("%s: final set of %s already made (%s)", ctx.study_name, name, path)
        made = saved["made"]
        if made.get(records.FINAL_VAL_HITS) is not None:
            made[records.FINAL_VAL_HITS] = torch.tensor(made[records.FINAL_VAL_HITS], dtype=torch.long)
        return made
    made = make()
    stored = dict(made)
    if made.get(records.FINAL_VAL_HITS) is not None:
        stored[records.FINAL_VAL_HITS] = made[records.FINAL_VAL_HITS].tolist()
    save_json({"key": key, "made": stored}, path)
    return made


def _best(scores: dict[str, float]) -> str:
    """The candidate with the highest score; a tie (up to float rounding) goes to the first in
    :data:`~autoselmatch.records.CANDIDATES`."""
    return max(scores, key=lambda n: (round(scores[n], _SAME_DIGITS), -CANDIDATES.index(n)))


def _upload(study: optuna.Study, ctx: StageContext, path: str | None) -> None:
    """Store the chosen set at ``path`` as ``study``'s artifacts (nothing when the objectives made no file)."""
    from ..export import upload_trial_artifacts

    if path is not None and Path(path).is_file():
        upload_trial_artifacts(study, ctx.artifact_store(), Path(path))


#: Validation accuracies are compared at this many decimals: counts of the same validation images,
#: averaged in another order (a baseline's networks, a point's replicates), differ by float rounding only.
_SAME_DIGITS = 9


def _candidate_trials(plan: TunePlan, storage: optuna.storages.BaseStorage, ipc: int,
                      window: StageOutcome) -> dict[str, tuple[FrozenTrial, str]]:
    """The trial and study name of each candidate but SelMatch, in :data:`~autoselmatch.records.CANDIDATES`
    order: stage 1's best trial (``window``) for the window, each baseline's settled trial (finished,
    else pruned); baselines not yet settled are left out."""
    found: dict[str, tuple[FrozenTrial, str]] = {}
    for stage in STAGES:
        name = study_name(plan.prefix, ipc, stage)
        study = optuna.load_study(study_name=name, storage=storage)
        if stage == BETA and window.best_trial is not None:
            found[WINDOW] = (study.trials[window.best_trial], name)
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        for baseline in BASELINES[stage]:
            mine = [t for t in trials if t.user_attrs.get(records.BASELINE) == baseline]
            if mine:
                best = max(mine, key=lambda t: (t.state == TrialState.COMPLETE, -t.number))
                found[baseline] = (best, name)
    return {n: found[n] for n in CANDIDATES if n in found}


def _trial_score(trial: FrozenTrial) -> float | None:
    """A finished trial's value, a pruned one's last report."""
    if trial.value is not None:
        return float(trial.value)
    steps = trial.intermediate_values
    return float(steps[max(steps)]) if steps else None


def _named(name: str, method: str, window_beta: float | None) -> str:
    """How the log and the summary name candidate ``name``: its :func:`~autoselmatch.records.label`, and
    the window's start for the window."""
    return label(name, method) + (f" at beta {window_beta:g}" if name == WINDOW else "")


def _margin(chosen: str, compared: Sequence[str], made: dict[str, dict[str, Any]],
            image_hits: dict[str, torch.Tensor | None]) -> dict[str, Any] | None:
    """How far the chosen final set led the runner-up among ``compared`` on validation, and how surely.

    Every candidate's final set is scored by networks of the same seeds on the same validation images
    (``made``: what ``finish`` / ``finish_baseline`` returned; ``image_hits``: per candidate, how many
    networks were right on each image, or ``None``). The lead has two sources of noise, each estimated
    from paired differences: the networks (:func:`~._noise.compare` of the per-network accuracies:
    another draw of networks) and the images (the spread of the per-image differences, averaged over
    the networks: another draw of validation images). ``se`` combines them as independent.

    Returns:
        ``{"against", "diff", "se", "se_networks", "se_images", "networks", "images"}``: the runner-up,
        the mean difference in accuracy, its standard error, and each source's (``None`` where not
        estimable: fewer than two networks, or no per-image record), with the numbers of networks and
        images they rest on; ``None`` with one candidate.
    """
    final = {n: made[n][records.FINAL_VAL_ACCURACY] for n in compared}
    if len(final) < 2:
        return None
    runner = _best({n: float(v["mean"]) for n, v in final.items() if n != chosen})

    def stats(n: str) -> PointStats:
        return PointStats(values={0: float(final[n]["mean"])}, networks={0: tuple(final[n].get("accuracies") or ())})

    by_network = compare(stats(chosen), stats(runner))
    se_images, images = None, None
    a, b = image_hits.get(chosen), image_hits.get(runner)
    runs = len(final[chosen].get("accuracies") or ())
    if a is not None and b is not None and len(a) == len(b) > 1 and runs == len(final[runner].get("accuracies") or ()):
        per_image = (a.double() - b.double()) / max(runs, 1)  # (m,) difference of the networks' mean hit
        se_images, images = float(per_image.std() / math.sqrt(len(per_image))), len(per_image)
    parts = [x for x in (by_network.se, se_images) if x is not None]
    return {"against": runner, "diff": by_network.diff, "se": math.sqrt(sum(x * x for x in parts)) if parts else None,
            "se_networks": by_network.se, "se_images": se_images, "networks": by_network.pairs, "images": images}


#: A lead under this many standard errors of the paired differences is called within noise.
_CLEAR_Z = 2.0


def _noise_text(margin: dict[str, Any]) -> str:
    """`` (± 0.45 standard error: 3 networks 0.03, 3,000 validation images 0.45; within noise)``, or ``""``
    without an estimate (:func:`_margin`)."""
    if margin["se"] is None:
        return ""
    within = "; within noise" if abs(margin["diff"]) <= _CLEAR_Z * margin["se"] else ""
    if margin["se_images"] is None:
        return f" (± {100 * margin['se']:.2f} standard error over {margin['networks']} paired networks{within})"
    parts = [f"{margin['images']:,} validation images {100 * margin['se_images']:.2f}"]
    if margin["se_networks"] is not None:
        parts.insert(0, f"{margin['networks']} networks {100 * margin['se_networks']:.2f}")
    return f" (± {100 * margin['se']:.2f} standard error: {', '.join(parts)}{within})"


def _summary(chosen: str, scores: dict[str, float], names: dict[str, str], alpha: float, beta: float,
             on_final: bool = False, margin: dict[str, Any] | None = None,
             augments: dict[str, float] | None = None) -> str:
    """One line on the final choice: ``chosen`` among the best grid point and the finished baselines,
    the window among them (``scores``, named by ``names``); differences in percentage points of
    validation accuracy, of the trials or (``on_final``) of the final sets, with ``margin``'s
    standard error when it has one (:func:`_margin`); ``augments``: SelMatch's final set's validation
    score under each augmentation tried (``tune.final_augments``), the best of which it kept."""
    where = "on validation (final sets)" if on_final else "on validation"
    others = {n: v for n, v in scores.items() if n != SELMATCH}
    selmatch = scores[SELMATCH]
    noise = "" if margin is None else _noise_text(margin)
    trained = _augments_text(augments)
    if chosen != SELMATCH:
        beaten = "every SelMatch point" if not on_final else \
            f"SelMatch's best point ({trained})" if trained else "SelMatch's best point"
        lead = f"{100 * (others[chosen] - selmatch):.2f} points"
        if margin is not None and margin["against"] == SELMATCH:
            lead += noise
        elif noise:
            lead += f", and the next best set ({names[margin['against']]}) by {100 * margin['diff']:.2f}{noise}"
        return f"{names[chosen]} beat {beaten} {where} by {lead}; exporting it"
    point = f"SelMatch (alpha {alpha:g}, beta {beta:g}{'; ' + trained if trained else ''})"
    if not others:
        return f"{point} chosen; no baseline finished (pruned or failed), so none could be compared"
    runner = _best(others)
    if round(others[runner], _SAME_DIGITS) >= round(selmatch, _SAME_DIGITS):
        return f"{point} tied the best baseline {where} ({names[runner]}); a tie goes to SelMatch"
    return (f"{point} beat every baseline {where}, the best of them ({names[runner]}) by "
            f"{100 * (selmatch - others[runner]):.2f} points{noise}")


def _augments_text(augments: dict[str, float] | None) -> str:
    """``trained with dsa, 1.98 points above combined``: the augmentation SelMatch's final set kept and its
    lead over the runner-up on validation; empty when one augmentation was tried."""
    if not augments or len(augments) < 2:
        return ""
    kept, runner = sorted(augments, key=lambda a: -augments[a])[:2]  # stable: a tie keeps the first tried
    return f"trained with {kept}, {100 * (augments[kept] - augments[runner]):.2f} points above {runner}"


__all__ = ["IpcResult", "TuneResult", "parse_ipcs", "tune"]
