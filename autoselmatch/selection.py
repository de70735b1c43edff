"""The sliding window of SelMatch and the selection-only baselines.

Per class, the selectable pool (``ds.train_index``: validation samples are
never selected) is sorted from hardest to easiest by a difficulty score
(higher = harder; a stable sort, so ties keep ascending index order). The
window skips the hardest ``floor(beta * n_c)`` samples of class ``c`` and takes
the next ``ipc``. Inside the window the harder ``ceil((1 - alpha) * ipc)``
samples form D_select (frozen real images), the easier rest D_distill (the
pixels distillation updates).

Rounding: the skip is ``floor(beta * n_c)``, so every ``beta`` in
``[0, 1 - ipc / n_c]`` keeps the window inside the class. beta is a fraction
of the class as in the paper's Algorithm 1; the authors' public code skips
``int(ipc * beta)`` samples instead, so their Table 5 beta values are not
directly comparable.

    win = select_window(scores, ds.train_labels, ds.train_index, ipc=10, beta=0.3, alpha=0.5)
    images = ds.train_images[win.indices]          # (K * ipc, C, H, W), class by class
    labels = win.labels(ds)                        # (K * ipc,)
    mask = win.distill_mask                        # (K * ipc,) True on D_distill

    idx = select("random", None, ds.train_labels, ds.train_index, ipc=10, seed=0)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import torch

from .errors import InvalidArgument
from .registry import Registry
from .runtime import LOG, progress

if TYPE_CHECKING:
    from .config import EvalConfig
    from .data import ImageDataset
    from .evaluate import EvalResult

# Slack for beta and alpha given as decimal fractions: (1 - 0.7) * 10 is 3.0000000000000004 in floats.
_EPS = 1e-9


@dataclass(frozen=True)
class Window:
    """Per-class window of real samples, split into D_select and D_distill.

    Attributes:
        select_index: int64 (K * n_select,) indices into the original training
            order (``ds.train_images``), class by class, hardest first: the
            harder ``n_select = ceil((1 - alpha) * ipc)`` samples of each
            class's window (frozen real images, D_select).
        distill_index: int64 (K * (ipc - n_select),) the easier rest of each
            window, same order (D_distill).
        ipc: Images per class.
        alpha: Distillation portion.
        beta: Window start, as a fraction of each class.
    """

    select_index: torch.Tensor
    distill_index: torch.Tensor
    ipc: int
    alpha: float
    beta: float

    @property
    def num_classes(self) -> int:
        return (len(self.select_index) + len(self.distill_index)) // self.ipc

    @property
    def n_select(self) -> int:
        """Samples per class in D_select."""
        return len(self.select_index) // self.num_classes

    @property
    def indices(self) -> torch.Tensor:
        """int64 (K * ipc,): every window sample, class by class, hardest to easiest."""
        k, n_sel = self.num_classes, self.n_select
        select = self.select_index.view(k, n_sel)  # (K, n_select)
        distill = self.distill_index.view(k, self.ipc - n_sel)  # (K, ipc - n_select)
        return torch.cat([select, distill], dim=1).flatten()

    @property
    def distill_mask(self) -> torch.Tensor:
        """bool (K * ipc,) aligned with :attr:`indices`: True on D_distill samples."""
        mask = torch.zeros(self.num_classes, self.ipc, dtype=torch.bool, device=self.select_index.device)
        mask[:, self.n_select :] = True
        return mask.flatten()

    def labels(self, ds: "ImageDataset") -> torch.Tensor:
        """int64 (K * ipc,): the labels of :attr:`indices`."""
        return ds.train_labels[self.indices.to(ds.train_labels.device)]


def select_window(
    scores: torch.Tensor,
    labels: torch.Tensor,
    pool_index: torch.Tensor,
    *,
    ipc: int,
    beta: float,
    alpha: float = 0.0,
) -> Window:
    """The SelMatch window: per class skip the hardest ``floor(beta * n_c)``, take ``ipc``.

    Args:
        scores: float (N,) difficulty of every training sample, higher = harder,
            in the original training order.
        labels: int64 (N,) labels of every training sample.
        pool_index: int64 (P,) indices the window may use (``ds.train_index``).
        ipc: Images per class, in [1, smallest class size in the pool].
        beta: Window start as a fraction of each class, in [0, 1 - ipc / n_min].
        alpha: Distillation portion in [0, 1]: the easier ``ipc - ceil((1 - alpha) * ipc)``
            samples of each window form D_distill.

    The result lives on ``labels``' device (``scores`` and ``pool_index`` are moved there).
    """
    scores, pool_index = scores.to(labels.device), pool_index.to(labels.device)
    sizes = _check_pool(scores, labels, pool_index)
    _check_ipc(ipc, sizes)
    _check_beta(beta, ipc, sizes)
    if not 0.0 <= alpha <= 1.0:
        raise InvalidArgument(f"alpha must be in [0, 1], got {alpha}")

    ranked, rank = _rank_by_class(scores, labels, pool_index)  # (P,), (P,) class-ordered, hardest first
    start = torch.floor(max(beta, 0.0) * sizes.double() + _EPS).long().clamp(max=sizes - ipc)  # (K,)
    n_select = select_count(ipc, alpha)
    offset = rank - start[labels[ranked]]  # (P,) position inside the class's window
    in_select = (offset >= 0) & (offset < n_select)
    in_distill = (offset >= n_select) & (offset < ipc)
    return Window(
        select_index=ranked[in_select],
        distill_index=ranked[in_distill],
        ipc=ipc,
        alpha=float(alpha),
        beta=float(beta),
    )


def select_count(ipc: int, alpha: float) -> int:
    """Samples per class that stay real (D_select) at distillation portion ``alpha``: ``ceil((1 - alpha) * ipc)``."""
    return math.ceil((1.0 - alpha) * ipc - _EPS)


def max_beta(ipc: int, class_sizes: Sequence[int] | torch.Tensor) -> float:
    """Largest window start that keeps ``ipc`` samples inside every class: ``1 - ipc / min(n_c)``."""
    sizes = torch.as_tensor(class_sizes)
    if sizes.numel() == 0:
        raise InvalidArgument("class_sizes must not be empty")
    smallest = int(sizes.min())
    if not 1 <= ipc <= smallest:
        raise InvalidArgument(f"ipc must be in [1, {smallest}] (smallest class), got {ipc}")
    return 1.0 - ipc / smallest


def class_sizes(labels: torch.Tensor, pool_index: torch.Tensor) -> torch.Tensor:
    """int64 (K,): samples of each class inside the pool (K = max label + 1)."""
    return torch.bincount(labels[pool_index], minlength=int(labels.max()) + 1)


# --------------------------------------------------------------------------------------------
# Checks and the per-class ranking
# --------------------------------------------------------------------------------------------


def _check_pool(scores: torch.Tensor, labels: torch.Tensor, pool_index: torch.Tensor) -> torch.Tensor:
    """Check shapes and NaNs; return the per-class pool sizes (K,)."""
    if scores.dim() != 1 or len(scores) != len(labels):
        raise InvalidArgument(f"scores must have shape ({len(labels)},) like labels, got {tuple(scores.shape)}")
    if len(pool_index) == 0:
        raise InvalidArgument("pool_index is empty; nothing to select from")
    pool_scores = scores[pool_index]
    if torch.isnan(pool_scores).any():
        raise InvalidArgument(f"scores hold {int(torch.isnan(pool_scores).sum())} NaN values in the pool; "
                              "every score must be a number")
    return class_sizes(labels, pool_index)


def _check_ipc(ipc: int, sizes: torch.Tensor) -> None:
    smallest = int(sizes.min())
    if not 1 <= ipc <= smallest:
        raise InvalidArgument(f"ipc must be in [1, {smallest}] (smallest class in the pool), got {ipc}")


def _check_beta(beta: float, ipc: int, sizes: torch.Tensor) -> None:
    smallest = int(sizes.min())
    hi = 1.0 - ipc / smallest
    if not -_EPS <= beta <= hi + _EPS:
        raise InvalidArgument(f"beta must be in [0, {hi:.4f}] for ipc={ipc} (class of {smallest} samples), got {beta}")


def _rank_by_class(scores: torch.Tensor, labels: torch.Tensor,
                   pool_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool indices ordered by class, then hardest first (ties: ascending index), and each one's rank in its class."""
    pool = torch.sort(pool_index).values  # (P,) ascending, so stable sorts break ties by index
    by_score = pool[torch.sort(scores[pool], descending=True, stable=True).indices]
    ranked = by_score[torch.sort(labels[by_score], stable=True).indices]  # (P,) class-major
    sizes = torch.bincount(labels[ranked], minlength=int(labels.max()) + 1)
    first = torch.cumsum(sizes, 0) - sizes  # (K,) position of each class's first sample
    rank = torch.arange(len(ranked), device=ranked.device) - first[labels[ranked]]
    return ranked, rank


