"""Evaluation engine: train a fresh network on a (synthetic) set, measure accuracy, and coverage.

Every number the tool reports and every trial it scores comes from here.

    result = evaluate_set(ds, images, labels, cfg=cfg.evaluate, distill_mask=mask, split="val")
    print(f"{100 * result.mean:.2f} ± {100 * result.std:.2f} % over {result.runs} runs")

Training (:func:`train_network`) keeps the set on the device and draws each
batch as an index slice of a per-epoch permutation, generated on the device,
so the hot loop never reads a GPU value: the split of a batch into D_distill
and D_select rows is fixed by the host (each batch takes its share of each
group, see :func:`batch_plan`), DSA strategies are drawn on the host, and the
loss is checked for NaN/inf once per epoch (or per ~50 steps for tiny sets).

The budget (:func:`budget_steps`) is ``cfg.steps``, else ``cfg.epochs``
passes over the set, else ``cfg.budget_fraction`` of a named rule; ``paper``
is SelMatch's "25 % of the optimizer steps of 200 epochs on the full training
set". Every :class:`EvalResult` states its steps as a share of that rule.

Coverage (:func:`coverage`, SelMatch Sec. 3.2) is the fraction of real test
samples that lie within radius r of some synthetic sample in a trained
network's feature space, r being the mean nearest-neighbour distance among
real training samples; it is computed in blocks with a running minimum.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import augment_grouped
from .config import EvalConfig
from .data import ImageDataset
from .errors import InvalidArgument, TrainingDiverged
from .models import stack_models
from .registry import Registry
from .runtime import LOG, progress

EpochCallback = Callable[[int, nn.Module], None]

# Loss is checked for NaN/inf at the end of an epoch once this many steps have passed since the last check.
DIVERGENCE_CHECK_STEPS = 50

# --------------------------------------------------------------------------------------------
# Budget
# --------------------------------------------------------------------------------------------

BUDGET_RULES: Registry[Callable[[int, int, int], int]] = Registry("budget rule")


@BUDGET_RULES.register("paper")
def paper_budget(n_set: int, n_full: int, batch_size: int) -> int:
    """SelMatch's evaluation budget: 25 % of the optimizer steps of 200 epochs on the full training set.

    That is 1000 / 500 / 250 / 167 epochs of a set holding 5 / 10 / 20 / 30 % of the data.
    """
    return math.ceil(0.25 * 200 * math.ceil(n_full / batch_size))


def batch_bounds(n: int, batch_size: int) -> list[int]:
    """Cumulative batch boundaries [0, b, 2b, ..., n] of one epoch over ``n`` samples.

    A last batch of one sample is merged into the one before it (BatchNorm
    cannot train on a single sample).
    """
    bounds = list(range(0, n, batch_size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    return bounds


def budget_steps(cfg: EvalConfig, *, n_set: int, n_full: int, fraction: float = 1.0, rule: str = "paper") -> int:
    """Optimizer steps of one training run.

    Args:
        cfg: Evaluation settings: ``steps`` wins, then ``epochs`` (passes over the set), then
            ``budget_fraction`` of ``rule``.
        n_set: Images in the set being evaluated.
        n_full: Images in the full training set (used by the ``paper`` rule).
        fraction: Share of the budget to use, in (0, 1]; < 1 is the few-epoch mode of search objectives.
        rule: Name of the rule in :data:`BUDGET_RULES` used when neither steps nor epochs is set.

    Returns:
        ``ceil(budget * fraction)``, at least 1.
    """
    if n_set < 1:
        raise InvalidArgument(f"n_set must be >= 1, got {n_set}")
    if n_full < 1:
        raise InvalidArgument(f"n_full must be >= 1, got {n_full}")
    if not 0.0 < fraction <= 1.0:
        raise InvalidArgument(f"fraction must be in (0, 1], got {fraction}")
    if cfg.steps is not None:
        steps = cfg.steps
    elif cfg.epochs is not None:
        steps = cfg.epochs * (len(batch_bounds(n_set, cfg.batch_size)) - 1)
    else:
        steps = max(1, math.ceil(BUDGET_RULES.get(rule)(n_set, n_full, cfg.batch_size) * cfg.budget_fraction))
    return max(1, math.ceil(steps * fraction))


def paper_share(steps: int, *, n_full: int, batch_size: int) -> float:
    """``steps`` as a share of the paper's budget (:func:`paper_budget`) on a training set of ``n_full`` images."""
    return steps / paper_budget(n_full, n_full, batch_size)


