"""The real objectives of the two stages and the final set (SelMatch on a dataset).

- stage 1, beta: mean validation accuracy of ``tune.beta_seeds`` networks
  (seeds from :func:`~._stage.replicate_seeds`: the same at every beta of a replicate)
  trained with ``tune.beta_augment`` (DSA by default, as the paper's
  sliding-window experiment) for ``evaluate.quick_fraction`` of the final
  evaluation budget (Appendix E: 10-20 %) on the selection-only window
  (:func:`autoselmatch.selection.window_accuracy`);
  validation accuracy is reported a few times in the second half of each
  network's training for the pruner (the first epochs on a few hundred
  images are close to chance, and pruning on them cuts windows on noise).
- stage 2, alpha: SelMatch distillation (:func:`autoselmatch.distill.selmatch`)
  for the trial budget, reporting its quick validation accuracies (mean of
  ``tune.alpha_seeds`` networks, trained with ``tune.alpha_augment``, by default
  ``evaluate.augment``) at ``distill.eval_every``; the last one is
  the score, or, with ``tune.alpha_fraction``, the validation accuracy of
  networks trained on the trial's set for that share of the final budget. Replicate ``r`` of a point (``tune.max_seeds``) distils and
  evaluates from the seeds :func:`~._stage.replicate_seeds` gives it, the
  same at every point (common random numbers); the trial records its network
  seeds. Each (beta, alpha, replicate) has its own checkpoint folder, so a trial
  interrupted by a crash or Ctrl-C resumes where it stopped when the search
  retries the point.
- final: the best trial continued to ``distill.iterations`` (from a copy of
  its checkpoint), evaluated on the **test** split with ``evaluate.runs``
  seeds and saved (the pipeline uploads the chosen set as the study's
  artifacts); under ``tune.choose_on = final`` first scored on the
  **validation** split by as many networks of the next seeds, with the alpha
  trials' augmentation and each of ``tune.final_augments`` when the set has
  both D_select and D_distill rows: the best of them trains the test networks.
- baselines: random selection (class-balanced, ``seed``) is scored by the
  stage-1 objective as the window of seeded random scores; MTT is the stage-2
  objective at alpha 1 from a random real init (``distill.init = random``);
  their final sets, and that of stage 1's best window alone, are made and
  evaluated like the best trial's.

Building :class:`SelMatchObjectives` loads the dataset only; the difficulty
scores are loaded or computed (and cached) when a stage first needs them,
experts trained (or reused from the cache) when the alpha stage does.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch

from .. import records
from ..augment import augment_of_set
from ..config import RunConfig
from ..fileio import atomic_write
from ..runtime import LOG, resolve_device
from ..synset import barely_distilled
from ._controller import BaselineObjective, Objective, replicate_of, report
from ._stage import StageContext, replicate_seeds, trial_iterations

if TYPE_CHECKING:
    from ..evaluate import EvalResult
    from ..experts import ExpertStore

REPORTS_PER_NETWORK = 3  # validation reports per trained network in the beta stage (second half)


def _point_dir(ctx: StageContext, beta: float, alpha: float, init: str | None = None, replicate: int = 0) -> Path:
    """Checkpoint folder of one replicate of one (beta, alpha) of a study, or of alpha from a ``random``
    init (MTT): retried trials resume from it."""
    name = f"random-alpha{alpha:g}" if init == "random" else f"beta{beta:g}-alpha{alpha:g}"
    return ctx.workdir / (name if replicate == 0 else f"{name}-replicate{replicate}")


def _replicate_config(cfg: RunConfig, stage: str, replicate: int) -> RunConfig:
    """``cfg`` with the run seed of ``replicate`` (:func:`~._stage.replicate_seeds`)."""
    return dataclasses.replace(cfg, seed=replicate_seeds(cfg, stage, replicate)["seed"])


class SelMatchObjectives:
    """The objectives of ``autoselmatch tune`` on a real dataset.

    Args:
        cfg: Run settings: ``data`` (which dataset), ``scores``, ``experts``,
            ``distill``, ``evaluate``, ``tune``, ``seed``, ``device``, ``cache_dir``.
    """

    def __init__(self, cfg: RunConfig) -> None:
        from ..data import load_configured
        from ..selection import class_sizes

        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.ds = load_configured(cfg.data, device=self.device)
        self.class_sizes = class_sizes(self.ds.train_labels, self.ds.train_index).cpu()
        self._barely_warned: set[str] = set()  # studies whose alpha trials were said to barely distil

    def max_beta(self, ipc: int) -> float:
        from ..selection import max_beta

        return max_beta(ipc, self.class_sizes)

    @functools.cached_property
    def scores(self) -> torch.Tensor:
        """float (N,) difficulty of every training sample, computed on first use if the cache lacks it."""
        from ..scores import get_scores

        return get_scores(self.ds, self.cfg.scores, cache_dir=self.cfg.cache_path, seed=self.cfg.seed,
                          run=self.cfg)

    @functools.cached_property
    def experts(self) -> ExpertStore:
        """The expert trajectories, trained on first use if the cache lacks them."""
        from ..experts import train_experts

        return train_experts(self.ds, self.cfg, device=self.device)

    def _experts_for(self, cfg: RunConfig) -> ExpertStore | None:
        """The experts when ``cfg.distill.method`` reads them (``mtt``), else None (nothing trained)."""
        from ..distill import METHODS

        return self.experts if METHODS.get(cfg.distill.method).needs == "experts" else None

    # ---- stage 1 -----------------------------------------------------------------------------

    def beta(self, ctx: StageContext, *, scores: torch.Tensor | None = None) -> Objective:
        """Stage 1's objective; ``scores`` (float (N,)) replaces the difficulty scores (random selection)."""
        from ..evaluate import accuracy, batch_bounds, budget_steps, budget_text, paper_share
        from ..selection import window_accuracy

        cfg, ecfg = ctx.cfg, ctx.cfg.evaluate
        windows = scores is None  # the grid's objective, not the random-selection baseline's
        scores = self.scores if scores is None else scores
        val_images, val_y = self.ds.split("val")
        val_x = self.ds.normalize(val_images)  # (V, C, H, W) float, on the dataset's device
        n_set = ctx.ipc * self.ds.num_classes
        n_full = len(self.ds.train_labels)
        steps = budget_steps(ecfg, n_set=n_set, n_full=n_full, fraction=ecfg.quick_fraction)
        final = budget_steps(ecfg, n_set=n_set, n_full=n_full)
        if windows:  # said once: the random-selection baseline's trials train alike
            LOG.info("%s: beta trials train %d networks with %s augmentation, %d steps each: evaluate.quick_fraction "
                     "%g of the final budget, %s", ctx.study_name, cfg.tune.beta_seeds, cfg.tune.beta_augment, steps,
                     ecfg.quick_fraction, budget_text(final, paper_share(final, n_full=n_full, batch_size=ecfg.batch_size)))
        epochs_per_run = math.ceil(steps / (len(batch_bounds(n_set, ecfg.batch_size)) - 1))
        first = epochs_per_run // 2 + 1  # the first reported epoch of each network (1-based)
        stride = max(1, (epochs_per_run - first + 1) // REPORTS_PER_NETWORK)

        def objective(beta: float, trial: optuna.Trial) -> float:
            def on_epoch(epoch: int, model: torch.nn.Module) -> None:
                within = epoch % epochs_per_run + 1
                if within == epochs_per_run or (within >= first and (within - first) % stride == 0):
                    report(trial, accuracy(model, val_x, val_y), step=epoch + 1)

            seeds = replicate_seeds(cfg, records.BETA, replicate_of(trial))
            trial.set_user_attr(records.NETWORK_SEEDS, seeds["networks"])
            result = window_accuracy(self.ds, scores, ipc=ctx.ipc, beta=beta, cfg=ecfg,
                                     fraction=ecfg.quick_fraction, seeds=cfg.tune.beta_seeds, seed=seeds["seed"],
                                     epoch_callback=on_epoch, augment=cfg.tune.beta_augment)
            trial.set_user_attr(records.VAL_ACCURACY, {"mean": result.mean, "std": result.std,
                                                       "accuracies": result.accuracies})
            trial.set_user_attr(records.SECONDS, result.seconds)
            return result.mean

        return objective

    # ---- stage 2 -----------------------------------------------------------------------------

    def alpha(self, ctx: StageContext, beta: float, *, init: str | None = None) -> Objective:
        """Stage 2's objective; ``init`` overrides ``distill.init`` (``random``: MTT at alpha 1)."""
        from ..distill import RESULT_FILE, DistillStep, quick_evaluator, selmatch
        from ..export import upload_trial_artifacts

        scores, experts = self.scores, self._experts_for(ctx.cfg)
        cfg = _with_iterations(_with_augment(ctx.cfg, _alpha_augment(ctx.cfg)), trial_iterations(ctx.cfg))
        cfg = cfg if init is None else _with_init(cfg, init)
        evaluators = {0: quick_evaluator(self.ds, cfg, runs=cfg.tune.alpha_seeds)}
        final_fraction = cfg.tune.alpha_fraction  # None: the last quick evaluation is the value

        def objective(alpha: float, trial: optuna.Trial) -> float:
            replicate = replicate_of(trial)
            run_cfg = _replicate_config(cfg, records.ALPHA, replicate)  # distils and evaluates from its seeds
            if replicate not in evaluators:
                evaluators[replicate] = quick_evaluator(self.ds, run_cfg, runs=cfg.tune.alpha_seeds)
            evaluator = evaluators[replicate]
            trial.set_user_attr(records.NETWORK_SEEDS, replicate_seeds(cfg, records.ALPHA, replicate)["networks"])
            run_dir = _point_dir(ctx, beta, alpha, init, replicate)
            reported: set[int] = set()

            def on_step(step: DistillStep) -> None:
                if step.accuracy is not None:
                    reported.add(step.iteration)
                    report(trial, step.accuracy, step.iteration)

            result = selmatch(self.ds, run_cfg, ipc=ctx.ipc, alpha=alpha, beta=beta, scores=scores,
                              experts=experts, checkpoint_dir=run_dir, resume=True, callback=on_step,
                              evaluator=evaluator)
            for iteration, acc in result.evals:  # evaluations made before a resume, for the dashboard
                if iteration not in reported:
                    trial.report(acc, iteration)
            if final_fraction is None and result.evals and result.evals[-1][0] == result.iterations:
                value = result.evals[-1][1]
            else:  # tune.alpha_fraction, alpha = 0 or no evaluations configured: score the set once
                score = evaluator if final_fraction is None else quick_evaluator(
                    self.ds, run_cfg, runs=cfg.tune.alpha_seeds, fraction=final_fraction)
                value = score(result.images.to(self.device), result.labels.to(self.device),
                              result.distill_mask.to(self.device))
            path = result.save(run_dir / RESULT_FILE).resolve()
            trial.set_user_attr(records.RESULT_PATH, str(path))
            trial.set_user_attr(records.VAL_ACCURACY, float(value))
            trial.set_user_attr(records.ITERATIONS, result.iterations)
            trial.set_user_attr(records.ETA, result.eta)
            trial.set_user_attr(records.LOSS_RATIO, result.loss_ratio)
            trial.set_user_attr(records.PIXEL_CHANGE, result.pixel_change)
            if ctx.study_name not in self._barely_warned and barely_distilled(
                    result.loss_ratio, result.pixel_change, moved=cfg.reproduce.barely_moved,
                    ratio_above=cfg.reproduce.barely_distilled):
                self._barely_warned.add(ctx.study_name)  # once per study, its grid trials and MTT's alike
                LOG.warning("%s: the trial at alpha=%g was barely distilled in its %d iterations (pixel change %s "
                            "std, under reproduce.barely_moved = %g): the alpha trials compare sets that hardly "
                            "moved, so the stage's choice is close to noise; raise tune.trial_iterations",
                            ctx.study_name, alpha, result.iterations, _text(result.pixel_change),
                            cfg.reproduce.barely_moved)
            upload_trial_artifacts(trial, ctx.artifact_store(), path)
            return float(value)

        return objective

    # ---- final -------------------------------------------------------------------------------

    def finish(self, ctx: StageContext, *, alpha: float, beta: float, trial: optuna.trial.FrozenTrial,
               validate: bool = False) -> dict[str, Any]:
        return self._final_set(ctx, ctx.cfg, alpha=alpha, beta=beta, trial=trial, validate=validate,
                               final_dir=ctx.workdir / "final" / f"beta{beta:g}-alpha{alpha:g}")

    # ---- baselines ---------------------------------------------------------------------------

    def baseline(self, ctx: StageContext, name: str) -> BaselineObjective:
        if name == records.RANDOM:
            from ..selection import select

            labels = self.ds.train_labels
            chosen = select("random", None, labels, self.ds.train_index, ipc=ctx.ipc, seed=ctx.cfg.seed)
            marked = torch.zeros(len(labels), dtype=torch.float64, device=labels.device)  # (N,)
            marked[chosen] = 1.0  # the window at beta 0 of these scores is exactly the random selection
            window = self.beta(ctx, scores=marked)
            return lambda trial: window(0.0, trial)
        if name == records.MTT:
            mtt = self.alpha(ctx, 0.0, init="random")
            return lambda trial: mtt(1.0, trial)
        raise ValueError(f"unknown baseline {name!r}")

    def finish_baseline(self, ctx: StageContext, *, name: str, trial: optuna.trial.FrozenTrial,
                        validate: bool = False) -> dict[str, Any]:
        if name == records.WINDOW:  # stage 1's best trial: its window alone, nothing distilled
            beta = float(trial.params[records.BETA])
            return self._final_set(ctx, ctx.cfg, alpha=0.0, beta=beta, trial=trial, validate=validate,
                                   final_dir=ctx.workdir / "final" / name)
        alpha = 1.0 if name == records.MTT else 0.0
        return self._final_set(ctx, _with_init(ctx.cfg, "random"), alpha=alpha, beta=0.0, trial=trial,
                               validate=validate, final_dir=ctx.workdir / "final" / name, init="random")

    # ---- final sets --------------------------------------------------------------------------

    def _final_set(self, ctx: StageContext, cfg: RunConfig, *, alpha: float, beta: float,
                   trial: optuna.trial.FrozenTrial, validate: bool, final_dir: Path,
                   init: str | None = None) -> dict[str, Any]:
        """``trial``'s set continued to ``distill.iterations`` in ``final_dir``, evaluated on the test split
        (with ``validate``, first on the validation split, by networks of the next seeds)."""
        from ..distill import CHECKPOINT_FILE, RESULT_FILE, DistillResult, evaluate_distilled, quick_evaluator, selmatch

        replicate = replicate_of(trial)
        if trial.user_attrs.get(records.ITERATIONS, 0) >= cfg.distill.iterations:
            result = DistillResult.load(trial.user_attrs[records.RESULT_PATH])
        else:
            source = _point_dir(ctx, beta, alpha, init, replicate) / CHECKPOINT_FILE
            if not (final_dir / CHECKPOINT_FILE).is_file() and source.is_file():
                with open(source, "rb") as src, atomic_write(final_dir / CHECKPOINT_FILE) as dst:
                    shutil.copyfileobj(src, dst)  # a crash mid-copy must not leave a truncated checkpoint
            if alpha > 0:
                LOG.info("%s: continuing alpha=%g to %d iterations", ctx.study_name, alpha, cfg.distill.iterations)
            run_cfg = _replicate_config(cfg, records.ALPHA, replicate)  # continues the trial's own distillation
            result = selmatch(self.ds, run_cfg, ipc=ctx.ipc, alpha=alpha, beta=beta, scores=self.scores,
                              experts=self._experts_for(cfg) if alpha > 0 else None, checkpoint_dir=final_dir,
                              resume=True,
                              evaluator=quick_evaluator(self.ds, _with_augment(cfg, _alpha_augment(cfg))))
        scored = _scored_like_its_trials(cfg, result.distill_mask)
        runs = cfg.evaluate.runs
        facts: dict[str, Any] = {}

        def evaluate(augment: str, split: str, seed: int) -> EvalResult:
            run_cfg = _with_augment(scored, augment)
            scores = evaluate_distilled(self.ds, result.images.to(self.device), result.labels.to(self.device),
                                        run_cfg, distill_mask=result.distill_mask.to(self.device), split=split,
                                        runs=runs, seed=seed)
            spread = f" ± {100 * scores.std:.2f}" if scores.runs > 1 else ""  # one run has no spread
            LOG.info("%s: %s accuracy %.2f%s %% (%d run%s, %s) of %s", ctx.study_name, split, 100 * scores.mean,
                     spread, scores.runs, "" if scores.runs == 1 else "s", augment, final_dir.name)
            return scores

        augment = scored.evaluate.augment
        if validate:  # the final choice's score: networks other than the test's, so that none is scored twice
            tried = {a: evaluate(a, "val", cfg.seed + runs) for a in _augments_to_try(scored, result.distill_mask)}
            augment = max(tried, key=lambda a: round(tried[a].mean, 9))  # a tie keeps the first: the trials'
            val = tried[augment]
            facts[records.FINAL_VAL_ACCURACY] = {"mean": val.mean, "std": val.std, "accuracies": val.accuracies}
            facts[records.FINAL_VAL_HITS] = val.image_hits  # (m,): the margin compares the sets image by image
            if len(tried) > 1:
                facts[records.FINAL_AUGMENTS] = {a: r.mean for a, r in tried.items()}
        test = evaluate(augment, "test", cfg.seed)
        path = result.save(final_dir / RESULT_FILE).resolve()
        return {
            records.RESULT_PATH: str(path),
            records.TEST_ACCURACY: {"mean": test.mean, "std": test.std, "accuracies": test.accuracies},
            **facts,
            records.ITERATIONS: result.iterations,
            records.EVALUATION: {"runs": test.runs, "steps": test.steps, "paper_share": test.paper_share,
                                 "model": test.model, "augment": test.augment, "seconds": test.seconds},
        }


def _text(value: float | None) -> str:
    return "unrecorded" if value is None else f"{value:.3f}"


def _alpha_augment(cfg: RunConfig) -> str:
    """The augmentation the alpha trials' networks train with: ``tune.alpha_augment``, else ``evaluate.augment``."""
    return cfg.tune.alpha_augment or cfg.evaluate.augment


def _scored_like_its_trials(cfg: RunConfig, distill_mask: torch.Tensor) -> RunConfig:
    """``cfg`` for the scores of a final set, trained as the trials that chose it were: a selection-only set
    (no D_distill row: random selection, alpha 0) with ``tune.beta_augment``, as the beta trials
    (:func:`~autoselmatch.augment.augment_of_set`); a distilled one with the alpha trials' augmentation
    (:func:`_alpha_augment`)."""
    distilled = bool(distill_mask.any())
    augment = _alpha_augment(cfg) if distilled else augment_of_set(cfg.evaluate.augment, distilled=False,
                                                                    selection=cfg.tune.beta_augment)
    return _with_augment(cfg, augment)


def _augments_to_try(cfg: RunConfig, distill_mask: torch.Tensor) -> list[str]:
    """``cfg``'s augmentation (:func:`_scored_like_its_trials`), then ``tune.final_augments``, for a set with
    both D_select and D_distill rows (SelMatch's); the first alone for the others, where combined
    augmentation is one augmentation on every row (all distilled: DSA with a strategy per image; none:
    the beta trials')."""
    mixed = bool(distill_mask.any()) and not bool(distill_mask.all())
    return list(dict.fromkeys([cfg.evaluate.augment, *(cfg.tune.final_augments if mixed else ())]))


def _with_augment(cfg: RunConfig, augment: str) -> RunConfig:
    return dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, augment=augment))


def _with_iterations(cfg: RunConfig, iterations: int) -> RunConfig:
    return dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, iterations=iterations))


def _with_init(cfg: RunConfig, init: str) -> RunConfig:
    return dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, init=init))


__all__ = ["SelMatchObjectives"]