# --------------------------------------------------------------------------------------------
# Selection strategies (the paper's selection-only baselines)
# --------------------------------------------------------------------------------------------


class SelectionStrategy(Protocol):
    def __call__(self, scores: torch.Tensor | None, labels: torch.Tensor, pool_index: torch.Tensor, *,
                 ipc: int, beta: float | None, seed: int) -> torch.Tensor: ...


SELECTIONS: Registry[SelectionStrategy] = Registry("selection strategy")


def select(
    name: str,
    scores: torch.Tensor | None,
    labels: torch.Tensor,
    pool_index: torch.Tensor,
    *,
    ipc: int,
    beta: float | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Indices (K * ipc,) chosen by the named strategy, class by class.

    Args:
        name: ``random``, ``hardest`` (alias ``forgetting``), ``easiest`` or ``window``.
        scores: float (N,) difficulty, higher = harder (unused by ``random``, may be None there).
        labels: int64 (N,) labels of the training set.
        pool_index: int64 (P,) selectable indices (``ds.train_index``).
        ipc: Images per class.
        beta: Window start (``window`` only).
        seed: Seed of ``random``.
    """
    return SELECTIONS.get(name)(scores, labels, pool_index, ipc=ipc, beta=beta, seed=seed)


def _needs_scores(name: str, scores: torch.Tensor | None) -> torch.Tensor:
    if scores is None:
        raise InvalidArgument(f"selection {name!r} needs difficulty scores; pass a score (e.g. --score el2n)")
    return scores


@SELECTIONS.register("random")
def _random(scores: torch.Tensor | None, labels: torch.Tensor, pool_index: torch.Tensor, *,
            ipc: int, beta: float | None, seed: int) -> torch.Tensor:
    """Class-balanced uniform sample: a seeded random score, then the top ``ipc`` per class."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(len(labels), generator=generator, dtype=torch.float64).to(labels.device)  # (N,)
    return select_window(noise, labels, pool_index, ipc=ipc, beta=0.0).indices


@SELECTIONS.register("forgetting")
@SELECTIONS.register("hardest")
def _hardest(scores: torch.Tensor | None, labels: torch.Tensor, pool_index: torch.Tensor, *,
             ipc: int, beta: float | None, seed: int) -> torch.Tensor:
    """The ``ipc`` hardest samples of each class (the window at beta = 0)."""
    return select_window(_needs_scores("hardest", scores), labels, pool_index, ipc=ipc, beta=0.0).indices


@SELECTIONS.register("easiest")
def _easiest(scores: torch.Tensor | None, labels: torch.Tensor, pool_index: torch.Tensor, *,
             ipc: int, beta: float | None, seed: int) -> torch.Tensor:
    """The ``ipc`` easiest samples of each class, hardest of them first."""
    scores, pool_index = _needs_scores("easiest", scores).to(labels.device), pool_index.to(labels.device)
    sizes = _check_pool(scores, labels, pool_index)
    _check_ipc(ipc, sizes)
    ranked, rank = _rank_by_class(scores, labels, pool_index)
    return ranked[rank >= sizes[labels[ranked]] - ipc]


@SELECTIONS.register("window")
def _window(scores: torch.Tensor | None, labels: torch.Tensor, pool_index: torch.Tensor, *,
            ipc: int, beta: float | None, seed: int) -> torch.Tensor:
    """The SelMatch window at a given ``beta`` (see :func:`select_window`)."""
    if beta is None:
        raise InvalidArgument("selection 'window' needs beta (the window start, a fraction of each class)")
    return select_window(_needs_scores("window", scores), labels, pool_index, ipc=ipc, beta=beta).indices


# --------------------------------------------------------------------------------------------
# The beta objective: accuracy of a network trained on the selection-only window
# --------------------------------------------------------------------------------------------


def window_accuracy(
    ds: "ImageDataset",
    scores: torch.Tensor,
    *,
    ipc: int,
    beta: float,
    cfg: "EvalConfig",
    fraction: float = 1.0,
    seeds: int = 1,
    seed: int = 0,
    epoch_callback: Callable[..., None] | None = None,
    augment: str | None = None,
) -> "EvalResult":
    """Validation accuracy of networks trained from scratch on the window at ``beta`` (alpha = 0).

    This is stage 1 of the tuning (and one point of the paper's Figure 3):
    the window's real images only, scored on the validation split.

    Args:
        ds: The dataset; the window is drawn from ``ds.train_index``.
        scores: float (N,) difficulty, higher = harder.
        ipc: Images per class.
        beta: Window start.
        cfg: Evaluation settings (model, optimizer, budget).
        fraction: Fraction of the evaluation budget to train for (e.g. ``cfg.quick_fraction``).
        seeds: Networks trained (each with its own seed) and averaged.
        seed: Seed of the first network.
        epoch_callback: Passed to the evaluation engine (pruning, progress).
        augment: Training augmentation (``dsa`` in the tune's beta stage); ``None``: simple
            (crop + flip), or none when ``cfg.augment`` is ``none``.
    """
    from .evaluate import evaluate_set

    window = select_window(scores, ds.train_labels, ds.train_index, ipc=ipc, beta=beta)
    images = ds.train_images[window.indices]  # (K * ipc, C, H, W) uint8
    labels = window.labels(ds)
    if augment is None:
        augment = "simple" if cfg.augment != "none" else "none"
    cfg = dataclasses.replace(cfg, augment=augment)
    return evaluate_set(ds, images, labels, cfg=cfg, distill_mask=window.distill_mask, split="val",
                        runs=seeds, fraction=fraction, seed=seed, epoch_callback=epoch_callback)


def sweep_beta(
    ds: "ImageDataset",
    scores: torch.Tensor,
    *,
    ipc: int,
    betas: Sequence[float],
    cfg: "EvalConfig",
    fraction: float = 1.0,
    epochs: int | None = None,
    seeds: int = 1,
    seed: int = 0,
    augment: str | None = None,
) -> list[tuple[float, float, float]]:
    """The beta -> accuracy curve (the paper's Figure 3): ``[(beta, mean, std), ...]``.

    Args:
        ds, scores, ipc, cfg, seeds, seed, augment: As in :func:`window_accuracy`.
        betas: Window starts to try; all are checked before any training.
        fraction: Fraction of ``cfg``'s evaluation budget per network.
        epochs: If set, train each network this many epochs on the window instead
            (overrides ``cfg``'s budget and ``fraction``).
    """
    if not betas:
        raise InvalidArgument("betas must hold at least one window start")
    sizes = class_sizes(ds.train_labels, ds.train_index)
    _check_ipc(ipc, sizes)
    for beta in betas:
        _check_beta(beta, ipc, sizes)
    if epochs is not None:
        if epochs < 1:
            raise InvalidArgument(f"epochs must be >= 1, got {epochs}")
        cfg = dataclasses.replace(cfg, epochs=epochs, steps=None)
        fraction = 1.0
    curve = []
    for beta in progress(betas, desc=f"beta sweep ipc={ipc}", total=len(betas)):
        result = window_accuracy(ds, scores, ipc=ipc, beta=beta, cfg=cfg, fraction=fraction, seeds=seeds, seed=seed,
                                 augment=augment)
        LOG.info("beta=%.3f ipc=%d: val accuracy %.4f +- %.4f", beta, ipc, result.mean, result.std)
        curve.append((float(beta), float(result.mean), float(result.std)))
    return curve


__all__ = [
    "SELECTIONS",
    "Window",
    "class_sizes",
    "max_beta",
    "select",
    "select_count",
    "select_window",
    "sweep_beta",
    "window_accuracy",
]
