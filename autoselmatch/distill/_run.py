"""The distillation loop: its run state and checkpoint, the loop itself and the checks of its inputs."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from ..config import DistillConfig, ExpertConfig, RunConfig, from_dict, key_dict, to_dict
from ..data import ImageDataset
from ..errors import InvalidArgument, TrainingDiverged
from ..fileio import load_torch, save_torch, stable_hash
from ..runtime import LOG, progress, resolve_device
from ..synset import SyntheticSet, loss_ratio
from ._methods import METHODS, method_revision
from ._student import ExpertSource
from ._trajectory import MatchOutput

if TYPE_CHECKING:
    from ..evaluate import EvalResult

RESULT_FILE = "result.pt"
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_VERSION = 1
DistillResult = SyntheticSet  # what distill() and selmatch() return; the name this module always exported

Evaluator = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], float]
CoverageProbe = Callable[[torch.Tensor], Mapping[str, float]]  # images -> {"coverage", "coverage_easy", ...}


@dataclass(frozen=True)
class DistillStep:
    """What the per-iteration callback receives.

    Args:
        iteration: Iterations completed so far (1 after the first).
        loss: Matching loss (1) of this iteration, before the update.
        eta: The learnable student learning rate after the update.
        accuracy: Quick validation accuracy of the current set, when one was
            measured at this iteration (every ``distill.eval_every``), else None.
    """

    iteration: int
    loss: float
    eta: float
    accuracy: float | None = None


Callback = Callable[[DistillStep], None]


# --------------------------------------------------------------------------------------------
# The run state: what an iteration changes, and its checkpoint
# --------------------------------------------------------------------------------------------


def pixel_bounds(ds: ImageDataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) float32 (1, C, 1, 1): pixel values 0 and 1 in ``ds``'s normalised space."""
    mean = torch.tensor(ds.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(ds.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return -mean / std, (1 - mean) / std


class RunState:
    """Everything a distillation run changes as it goes (after nanoGPT's train.py: state_dicts in one dict).

    The D_distill pixels and eta with their SGD-with-momentum optimizers,
    the CPU generator that every random draw comes from, the iteration count
    and the history. :meth:`state_dict` is what a checkpoint holds, so a run
    restored with :meth:`load_state_dict` continues bit for bit on CPU.

    Args:
        images: float32 (n, C, H, W), the initial set in normalised space on the
            run's device; rows outside ``rows`` (D_select) are only read.
        rows: int64 (d,) positions of the D_distill rows in ``images``.
        dc: The ``distill`` settings (``lr_teacher`` starts eta; ``lr_img``,
            ``lr_lr`` and ``momentum`` set the optimizers).
        seed: Seed of the generator.
        image_optimizer: Builds the pixels' optimizer from the (d, C, H, W) leaf tensor (the base
            method's, see ``distill.METHODS``); None: SGD with ``dc.lr_img`` and ``dc.momentum``.
        bounds: (low, high) float32 (1, C, 1, 1) in normalised space: the pixels are clamped to them after
            every step (``distill.clip``); None: never clamped.
    """

    def __init__(self, images: torch.Tensor, rows: torch.Tensor, dc: DistillConfig, seed: int,
                 image_optimizer: Callable[[torch.Tensor], torch.optim.Optimizer] | None = None,
                 bounds: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self.base = images
        self.rows = rows
        self.bounds = bounds
        self.pixels = images[rows].clone().requires_grad_(True)  # (d, C, H, W): the only pixels that learn
        self.lr = torch.tensor(dc.lr_teacher, device=images.device, requires_grad=True)  # eta ()
        self.opt_img = (torch.optim.SGD([self.pixels], lr=dc.lr_img, momentum=dc.momentum) if image_optimizer is None
                        else image_optimizer(self.pixels))
        self.opt_lr = torch.optim.SGD([self.lr], lr=dc.lr_lr, momentum=dc.momentum)
        self.generator = torch.Generator().manual_seed(seed)
        self.iteration = 0
        self.losses: list[float] = []
        self.evals: list[tuple[int, float]] = []
        self.initial = self.pixels.detach().clone()  # (d, C, H, W): x0 of the activity record's pixel change
        self.activity: list[dict[str, Any]] = []

    def images(self) -> torch.Tensor:
        """float32 (n, C, H, W): the current set, D_select rows as given and D_distill rows as learned."""
        return self.base.index_put((self.rows,), self.pixels.detach())

    def step(self, out: MatchOutput) -> tuple[float, float]:
        """Apply one iteration's gradients to the pixels and eta and :meth:`finish` it.

        Sync point: reads the loss and eta from the device.
        """
        self.move(out.grad_images)
        self.lr.grad = out.grad_lr.reshape(())
        self.opt_lr.step()
        return self.finish(out.loss)

    def move(self, grad_images: torch.Tensor) -> None:
        """One pixel-optimizer step with dL/dimages (n, C, H, W): only the D_distill rows move (the partial update)."""
        self.pixels.grad = grad_images[self.rows]
        self.opt_img.step()
        if self.bounds is not None:
            with torch.no_grad():
                self.pixels.clamp_(*self.bounds)

    def finish(self, loss: torch.Tensor) -> tuple[float, float]:
        """Count an iteration whose loss (scalar tensor) was ``loss``; return (loss, eta). Sync point."""
        self.iteration += 1
        value, eta = torch.stack([loss.float(), self.lr.detach().float()]).tolist()
        self.losses.append(value)
        return value, eta

    def record(self, coverage: Mapping[str, float] | None = None) -> dict[str, Any]:
        """Append and return the activity-record entry of the current iteration (see :mod:`autoselmatch.synset`).

        Loss ratio of the losses so far (:func:`~autoselmatch.synset.loss_ratio`), eta, and the
        mean |x - x0| over the D_distill pixels: normalised pixels are in units of the data's std,
        so this is the mean change in stds. ``coverage``: entries to add (``coverage_easy``, ...).
        Sync point.
        """
        change = float((self.pixels.detach() - self.initial).abs().mean()) if self.pixels.numel() else 0.0
        point = {"iteration": self.iteration, "loss_ratio": loss_ratio(self.losses),
                 "eta": float(self.lr.detach()), "pixel_change": change, **(coverage or {})}
        self.activity.append(point)
        return point

    def state_dict(self) -> dict[str, Any]:
        """Tensors (CPU), numbers and lists: loads with ``weights_only=True``.

        As with torch's own state_dicts, the tensors may be the live ones: save
        the dict (or deep-copy it) before the run takes another step.
        """
        return {
            "iteration": self.iteration,
            "pixels": self.pixels.detach().cpu(),
            "lr": self.lr.detach().cpu(),
            "opt_img": self.opt_img.state_dict(),
            "opt_lr": self.opt_lr.state_dict(),
            "generator": self.generator.get_state(),
            "losses": torch.tensor(self.losses, dtype=torch.float64),
            "evals": [[i, a] for i, a in self.evals],
            "activity": [dict(point) for point in self.activity],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of a run on the same initial set."""
        with torch.no_grad():
            self.pixels.copy_(state["pixels"].to(self.pixels.device))
            self.lr.copy_(state["lr"].to(self.lr.device))
        self.opt_img.load_state_dict(state["opt_img"])
        self.opt_lr.load_state_dict(state["opt_lr"])
        self.generator.set_state(state["generator"])
        self.iteration = int(state["iteration"])
        self.losses = [float(v) for v in state["losses"].tolist()]
        self.evals = [(int(i), float(a)) for i, a in state["evals"]]
        self.activity = [dict(point) for point in state.get("activity", [])]  # absent in older checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """``checkpoint.pt``: ``{"version", "fingerprint", **RunState.state_dict()}``, written atomically.

    Args:
        path: The file; None: a run without checkpoints (:meth:`save` does nothing).
        fingerprint: What the run shares with any run that may resume it (:func:`_fingerprint`).
    """

    path: Path | None
    fingerprint: str

    def save(self, state: RunState) -> None:
        if self.path is not None:
            blob = {"version": CHECKPOINT_VERSION, "fingerprint": self.fingerprint, **state.state_dict()}
            save_torch(blob, self.path)

    def restore(self, state: RunState) -> bool:
        """Load the file into ``state`` if it exists (True); refuse one made with other settings."""
        if self.path is None or not self.path.is_file():
            return False
        blob = load_torch(self.path, what="distillation checkpoint", remedy="delete it to start over")
        if blob.get("version") != CHECKPOINT_VERSION or blob.get("fingerprint") != self.fingerprint:
            raise InvalidArgument(f"checkpoint {self.path} was made with other settings (dataset, seed, distill "
                                  f"settings, experts or initial set differ); use another output folder or start "
                                  f"without --resume")
        state.load_state_dict(blob)
        return True


# --------------------------------------------------------------------------------------------
# The distillation loop
# --------------------------------------------------------------------------------------------


def quick_evaluator(ds: ImageDataset, cfg: RunConfig, *, runs: int = 1, fraction: float | None = None) -> Evaluator:
    """Mean validation accuracy of ``runs`` networks (seeds ``cfg.seed``, ``cfg.seed + 1``, ...) trained
    on the set for ``fraction`` of the budget (None: ``evaluate.quick_fraction``), by the protocol of
    ``cfg.distill.method`` (:func:`evaluate_distilled`)."""
    fraction = cfg.evaluate.quick_fraction if fraction is None else fraction

    def evaluate(images: torch.Tensor, labels: torch.Tensor, distill_mask: torch.Tensor) -> float:
        result = evaluate_distilled(ds, images, labels, cfg, distill_mask=distill_mask, split="val", runs=runs,
                                    fraction=fraction, seed=cfg.seed)
        return float(result.mean)

    return evaluate


def evaluate_distilled(ds: ImageDataset, images: torch.Tensor, labels: torch.Tensor, cfg: RunConfig, *,
                       distill_mask: torch.Tensor | None = None, split: str = "val", runs: int | None = None,
                       fraction: float = 1.0, seed: int = 0, cached: bool = False) -> EvalResult:
    """A set evaluated by the protocol of its base method ``cfg.distill.method`` (``distill.METHODS``):
    :func:`autoselmatch.evaluate.evaluate_set` on its hard labels (``mtt``, ``dsa``), or training against
    the teacher's soft outputs (``sre2l``). Arguments as in ``evaluate_set``; ``runs`` None: ``evaluate.runs``;
    ``cached``: the method may only use what is cached (an SRe2L teacher is loaded, never trained: a missing
    one is a one-line error naming the command that trains it)."""
    from ..evaluate import evaluate_set

    runs = cfg.evaluate.runs if runs is None else runs
    method = METHODS.get(cfg.distill.method)
    if method.evaluate is not None:
        return method.evaluate(ds, images, labels, cfg, distill_mask=distill_mask, split=split, runs=runs,
                               fraction=fraction, seed=seed, cached=cached)
    return evaluate_set(ds, images, labels, cfg=cfg.evaluate, distill_mask=distill_mask, split=split, runs=runs,
                        fraction=fraction, seed=seed)


def saved_set_config(cfg: RunConfig, settings: Mapping[str, Any]) -> RunConfig:
    """``cfg`` with what the base method of a saved set needs to evaluate it by its protocol.

    ``settings`` are the set's (:attr:`SyntheticSet.settings`; :func:`distill` stores the whole run
    config under ``"config"``). For a set of a method whose evaluation is not ``hard-labels`` (``sre2l``),
    the ``distill`` and ``experts`` sections and the seed come from the settings it was made with (they
    decide which cached teacher it belongs to); everything else (``evaluate``, data, device, cache) stays
    ``cfg``'s. A set without ``distill.method`` (made before it existed, or not distilled) is MTT's, and
    ``cfg`` is returned with ``distill.method = "mtt"``.
    """
    stored = settings.get("config") if isinstance(settings.get("config"), Mapping) else {}
    distill = stored.get("distill") if isinstance(stored.get("distill"), Mapping) else {}
    method = str(distill.get("method", "mtt"))
    if METHODS.get(method).evaluation == "hard-labels":
        return dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, method=method))
    return dataclasses.replace(cfg, seed=int(stored.get("seed", settings.get("seed", cfg.seed))),
                               distill=from_dict(DistillConfig, dict(distill), "distill"),
                               experts=from_dict(ExpertConfig, dict(stored.get("experts", {})), "experts"))


def coverage_probe(ds: ImageDataset, cfg: RunConfig, device: torch.device) -> CoverageProbe:
    """Coverage of the test set's easy and hard halves by a set (``distill.coverage_every``, paper Figure 7).

    Returns ``images (n, C, H, W), normalised -> {"coverage", "coverage_easy", "coverage_hard"}``
    in the feature space of :func:`autoselmatch.coverage.distill_reference`. Cost: the first call
    trains that reference network on the whole training split (one full-data training run, as
    long as ``bench reproduce``'s ``full`` row) unless ``cfg.cache_path`` holds it; every call
    then embeds the set and computes its distances to the M test samples.
    """
    from ..coverage import Reference, distill_reference, set_coverage

    reference: Reference | None = None

    def measure(images: torch.Tensor) -> dict[str, float]:
        nonlocal reference
        if reference is None:
            reference = distill_reference(ds, cfg, device)
        result = set_coverage(reference, images)
        return {"coverage": result.coverage, "coverage_easy": result.easy, "coverage_hard": result.hard}

    return measure


def distill(
    ds: ImageDataset,
    *,
    cfg: RunConfig,
    experts: ExpertSource | None,
    init_images: torch.Tensor,
    labels: torch.Tensor,
    distill_mask: torch.Tensor,
    indices: torch.Tensor | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    callback: Callback | None = None,
    evaluator: Evaluator | None = None,
    settings: Mapping[str, Any] | None = None,
    coverage: CoverageProbe | None = None,
) -> SyntheticSet:
    """Run the base method ``cfg.distill.method`` on an initial synthetic set; update only the ``distill_mask`` rows.

    ``mtt``: each iteration draws an expert and a start epoch t < T+ (``experts.sample``),
    runs N student steps from theta*_t on minibatches of the whole set with
    DSA, and takes one SGD-with-momentum step on the D_distill pixels
    and on eta against loss (1). ``dsa``: each iteration matches a fresh network's
    per-class gradients on the set and on real batches (``distill.METHODS``).
    All randomness comes from one generator seeded with ``cfg.seed`` (batches,
    augmentation seeds, expert draws, network inits), so a run is reproducible
    and a resumed run continues bit for bit on CPU.

    Args:
        ds: The dataset (names, classes, normalisation, image shape).
        cfg: Run settings; ``cfg.distill`` drives the loop, ``cfg.experts.model``
            is the student architecture, ``cfg.seed`` and ``cfg.device`` apply.
        experts: Expert trajectories for ``cfg.experts`` on ``ds``; may be
            None when nothing is to be distilled (no True in the mask) or the
            method needs none.
        init_images: float (n, C, H, W) in normalised space.
        labels: int64 (n,) hard labels.
        distill_mask: bool (n,): rows that are updated (D_distill).
        indices: Optional int64 (n,) training-set indices the rows came from (kept in the result).
        checkpoint_dir: Where ``checkpoint.pt`` is written every
            ``distill.checkpoint_every`` iterations (None: no checkpoints).
        resume: Continue from ``checkpoint_dir/checkpoint.pt`` if present; its
            settings must match (``distill.iterations`` may differ, to extend a run).
        callback: Called after every iteration with a :class:`DistillStep`;
            an exception it raises (e.g. ``optuna.TrialPruned``) propagates
            after a checkpoint of the finished iteration is written.
        evaluator: ``(images, labels, distill_mask) -> accuracy``, run every
            ``distill.eval_every`` iterations and at the end; None uses
            :func:`quick_evaluator` when ``eval_every > 0``.
        settings: Extra settings stored with the result (ipc, alpha, beta, ...).
        coverage: ``images -> {"coverage", "coverage_easy", "coverage_hard"}``, run every
            ``distill.coverage_every`` iterations and at the end; None uses :func:`coverage_probe`
            when ``coverage_every > 0``.

    The result's activity record (:mod:`autoselmatch.synset`) gets an entry at the
    start (iteration 0), every ``eval_every`` and ``coverage_every`` iterations and at the end.

    Raises:
        InvalidArgument: Bad shapes, batch larger than the set, experts too short.
        DataError: Experts missing or made for another dataset or model.
        TrainingDiverged: The loss became NaN/inf or eta became <= 0.
    """
    device = resolve_device(cfg.device)
    dc = cfg.distill
    if resume and checkpoint_dir is None:
        raise InvalidArgument("resume=True needs the checkpoint_dir to resume from")
    _check_set(ds, init_images, labels, distill_mask)
    provenance = {"dataset": ds.name, "classes": tuple(ds.classes), "mean": tuple(ds.mean), "std": tuple(ds.std),
                  "settings": _settings(ds, cfg, settings), "indices": indices.cpu() if indices is not None else None}
    rows = torch.nonzero(distill_mask.cpu()).flatten()
    if len(rows) == 0:  # nothing to learn: the initial set is the answer (alpha = 0)
        return SyntheticSet(init_images.detach().cpu().float().clone(), labels.cpu().clone(),
                            distill_mask.cpu().clone(), eta=dc.lr_teacher, **provenance,
                            activity=[{"iteration": 0, "loss_ratio": None, "eta": dc.lr_teacher, "pixel_change": 0.0}])
    method = METHODS.get(dc.method)
    run_labels = labels.to(device).long()  # (n,)
    experts = experts if method.needs == "experts" else None
    objective = method.build(ds, cfg, run_labels, device, experts)
    if evaluator is None and dc.eval_every > 0:
        evaluator = quick_evaluator(ds, cfg)
    if coverage is None and dc.coverage_every > 0:
        coverage = coverage_probe(ds, cfg, device)

    state = RunState(init_images.detach().to(device, torch.float32).clone(), rows.to(device), dc, cfg.seed,
                     image_optimizer=lambda pixels: method.optimizer(pixels, dc),
                     bounds=pixel_bounds(ds, device) if dc.clip else None)
    checkpoint = Checkpoint(Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None,
                            _fingerprint(ds, cfg, experts, init_images, labels, distill_mask))
    if resume and checkpoint.restore(state):
        LOG.info("resuming distillation from %s at iteration %d", checkpoint.path, state.iteration)

    def record(final: bool = False) -> None:
        at_coverage = coverage is not None and (final or state.iteration % dc.coverage_every == 0)
        point = state.record(coverage(state.images()) if at_coverage else None)
        covered = f", coverage easy {point['coverage_easy']:.3f} / hard {point['coverage_hard']:.3f}" \
            if at_coverage and point.get("coverage_easy") is not None else ""
        LOG.info("iteration %d: loss ratio %s, eta %.4g, pixel change %.4f std%s", state.iteration,
                 "-" if point["loss_ratio"] is None else f"{point['loss_ratio']:.3f}", point["eta"],
                 point["pixel_change"], covered)

    if state.iteration == 0 and not state.activity:
        record()
    bar: Any = progress(range(state.iteration, dc.iterations), desc="distill", total=dc.iterations - state.iteration)
    draws = before = None
    try:  # whatever stops the run (Ctrl-C, a callback's exception) leaves a checkpoint of the last finished iteration
        for _ in bar:
            draws = state.generator.get_state()  # an unfinished iteration reruns from the same draws
            before = None if objective.atomic else copy.deepcopy(state.state_dict())  # ... and the same set
            loss, eta = objective(state)
            draws = before = None
            _check_diverged(loss, eta, state.iteration, dc)

            at_eval = dc.eval_every > 0 and (state.iteration % dc.eval_every == 0 or state.iteration == dc.iterations)
            accuracy = None
            if evaluator is not None and at_eval:
                accuracy = float(evaluator(state.images(), run_labels, distill_mask.to(device)))
                state.evals.append((state.iteration, accuracy))
                LOG.info("iteration %d: loss %.4f, eta %.4g, quick validation accuracy %.2f %%", state.iteration,
                         loss, eta, 100 * accuracy)
            if at_eval or (dc.coverage_every > 0 and state.iteration % dc.coverage_every == 0):
                record(final=state.iteration == dc.iterations)  # the last iteration is recorded after the loop too
            shown = {"loss": f"{loss:.4f}", "eta": f"{eta:.3g}"}
            if state.evals:  # no val column before the first evaluation
                shown["val"] = f"{100 * state.evals[-1][1]:.2f} %"
            if state.activity and state.activity[-1]["loss_ratio"] is not None:  # the loss ratio at the last record
                shown["ratio"] = f"{state.activity[-1]['loss_ratio']:.3f}"
            bar.set_postfix(refresh=False, **shown)
            if dc.checkpoint_every > 0 and state.iteration % dc.checkpoint_every == 0:
                checkpoint.save(state)
            if callback is not None:
                callback(DistillStep(state.iteration, loss, eta, accuracy))
    except TrainingDiverged:
        raise  # the state holds the diverged step: no checkpoint of it
    except BaseException:
        if before is not None:
            state.load_state_dict(before)
        elif draws is not None:
            state.generator.set_state(draws)
        checkpoint.save(state)
        raise
    if not state.activity or state.activity[-1]["iteration"] != state.iteration:  # e.g. resumed at its end
        record(final=True)
    checkpoint.save(state)
    return SyntheticSet(state.images().cpu(), labels.cpu().long(), distill_mask.cpu().bool(),
                        eta=float(state.lr.detach()), loss_history=list(state.losses), evals=list(state.evals),
                        iterations=state.iteration, activity=list(state.activity), **provenance)


def _check_diverged(loss: float, eta: float, iteration: int, dc: DistillConfig) -> None:
    """Raise :class:`TrainingDiverged` when the matching loss is not finite or eta is not positive."""
    if not math.isfinite(loss):
        raise TrainingDiverged(f"distillation diverged at iteration {iteration}: matching loss is {loss}; "
                               f"lower distill.lr_img ({dc.lr_img}) or distill.lr_lr ({dc.lr_lr})")
    if not eta > 0:
        raise TrainingDiverged(f"distillation diverged at iteration {iteration}: learned lr eta became {eta:.3g}; "
                               f"lower distill.lr_lr ({dc.lr_lr})")


def _check_set(ds: ImageDataset, images: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> None:
    if images.dim() != 4 or tuple(images.shape[1:]) != ds.image_shape:
        raise InvalidArgument(f"init_images must be (n, {', '.join(map(str, ds.image_shape))}) for {ds.name}, "
                              f"got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise InvalidArgument(f"init_images must be float in normalised space (see ds.normalize), got {images.dtype}")
    if labels.shape != (len(images),):
        raise InvalidArgument(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= ds.num_classes):
        raise InvalidArgument(f"labels must be in [0, {ds.num_classes - 1}], got [{int(labels.min())}, {int(labels.max())}]")
    if mask.shape != (len(images),) or mask.dtype != torch.bool:
        raise InvalidArgument(f"distill_mask must be bool of shape ({len(images)},), got {mask.dtype} {tuple(mask.shape)}")


def _settings(ds: ImageDataset, cfg: RunConfig, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    values: dict[str, Any] = {"dataset": ds.name, "seed": cfg.seed, "config": to_dict(cfg)}
    values.update(extra or {})
    return values


def _tensor_digest(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _fingerprint(ds: ImageDataset, cfg: RunConfig, experts: ExpertSource | None, images: torch.Tensor,
                 labels: torch.Tensor, mask: torch.Tensor) -> str:
    """What a checkpoint must share with the run that resumes it (the iteration budget and what is
    only observed, such as evaluations and coverage, may differ).

    A setting added since checkpoints were first written is left out at the value older releases
    used (:func:`~autoselmatch.config.key_dict`), so a checkpoint of an older release still resumes.
    """
    dc = {**key_dict("distill", cfg.distill), **method_revision(cfg.distill)}
    for key in ("iterations", "eval_every", "checkpoint_every", "coverage_every"):
        dc.pop(key, None)
    return stable_hash({
        "dataset": ds.name, "seed": cfg.seed, "distill": dc, "model": cfg.experts.model.to_dict(),
        "experts": None if experts is None else {"key": experts.manifest.get("key"),
                                                 "num_experts": experts.num_experts, "num_params": experts.num_params},
        "init": _tensor_digest(images, labels, mask),
    })
