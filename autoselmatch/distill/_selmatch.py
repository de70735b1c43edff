"""SelMatch: the initial set from the window (or random real samples), then distillation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import RunConfig
from ..data import ImageDataset
from ..errors import InvalidArgument
from ..runtime import resolve_device
from ..selection import Window, select_window
from ..synset import SyntheticSet
from ._methods import METHODS
from ._run import Callback, CoverageProbe, Evaluator, coverage_probe, distill, quick_evaluator
from ._student import ExpertSource


@dataclass(frozen=True)
class InitialSet:
    """An initial synthetic set of real training samples, ``ipc`` per class, class by class.

    Attributes:
        indices: int64 (n,) indices into ``ds.train_images``.
        images: float32 (n, C, H, W) in normalised space.
        labels: int64 (n,).
        distill_mask: bool (n,): True for D_distill rows (the easier
            ``ipc - ceil((1 - alpha) * ipc)`` of each class), False for D_select.
    """

    indices: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    distill_mask: torch.Tensor


def initial_set(ds: ImageDataset, cfg: RunConfig, *, ipc: int, alpha: float, beta: float,
                scores: torch.Tensor | None = None) -> InitialSet:
    """D_syn's starting point per ``cfg.distill.init``.

    ``window``: SelMatch's selection-based init: per class, skip the hardest
    ``beta`` fraction and take the next ``ipc`` samples by difficulty
    (:func:`autoselmatch.selection.select_window`); the harder
    ``ceil((1 - alpha) * ipc)`` form D_select. ``random``: ``ipc`` random
    real samples per class (seeded by ``cfg.seed``), the first
    ``ceil((1 - alpha) * ipc)`` of each class forming D_select. ``noise``: the
    ``random`` init with each D_distill row's image replaced by standard Gaussian
    noise (normalised space, seeded by ``cfg.seed``), as SRe2L starts; its label
    and index stay those of the real sample it replaced.

    Args:
        ds: The dataset; samples come from ``ds.train_index`` only.
        cfg: Settings (``distill.init``, ``scores``, ``seed``, ``cache_dir``).
        ipc: Images per class.
        alpha: Distillation portion in [0, 1].
        beta: Window start as a fraction of each class (``window`` only).
        scores: float (N,) difficulty per training sample, higher = harder;
            None loads or computes them per ``cfg.scores`` (``window`` only).
    """
    if not 0.0 <= alpha <= 1.0:
        raise InvalidArgument(f"alpha must be in [0, 1], got {alpha}")
    counts = ds.class_counts()
    smallest = int(counts.min())
    if not 1 <= ipc <= smallest:
        raise InvalidArgument(f"ipc must be in [1, {smallest}] for {ds.name} (its smallest class in the training "
                              f"pool has {smallest} samples), got {ipc}")
    if cfg.distill.init == "window":
        if scores is None:
            from ..scores import get_scores

            scores = get_scores(ds, cfg.scores, cache_dir=cfg.cache_path, seed=cfg.seed, run=cfg)
        window = select_window(scores, ds.train_labels, ds.train_index, ipc=ipc, beta=beta, alpha=alpha)
    else:
        window = _random_window(ds, ipc=ipc, alpha=alpha, seed=cfg.seed)
    indices = window.indices.cpu().long()
    mask = window.distill_mask.cpu().bool()
    images = ds.normalize(ds.train_images[indices.to(ds.device)]).cpu()  # (n, C, H, W)
    if cfg.distill.init == "noise":
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(cfg.seed))
        images[mask] = noise[mask]
    return InitialSet(indices, images, ds.train_labels[indices.to(ds.device)].cpu(), mask)


def _random_window(ds: ImageDataset, *, ipc: int, alpha: float, seed: int) -> Window:
    """Class-balanced random real samples: the window at beta 0 over seeded uniform noise scores.

    The draw is the one ``select("random", ..., seed=seed)`` makes, so an
    alpha = 0 random init equals the random-selection baseline of the same seed.
    """
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(len(ds.train_labels), generator=generator, dtype=torch.float64)  # (N,)
    return select_window(noise.to(ds.train_labels.device), ds.train_labels, ds.train_index, ipc=ipc, beta=0.0,
                         alpha=alpha)


def selmatch(
    ds: ImageDataset,
    cfg: RunConfig,
    *,
    ipc: int,
    alpha: float,
    beta: float = 0.0,
    scores: torch.Tensor | None = None,
    experts: ExpertSource | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    callback: Callback | None = None,
    evaluator: Evaluator | None = None,
) -> SyntheticSet:
    """Distil one SelMatch set: init from the window at ``beta``, update the easier ``alpha`` of it
    with the base method ``cfg.distill.method``.

    ``cfg.distill.init`` chooses the init (``window``, or ``random``: with
    alpha = 1 this is plain MTT); ``cfg.distill.mode`` is ``selmatch``
    (students train on D_select ∪ D_distill, eq. 2) or ``merge`` (the paper's
    ablation: distil D_distill on its own, then concatenate D_select).
    alpha = 0 returns the initial set itself without any compute.

    Args:
        ds: The dataset.
        cfg: Run settings.
        ipc: Images per class.
        alpha: Distillation portion in [0, 1].
        beta: Window start, a fraction of each class in [0, 1 - ipc/n_c].
        scores: Difficulty scores (N,), higher = harder; None: per ``cfg.scores``.
        experts: Expert trajectories (method ``mtt``); None loads them per ``cfg.experts``
            (never trains them: a missing set is an error naming the command).
        checkpoint_dir, resume, callback, evaluator: As in :func:`distill`.

    Example::

        cfg = apply_overrides(load_preset("digits"), {"distill.iterations": 20, "distill.eval_every": 0})
        result = selmatch(load_dataset("digits"), cfg, ipc=10, alpha=0.5, beta=0.1)
    """
    start = initial_set(ds, cfg, ipc=ipc, alpha=alpha, beta=beta, scores=scores)
    settings = {"ipc": ipc, "alpha": alpha, "beta": beta, "init": cfg.distill.init, "mode": cfg.distill.mode,
                "memory": cfg.distill.memory, "precision": cfg.distill.precision, "score": cfg.scores.name}
    rows = start.distill_mask if cfg.distill.mode == "merge" else torch.ones_like(start.distill_mask)
    if bool(start.distill_mask.any()) and METHODS.get(cfg.distill.method).needs == "experts":
        if cfg.distill.batch_syn > int(rows.sum()):
            part = "D_distill" if cfg.distill.mode == "merge" else "D_syn"
            raise InvalidArgument(f"distill.batch_syn ({cfg.distill.batch_syn}) must be at most the size of {part} "
                                  f"({int(rows.sum())} images at ipc={ipc}, alpha={alpha}); lower it with "
                                  f"--set distill.batch_syn=N")
        if experts is None:
            from ..experts import load_experts

            experts = load_experts(ds, cfg)
    if cfg.distill.mode == "merge" and cfg.distill.eval_every > 0:
        evaluator = _merged_evaluator(evaluator or quick_evaluator(ds, cfg), start)
    coverage = None
    if cfg.distill.mode == "merge" and cfg.distill.coverage_every > 0:  # coverage of the whole set, D_select too
        coverage = _merged_coverage(coverage_probe(ds, cfg, resolve_device(cfg.device)), start)
    result = distill(ds, cfg=cfg, experts=experts, init_images=start.images[rows], labels=start.labels[rows],
                     distill_mask=start.distill_mask[rows], indices=start.indices[rows],
                     checkpoint_dir=checkpoint_dir, resume=resume, callback=callback, evaluator=evaluator,
                     settings=settings, coverage=coverage)
    if cfg.distill.mode == "merge":
        images = start.images.clone()
        images[rows] = result.images
        result.images, result.labels = images, start.labels.clone()
        result.distill_mask, result.indices = start.distill_mask.clone(), start.indices.clone()
    return result


def _with_select(start: InitialSet, images: torch.Tensor) -> torch.Tensor:
    """(n, C, H, W) the whole set: D_distill's current pixels ``images`` (d, C, H, W) in their rows,
    the frozen D_select rows of ``start`` around them."""
    full = start.images.to(images.device).clone()
    full[start.distill_mask.to(images.device)] = images
    return full


def _merged_evaluator(evaluate: Evaluator, start: InitialSet) -> Evaluator:
    """In ``merge`` mode, evaluate D_distill's current pixels together with the frozen D_select rows."""

    def run(images: torch.Tensor, labels: torch.Tensor, distill_mask: torch.Tensor) -> float:
        return evaluate(_with_select(start, images), start.labels.to(images.device),
                        start.distill_mask.to(images.device))

    return run


def _merged_coverage(measure: CoverageProbe, start: InitialSet) -> CoverageProbe:
    """In ``merge`` mode, measure coverage of D_distill's current pixels together with the frozen D_select rows."""
    return lambda images: measure(_with_select(start, images))