def budget_text(steps: int, share: float | None) -> str:
    """``"5575 steps per network = 25 % of the paper's budget"``: how tables and summaries state a budget."""
    of_paper = "" if share is None else f" = {100 * share:.3g} % of the paper's budget"
    return f"{steps} steps per network{of_paper}"


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchPlan:
    """How one epoch is cut into batches when the set is ordered D_distill first.

    Each batch takes a share of each group proportional to the group's size,
    so the host knows how many leading rows of a batch are D_distill without
    reading the device.

    Attributes:
        distill_bounds: Cumulative boundaries into the D_distill permutation, one per batch edge.
        select_bounds: Cumulative boundaries into the D_select permutation.
    """

    distill_bounds: list[int]
    select_bounds: list[int]

    @property
    def num_batches(self) -> int:
        return len(self.distill_bounds) - 1


def batch_plan(n_distill: int, n_select: int, batch_size: int) -> BatchPlan:
    """Cut an epoch of ``n_distill + n_select`` samples into batches of ``batch_size`` (see :class:`BatchPlan`)."""
    n = n_distill + n_select
    bounds = batch_bounds(n, batch_size)
    distill = [round(b * n_distill / n) for b in bounds]
    return BatchPlan(distill, [b - d for b, d in zip(bounds, distill)])


def train_network(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    cfg: EvalConfig,
    steps: int,
    distill_mask: torch.Tensor | None = None,
    seed: int = 0,
    epoch_callback: EpochCallback | None = None,
    device: torch.device | str | None = None,
    flip: bool = True,
) -> nn.Module:
    """Train a fresh ``cfg.model`` from scratch on a tensor set for ``steps`` optimizer steps.

    One network of :func:`train_networks` (same arguments, ``seeds=[seed]``).

    Returns:
        The trained model, in eval mode.
    """
    return train_networks(images, labels, num_classes=num_classes, cfg=cfg, steps=steps, distill_mask=distill_mask,
                          seeds=[seed], epoch_callback=epoch_callback, device=device, flip=flip)


def train_networks(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    cfg: EvalConfig,
    steps: int,
    distill_mask: torch.Tensor | None = None,
    seeds: Sequence[int] = (0,),
    epoch_callback: EpochCallback | None = None,
    device: torch.device | str | None = None,
    flip: bool = True,
) -> nn.Module:
    """Train ``len(seeds)`` fresh ``cfg.model`` networks from scratch at once, each as if alone.

    SGD with ``cfg.momentum``/``cfg.weight_decay``, learning rate ``cfg.lr``
    annealed to 0 by a per-step cosine schedule, batches of ``cfg.batch_size``,
    augmentation ``cfg.augment`` (``combined``: DSA on D_distill rows, one
    strategy per image, simple crop+flip on the others), optional
    channels_last, bf16 autocast (CUDA or CPU) and ``torch.compile`` of the
    model in ``cfg.compile_mode``. Network r
    takes its initialisation, batch order and augmentation from ``seeds[r]``
    alone; the k networks are stacked (:func:`~autoselmatch.models.stack_models`)
    and trained on the sum of their losses, which gives each the gradients it
    would get alone.

    Args:
        images: Float (n, C, H, W) in normalised space.
        labels: Int64 (n,) in [0, num_classes), or float (n, num_classes) class probabilities
            (soft labels: the loss is the soft cross-entropy ``-sum_k p_k log softmax(logits)_k``).
        num_classes: Output logits of the model.
        cfg: Evaluation settings.
        steps: Optimizer steps (see :func:`budget_steps`), >= 1.
        distill_mask: Bool (n,), True for D_distill rows; ``None``: all rows are selected real images.
        seeds: One seed per network: model initialisation, batch order and augmentation.
        epoch_callback: Called as ``epoch_callback(epoch, model)`` after each epoch (``epoch`` counts
            from 0; the last one may be partial); one network only. Exceptions it raises (e.g.
            ``optuna.TrialPruned``) propagate.
        device: Where to train; default ``images.device``.
        flip: Whether the simple augmentation mirrors (``ImageDataset.flip``); DSA is unaffected.

    Returns:
        The trained networks, in eval mode: the model itself for one seed, else the stacked
        model (input (B, k * C, H, W), logits (B, k * num_classes); see :func:`accuracies`).

    Raises:
        TrainingDiverged: The loss of some network became NaN or infinite.
    """
    device = torch.device(device) if device is not None else images.device
    n, channels, height, width = images.shape
    k = len(seeds)
    if steps < 1:
        raise InvalidArgument(f"steps must be >= 1, got {steps}")
    if n < 1:
        raise InvalidArgument("cannot train on an empty set")
    if k < 1:
        raise InvalidArgument("train_networks needs at least one seed")
    if k > 1 and epoch_callback is not None:
        raise InvalidArgument(f"an epoch_callback watches one network, got {k} seeds")
    mask = torch.zeros(n, dtype=torch.bool) if distill_mask is None else distill_mask.detach().to("cpu", torch.bool)

    # Order the set D_distill first, once (the only host read of the mask).
    order = torch.argsort((~mask).to(torch.int8), stable=True)
    n_distill = int(mask.sum())
    order = order.to(device)
    x_all = images.detach().to(device)[order]  # (n, C, H, W)
    soft = labels.dim() == 2
    y_all = labels.to(device, torch.float32 if soft else torch.long)[order]  # (n,), or (n, num_classes) soft
    plan = batch_plan(n_distill, n - n_distill, cfg.batch_size)

    models = []
    with torch.random.fork_rng(devices=[]):  # model init from each seed, caller's RNG untouched
        for seed in seeds:
            torch.manual_seed(seed)
            models.append(cfg.model.build(channels=channels, num_classes=num_classes, image_size=height))
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = stack_models(models).to(device=device, memory_format=memory_format).train()
    # One static graph per batch size (a full batch and the epoch's last one); shares the module's parameters.
    forward = torch.compile(model, mode=cfg.compile_mode, dynamic=False) if cfg.compile else model
    use_amp = cfg.amp and device.type in ("cuda", "cpu")

    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    host_gens = [torch.Generator().manual_seed(seed) for seed in seeds]  # DSA strategy draws (host side, no sync)
    device_gens = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]  # order and augmentation

    loss_sum = torch.zeros((), device=device)  # non-finite once any step's loss was NaN or infinite
    step, epoch, last_check = 0, 0, 0
    while step < steps:
        perms = [(torch.randperm(n_distill, generator=g, device=device),
                  n_distill + torch.randperm(n - n_distill, generator=g, device=device)) for g in device_gens]
        for b in range(plan.num_batches):
            if step == steps:
                break
            d0, d1 = plan.distill_bounds[b], plan.distill_bounds[b + 1]
            s0, s1 = plan.select_bounds[b], plan.select_bounds[b + 1]
            xs, ys = [], []
            for (distill_perm, select_perm), host_gen, device_gen in zip(perms, host_gens, device_gens):
                idx = torch.cat([distill_perm[d0:d1], select_perm[s0:s1]])  # (B,)
                xs.append(augment_grouped(x_all[idx], d1 - d0, cfg.augment, generator=device_gen,
                                          host_generator=host_gen, flip=flip))
                ys.append(y_all[idx])
            x = (xs[0] if k == 1 else torch.cat(xs, dim=1)).contiguous(memory_format=memory_format)  # (B, k*C, H, W)
            # (B * k,) or (B * k, num_classes) soft; row b * k + r: network r, sample b
            y = ys[0] if k == 1 else torch.stack(ys, dim=1).flatten(0, 1)
            if cfg.compile:
                torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are no longer read
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = forward(x).view(-1, num_classes)  # (B * k, classes), rows as in y
                loss = F.cross_entropy(logits, y)
                if k > 1:
                    loss = loss * k  # the sum of each network's mean loss
            loss_sum += loss.detach()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
        if epoch_callback is not None or step == steps or step - last_check >= DIVERGENCE_CHECK_STEPS:
            last_check = step
            if not math.isfinite(loss_sum.item()):  # sync point: reads a GPU value, once per epoch at most
                raise TrainingDiverged(
                    f"training {cfg.model.name} diverged: non-finite loss by epoch {epoch} (step <= {step}); "
                    f"check the images for NaN/inf or lower evaluate.lr (now {cfg.lr})"
                )
        if epoch_callback is not None:
            epoch_callback(epoch, model)
            model.train()
        epoch += 1
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 1024) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` (in eval mode) on float (n, C, H, W) images; mode is restored."""
    return accuracies(model, images, labels, networks=1, batch_size=batch_size)[0]


@torch.no_grad()
def accuracies(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, networks: int,
               batch_size: int = 1024) -> list[float]:
    """Top-1 accuracy in [0, 1] of each of the ``networks`` stacked in ``model`` (see :func:`train_networks`).

    Every network sees the float (n, C, H, W) ``images``; the model is used in eval mode and its mode restored.
    """
    return hit_rates(hits(model, images, labels, networks=networks, batch_size=batch_size))


def hit_rates(correct: torch.Tensor) -> list[float]:
    """Accuracy in [0, 1] of each row of a (networks, n) bool :func:`hits` record (one read of the device)."""
    return [int(c) / correct.shape[1] for c in correct.sum(1).tolist()]


@torch.no_grad()
def hits(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, networks: int,
         batch_size: int = 1024) -> torch.Tensor:
    """(networks, n) bool: whether each of the ``networks`` stacked in ``model`` classifies each of the
    float (n, C, H, W) ``images`` correctly (eval mode; the model's mode is restored)."""
    if len(images) != len(labels):
        raise InvalidArgument(f"{len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise InvalidArgument("cannot measure accuracy on an empty set")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    parts = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)  # (B, C, H, W)
        y = labels[start:start + batch_size].to(device)
        stacked = x if networks == 1 else x.repeat(1, networks, 1, 1)  # (B, k * C, H, W)
        logits = model(stacked).view(len(x), networks, -1)  # (B, k, classes)
        parts.append(logits.argmax(2) == y[:, None])  # (B, k)
    model.train(was_training)
    return torch.cat(parts).T


# --------------------------------------------------------------------------------------------
# Evaluating a set
# --------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """Accuracy of networks trained from scratch on one set.

    Attributes:
        mean: Mean accuracy over runs, in [0, 1].
        std: Population standard deviation over runs (0 for one run).
        accuracies: Accuracy of each run, seeds ``seed, seed + 1, ...``.
        split: ``val`` or ``test``.
        steps: Optimizer steps per run.
        epochs: Passes over the set per run (the last may be partial).
        seconds: Wall time of all runs (training and measuring).
        runs: Number of networks trained.
        n_images: Size of the evaluated set.
        n_distill: Rows of the set that are D_distill (get DSA under ``combined``).
        model: Model name.
        augment: Augmentation name.
        seed: Seed of the first run.
        train_seconds: Wall time of each run, training and measuring (runs trained together share
            their group's time equally).
        paper_share: ``steps`` as a share of the paper's budget rule on this dataset
            (:func:`paper_share`; ``None`` in records written before it existed).
        image_hits: (m,) int, for each image of the split, how many of the runs classified it
            correctly (``None``: not measured). Sets scored on the same split compare image by
            image with it; it stays out of :meth:`to_dict` (one number per image).
    """

    mean: float
    std: float
    accuracies: list[float]
    split: str
    steps: int
    epochs: float
    seconds: float
    runs: int
    n_images: int
    n_distill: int
    model: str
    augment: str
    seed: int
    train_seconds: list[float] = field(default_factory=list)
    paper_share: float | None = None
    image_hits: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        record = asdict(replace(self, image_hits=None))  # no deep copy of the tensor
        del record["image_hits"]
        return record


def check_set(ds: ImageDataset, images: torch.Tensor, labels: torch.Tensor, distill_mask: torch.Tensor | None) -> None:
    """Raise :class:`InvalidArgument` unless ``images``/``labels`` form a trainable set for ``ds``.

    ``labels`` are int (n,), every class present, or float (n, num_classes) class probabilities.
    """
    expected = ds.image_shape
    if images.dim() != 4 or tuple(images.shape[1:]) != expected:
        raise InvalidArgument(
            f"images must have shape (n, {', '.join(map(str, expected))}) for dataset {ds.name}, got {tuple(images.shape)}"
        )
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise InvalidArgument(f"images must be uint8 pixels or float normalised values, got {images.dtype}")
    if labels.dim() == 2 and labels.is_floating_point():  # soft labels: class probabilities
        if tuple(labels.shape) != (len(images), ds.num_classes):
            raise InvalidArgument(f"soft labels must have shape ({len(images)}, {ds.num_classes}) for dataset "
                                  f"{ds.name}, got {tuple(labels.shape)}")
        if not bool(torch.isfinite(labels).all()) or bool((labels < 0).any()):
            raise InvalidArgument("soft labels must be finite class probabilities (>= 0)")
        if len(labels) == 0:
            raise InvalidArgument("the set is empty")
    else:
        _check_hard_labels(ds, images, labels)
    if distill_mask is not None and (distill_mask.dtype != torch.bool or tuple(distill_mask.shape) != (len(images),)):
        raise InvalidArgument(
            f"distill_mask must be a bool tensor of shape ({len(images)},), got {distill_mask.dtype} {tuple(distill_mask.shape)}"
        )


def _check_hard_labels(ds: ImageDataset, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Int (n,) labels in range, every class present."""
    if labels.dim() != 1 or len(labels) != len(images):
        raise InvalidArgument(f"labels must have shape ({len(images)},) to match the images, got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise InvalidArgument(f"labels must be integers, got {labels.dtype}")
    if len(labels) == 0:
        raise InvalidArgument("the set is empty")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= ds.num_classes:
        bad = low if low < 0 else high
        raise InvalidArgument(f"labels must be in [0, {ds.num_classes - 1}] for dataset {ds.name}, got {bad}")
    counts = torch.bincount(labels.long().cpu(), minlength=ds.num_classes)
    missing = torch.nonzero(counts == 0).flatten().tolist()
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise InvalidArgument(f"the set has no images of class {shown}; every one of the {ds.num_classes} classes needs one")


def evaluate_set(
    ds: ImageDataset,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    cfg: EvalConfig,
    distill_mask: torch.Tensor | None = None,
    split: str = "val",
    runs: int | None = None,
    fraction: float = 1.0,
    seed: int = 0,
    epoch_callback: EpochCallback | None = None,
    device: torch.device | str | None = None,
    eval_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> EvalResult:
    """Train ``runs`` fresh networks on a set and measure their accuracy on a split of ``ds``.

    Args:
        ds: The dataset the set was made from (shape, classes, normalisation, evaluation split).
        images: Float (n, C, H, W) in normalised space, or uint8 pixels (normalised with ``ds``).
        labels: Int (n,) in [0, ds.num_classes), every class present; or float (n, ds.num_classes)
            class probabilities (soft labels, see :func:`train_networks`).
        cfg: Evaluation settings (model, budget, optimizer, augmentation, runs).
        distill_mask: Bool (n,), True for D_distill rows (DSA under ``combined``); ``None``: none are.
        split: ``val`` (search objectives) or ``test`` (final report only).
        runs: Networks to train, seeds ``seed .. seed + runs - 1``; default ``cfg.runs``.
        fraction: Share of the budget, in (0, 1]; < 1 is the cheap few-epoch mode.
        seed: Seed of the first run.
        epoch_callback: Called after each epoch of each run as ``epoch_callback(run * epochs_per_run + epoch,
            model)``, so steps keep increasing across runs (Optuna reports and prunes on it).
        device: Where to train; default the device of ``images``.
        eval_transform: Applied to the normalised (m, C, H, W) evaluation images, into the set's space
            (e.g. the ZCA whitening of a set saved whitened); None: the set is in normalised space.

    Raises:
        InvalidArgument: A class is missing, a label is out of range, the images have the wrong
            shape, or the budget is empty.
        TrainingDiverged: A run's loss became NaN or infinite.
    """
    if split not in ("val", "test"):
        raise InvalidArgument(f"split must be val or test, got {split!r}")
    runs = cfg.runs if runs is None else runs
    if runs < 1:
        raise InvalidArgument(f"runs must be >= 1, got {runs}")
    check_set(ds, images, labels, distill_mask)
    device = torch.device(device) if device is not None else images.device
    steps = budget_steps(cfg, n_set=len(images), n_full=len(ds.train_labels), fraction=fraction)
    eval_x, eval_y = ds.split(split)
    if len(eval_y) == 0:
        raise InvalidArgument(f"dataset {ds.name} has an empty {split} split; set data.val_fraction > 0")
    eval_x, eval_y = ds.normalize(eval_x.to(device)), eval_y.to(device)
    if eval_transform is not None:
        eval_x = eval_transform(eval_x)
    train_x = ds.normalize(images.to(device)) if images.dtype == torch.uint8 else images.to(device, torch.float32)
    train_y = labels.to(device, torch.float32 if labels.dim() == 2 else torch.long)  # (n,) or (n, K) soft
    steps_per_epoch = len(batch_bounds(len(images), cfg.batch_size)) - 1
    epochs_per_run = math.ceil(steps / steps_per_epoch)

    # Runs train cfg.stack_runs at a time, except when their epochs are reported (one network per callback).
    stack = 1 if epoch_callback is not None else cfg.stack_runs
    groups = [list(range(first, min(first + stack, runs))) for first in range(0, runs, stack)]
    accs, train_seconds = [], []
    image_hits = torch.zeros(len(eval_y), dtype=torch.long, device=device)  # (m,)
    started = time.perf_counter()
    for group in progress(groups, desc=f"evaluate {cfg.model.name} ({split})"):
        callback = None
        if epoch_callback is not None:
            offset = group[0] * epochs_per_run
            callback = lambda epoch, model, offset=offset: epoch_callback(offset + epoch, model)  # noqa: E731
        group_start = time.perf_counter()
        model = train_networks(train_x, train_y, num_classes=ds.num_classes, cfg=cfg, steps=steps,
                               distill_mask=distill_mask, seeds=[seed + run for run in group], epoch_callback=callback,
                               device=device, flip=ds.flip)
        correct = hits(model, eval_x, eval_y, networks=len(group))  # (k, m)
        image_hits += correct.sum(0)
        accs += hit_rates(correct)
        train_seconds += [(time.perf_counter() - group_start) / len(group)] * len(group)
        LOG.debug("evaluate runs %s of %d: %s accuracy %s (%d steps)", [r + 1 for r in group], runs, split,
                  accs[-len(group):], steps)
    return EvalResult(
        mean=float(np.mean(accs)),
        std=float(np.std(accs)),
        accuracies=accs,
        split=split,
        steps=steps,
        epochs=steps / steps_per_epoch,
        seconds=time.perf_counter() - started,
        runs=runs,
        n_images=len(images),
        n_distill=0 if distill_mask is None else int(distill_mask.sum()),
        model=cfg.model.name,
        augment=cfg.augment,
        seed=seed,
        train_seconds=train_seconds,
        paper_share=paper_share(steps, n_full=len(ds.train_labels), batch_size=cfg.batch_size),
        image_hits=image_hits.cpu(),
    )


# --------------------------------------------------------------------------------------------
# Coverage (SelMatch Sec. 3.2)
# --------------------------------------------------------------------------------------------


@dataclass
class CoverageResult:
    """Coverage of the test set by a synthetic set in feature space.

    Attributes:
        coverage: Fraction of test samples within ``radius`` of some synthetic sample.
        radius: Mean nearest-neighbour distance among the real training samples.
        easy: Coverage of the easier half of the test samples (``None`` without a difficulty score).
        hard: Coverage of the harder half.
    """

    coverage: float
    radius: float
    easy: float | None = None
    hard: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def nearest_distances(queries: torch.Tensor, refs: torch.Tensor, *, batch_size: int = 1024,
                      exclude_self: bool = False) -> torch.Tensor:
    """Euclidean distance from each query (Q, F) to its nearest reference (R, F), as (Q,).

    Computed over (batch_size x batch_size) blocks with a running minimum, so
    memory stays O(batch_size^2). ``exclude_self``: queries and refs are the
    same set and a sample is not its own neighbour.
    """
    if queries.dim() != 2 or refs.dim() != 2 or queries.shape[1] != refs.shape[1]:
        raise InvalidArgument(f"features must be (n, F) with equal F, got {tuple(queries.shape)} and {tuple(refs.shape)}")
    if len(refs) - int(exclude_self) < 1:
        raise InvalidArgument("nearest-neighbour distances need at least one reference sample")
    if batch_size < 1:
        raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
    queries, refs = queries.float(), refs.float()
    out = torch.empty(len(queries), device=queries.device)
    for q0 in range(0, len(queries), batch_size):
        q = queries[q0:q0 + batch_size]
        best = torch.full((len(q),), math.inf, device=queries.device)
        for r0 in range(0, len(refs), batch_size):
            dist = torch.cdist(q, refs[r0:r0 + batch_size].to(queries.device))  # (bq, br)
            if exclude_self:
                rows = torch.arange(q0, q0 + len(q), device=queries.device).unsqueeze(1)
                cols = torch.arange(r0, r0 + dist.shape[1], device=queries.device).unsqueeze(0)
                dist = dist.masked_fill(rows == cols, math.inf)
            best = torch.minimum(best, dist.min(dim=1).values)
        out[q0:q0 + len(q)] = best
    return out


def coverage(
    features_real_train: torch.Tensor,
    features_test: torch.Tensor,
    features_syn: torch.Tensor,
    *,
    difficulty: torch.Tensor | None = None,
    batch_size: int = 1024,
    radius: float | None = None,
) -> CoverageResult:
    """Coverage of the test samples by the synthetic samples (SelMatch Sec. 3.2).

    Args:
        features_real_train: (N, F) features of real training samples; r is their mean
            nearest-neighbour distance (a sample is not its own neighbour).
        features_test: (M, F) features of real test samples.
        features_syn: (S, F) features of the synthetic samples.
        difficulty: Optional (M,) score per test sample, higher = harder; splits the test set
            into an easy and a hard half (the hard half gets the extra sample when M is odd).
        batch_size: Block side of the distance computation.
        radius: r computed earlier from the same ``features_real_train`` (skips the
            N x N distances when several sets are measured in one feature space).
    """
    if difficulty is not None and tuple(difficulty.shape) != (len(features_test),):
        raise InvalidArgument(f"difficulty must have shape ({len(features_test)},), got {tuple(difficulty.shape)}")
    if len(features_test) == 0:
        raise InvalidArgument("coverage needs at least one test sample")
    if radius is None:
        radius = float(nearest_distances(features_real_train, features_real_train, batch_size=batch_size,
                                         exclude_self=True).mean())
    covered = nearest_distances(features_test, features_syn, batch_size=batch_size) <= radius  # (M,)
    result = CoverageResult(coverage=float(covered.float().mean()), radius=radius)
    if difficulty is not None:
        order = torch.argsort(difficulty.to(covered.device), stable=True)  # easiest first
        half = len(order) // 2
        result.easy = float(covered[order[:half]].float().mean()) if half else None
        result.hard = float(covered[order[half:]].float().mean())
    return result


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """(n, C, H, W) float images -> (n, F) features from ``model.embed`` in eval mode (mode restored)."""
    if not hasattr(model, "embed"):
        raise InvalidArgument(f"model {type(model).__name__} has no embed() method for features")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    parts = [model.embed(images[s:s + batch_size].to(device)).float() for s in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(parts)


def model_coverage(
    model: nn.Module,
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    syn_images: torch.Tensor,
    *,
    difficulty: torch.Tensor | None = None,
    batch_size: int = 1024,
) -> CoverageResult:
    """:func:`coverage` in the feature space of a trained ``model`` (float normalised images)."""
    return coverage(
        embed(model, train_images, batch_size=batch_size),
        embed(model, test_images, batch_size=batch_size),
        embed(model, syn_images, batch_size=batch_size),
        difficulty=difficulty,
        batch_size=batch_size,
    )


__all__ = [
    "BUDGET_RULES",
    "BatchPlan",
    "CoverageResult",
    "EvalResult",
    "accuracy",
    "batch_bounds",
    "batch_plan",
    "budget_steps",
    "budget_text",
    "check_set",
    "coverage",
    "embed",
    "evaluate_set",
    "hit_rates",
    "hits",
    "model_coverage",
    "nearest_distances",
    "paper_budget",
    "paper_share",
    "train_network",
]
