"""Batched, seedable image augmentation on the device: DSA, simple crop+flip, and SelMatch's combination.

Every function takes a float batch (B, C, H, W) in normalised space and
returns a new batch of the same shape; randomness comes from ``generator``
(a ``torch.Generator`` on ``x.device``; ``None`` uses torch's global RNG),
so a seeded generator reproduces a call exactly and its state
(``generator.get_state()``) can be saved to resume bit for bit.

    x_aug = dsa(x, generator=g)                      # one DSA strategy for the batch
    x_aug = dsa_per_image(x, draw_strategies(len(x), generator=g), generator=g)  # one strategy per image
    x_aug = simple_augment(x, generator=g)           # random crop (pad side/8) + flip
    x_aug = combined_augment(x, distill_mask, generator=g)   # SelMatch evaluation

DSA (Zhao & Bilen 2021, "Dataset Condensation with Differentiable Siamese
Augmentation"; the ``ParamDiffAug`` defaults used by MTT and SelMatch) in its
single mode: :func:`dsa` draws one strategy per call for the whole batch (as
MTT's distillation and evaluation do), each sample gets its own random
parameters. SelMatch's combined augmentation applies DSA image by image, so
:func:`dsa_per_image` gives every image its own strategy (one batched call per
strategy on the rows that drew it). Ranges, with ``u ~ U[0, 1)`` per sample:

    color    brightness x + (u - 0.5) * 1.0, then saturation
             (x - mean_c) * 2.0u + mean_c, then contrast
             (x - mean_chw) * (u + 0.5) + mean_chw (three independent u's)
    crop     integer translation by t in [-s, s] per axis, s = int(side/8 + 0.5),
             vacated pixels are 0
    cutout   a zero square of int(side/2 + 0.5) per side centred uniformly
             in the image (clipped at the borders)
    flip     horizontal mirror with probability 0.5
    scale    each axis zoomed by a factor in [1/1.2, 1.2] (bilinear, zeros outside)
    rotate   rotation by an angle in [-15, 15] degrees (bilinear, zeros outside)

Every strategy is differentiable w.r.t. ``x`` (gathers, masks, ``grid_sample``);
the distillation core back-propagates through it to the synthetic pixels.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import InvalidArgument
from .registry import Registry

DSA_STRATEGIES = ("color", "crop", "cutout", "flip", "scale", "rotate")

# ParamDiffAug defaults (DSA / MTT / SelMatch)
BRIGHTNESS = 1.0
SATURATION = 2.0
CONTRAST = 0.5
CROP_RATIO = 0.125
CUTOUT_RATIO = 0.5
FLIP_PROB = 0.5
SCALE_RATIO = 1.2
ROTATE_DEGREES = 15.0

#: ``(x, distill_mask, generator, *, flip=True) -> x``; ``flip=False``: the simple augmentation does not mirror.
Augmentation = Callable[..., torch.Tensor]


def _rand(x: torch.Tensor, *shape: int, generator: torch.Generator | None) -> torch.Tensor:
    """U[0, 1) of ``shape`` on ``x``'s device, in ``x``'s dtype."""
    return torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)


def _randint(x: torch.Tensor, low: int, high: int, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """(n,) integers in [low, high) on ``x``'s device."""
    return torch.randint(low, high, (n,), generator=generator, device=x.device)


def _check_batch(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise InvalidArgument(f"augmentation expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InvalidArgument(f"augmentation expects float images in normalised space, got {x.dtype}")


# --------------------------------------------------------------------------------------------
# DSA strategies, each (B, C, H, W) -> (B, C, H, W)
# --------------------------------------------------------------------------------------------


def _color(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    b = x.shape[0]
    x = x + (_rand(x, b, 1, 1, 1, generator=generator) - 0.5) * BRIGHTNESS
    mean_c = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    x = (x - mean_c) * (_rand(x, b, 1, 1, 1, generator=generator) * SATURATION) + mean_c
    mean_all = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return (x - mean_all) * (_rand(x, b, 1, 1, 1, generator=generator) + CONTRAST) + mean_all


def translate(x: torch.Tensor, shift_y: torch.Tensor, shift_x: torch.Tensor, pad: int) -> torch.Tensor:
    """Move each image by integer (shift_y[b], shift_x[b]) pixels, filling with 0.

    Output pixel (i, j) of image b is input pixel (i + shift_y[b], j + shift_x[b]),
    or 0 when that lies outside. ``|shift| <= pad`` is required. One gather, no loop.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p)
    rows = torch.arange(h, device=x.device) + pad + shift_y.view(b, 1)  # (B, H)
    cols = torch.arange(w, device=x.device) + pad + shift_x.view(b, 1)  # (B, W)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows.view(b, h, 1), cols.view(b, 1, w)]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def _crop(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    b, _, h, w = x.shape
    sy, sx = int(h * CROP_RATIO + 0.5), int(w * CROP_RATIO + 0.5)
    pad = max(sy, sx)
    shift_y = _randint(x, -sy, sy + 1, b, generator)
    shift_x = _randint(x, -sx, sx + 1, b, generator)
    return translate(x, shift_y, shift_x, pad)


def cutout_size(h: int, w: int) -> tuple[int, int]:
    """Side lengths of the DSA cutout square for an (h, w) image."""
    return int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)


def _cutout(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = cutout_size(h, w)
    top = _randint(x, 0, h + (1 - ch % 2), b, generator).view(b, 1) - ch // 2  # (B, 1)
    left = _randint(x, 0, w + (1 - cw % 2), b, generator).view(b, 1) - cw // 2
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= top) & (rows < top + ch)  # (B, H)
    in_cols = (cols >= left) & (cols < left + cw)  # (B, W)
    keep = ~(in_rows.unsqueeze(2) & in_cols.unsqueeze(1))  # (B, H, W)
    return x * keep.unsqueeze(1).to(x.dtype)


def _flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    flip = _rand(x, x.shape[0], 1, 1, 1, generator=generator) < FLIP_PROB
    return torch.where(flip, x.flip(3), x)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp each image by its (2, 3) matrix ``theta`` (B, 2, 3), bilinear, zeros outside."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _scale(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    b = x.shape[0]
    low = 1.0 / SCALE_RATIO
    sx = _rand(x, b, generator=generator) * (SCALE_RATIO - low) + low
    sy = _rand(x, b, generator=generator) * (SCALE_RATIO - low) + low
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)  # (B, 2, 3)
    return _affine(x, theta)


def _rotate(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    b = x.shape[0]
    angle = (_rand(x, b, generator=generator) - 0.5) * (2 * ROTATE_DEGREES * math.pi / 180.0)
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
    return _affine(x, theta)


_STRATEGY_FNS: dict[str, Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]] = {
    "color": _color,
    "crop": _crop,
    "cutout": _cutout,
    "flip": _flip,
    "scale": _scale,
    "rotate": _rotate,
}


def draw_strategy(strategies: Sequence[str] = DSA_STRATEGIES, *, generator: torch.Generator | None = None) -> str:
    """Draw one strategy name uniformly from ``strategies``.

    Uses ``generator`` (on its own device); on CUDA this reads a GPU value
    (a sync point), so hot loops draw strategies from a CPU generator instead
    and pass them to :func:`dsa` as ``strategy=``.
    """
    device = generator.device if generator is not None else "cpu"
    return strategies[int(torch.randint(len(strategies), (1,), generator=generator, device=device))]


def draw_strategies(
    n: int, strategies: Sequence[str] = DSA_STRATEGIES, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw ``n`` strategy indices uniformly from ``range(len(strategies))``.

    Returns an int64 (n,) tensor on ``generator``'s device (the CPU when
    ``None``); a CPU generator keeps :func:`dsa_per_image` free of sync points.
    """
    device = generator.device if generator is not None else "cpu"
    return torch.randint(len(strategies), (n,), generator=generator, device=device)


def _check_strategies(strategies: Sequence[str]) -> None:
    unknown = [s for s in strategies if s not in _STRATEGY_FNS]
    if unknown or not strategies:
        raise InvalidArgument(
            f"DSA strategies must be a non-empty subset of {', '.join(DSA_STRATEGIES)}, got {list(strategies)}"
        )


def dsa(
    x: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    strategies: Sequence[str] = DSA_STRATEGIES,
    strategy: str | None = None,
) -> torch.Tensor:
    """Differentiable siamese augmentation, single mode: one strategy for the batch.

    Args:
        x: Float (B, C, H, W) in normalised space; gradients flow back to it.
        generator: Source of randomness on ``x.device`` (``None``: global RNG).
            The strategy is drawn first, then the per-sample parameters.
        strategies: The pool the strategy is drawn from.
        strategy: Use this strategy instead of drawing one (the per-sample
            parameters still come from ``generator``).

    Returns:
        (B, C, H, W), the augmented batch.
    """
    _check_batch(x)
    _check_strategies(strategies)
    if strategy is None:
        strategy = draw_strategy(strategies, generator=generator)
    if strategy not in _STRATEGY_FNS:
        raise InvalidArgument(f"DSA strategy must be one of {', '.join(DSA_STRATEGIES)}, got {strategy!r}")
    if x.shape[0] == 0:
        return x
    return _STRATEGY_FNS[strategy](x, generator)


def dsa_per_image(
    x: torch.Tensor,
    strategy_index: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    strategies: Sequence[str] = DSA_STRATEGIES,
) -> torch.Tensor:
    """DSA with a strategy of its own for every image: row b gets ``strategies[strategy_index[b]]``.

    The rows are sorted by strategy (one gather), each strategy runs once,
    batched, on the rows that drew it (in ``strategies`` order, each drawing
    its per-sample parameters from ``generator``), and the rows go back to
    their places (one more gather). Differentiable w.r.t. ``x``.

    Args:
        x: Float (B, C, H, W) in normalised space.
        strategy_index: Int (B,) indices into ``strategies`` (:func:`draw_strategies`);
            on the CPU, so that splitting the batch reads no device value (a device
            tensor is copied to the host: a sync point on CUDA).
        generator: Source of the per-sample parameters, on ``x.device``.
        strategies: The strategy names the indices refer to.

    Returns:
        (B, C, H, W), the augmented batch, rows in their original order.
    """
    _check_batch(x)
    _check_strategies(strategies)
    index = strategy_index.detach().cpu().long()
    if index.shape != (x.shape[0],):
        raise InvalidArgument(f"strategy_index must have shape ({x.shape[0]},), got {tuple(index.shape)}")
    if len(index) and (index.min() < 0 or index.max() >= len(strategies)):
        raise InvalidArgument(f"strategy_index values must be in [0, {len(strategies) - 1}], "
                              f"got [{int(index.min())}, {int(index.max())}]")
    if x.shape[0] == 0:
        return x
    order = torch.argsort(index, stable=True)  # rows grouped by strategy
    counts = torch.bincount(index, minlength=len(strategies)).tolist()
    gathers = torch.stack([order, torch.argsort(order)]).to(x.device, non_blocking=True)  # (2, B): sort, unsort
    groups = torch.split(x.index_select(0, gathers[0]), counts)
    out = torch.cat([_STRATEGY_FNS[name](group, generator) for name, group in zip(strategies, groups) if len(group)])
    return out.index_select(0, gathers[1])


# --------------------------------------------------------------------------------------------
# Simple augmentation: random crop with padding + horizontal flip
# --------------------------------------------------------------------------------------------


def default_pad(side: int) -> int:
    """Padding of the simple random crop: 4 at 32x32, scaled with the side (at least 1)."""
    return max(1, round(side / 8))


def simple_augment(
    x: torch.Tensor, *, generator: torch.Generator | None = None, pad: int | None = None, flip: bool = True
) -> torch.Tensor:
    """Random crop of the zero-padded image (torchvision ``RandomCrop(side, padding=pad)``) + flip (p = 0.5).

    Args:
        x: Float (B, C, H, W) in normalised space (padding is 0 there, i.e. the mean colour).
        generator: Source of randomness on ``x.device`` (``None``: global RNG).
        pad: Padding in pixels; default ``max(1, round(side / 8))`` (4 at 32x32).
        flip: Mirror half the images; False where a mirror changes the class (``data.flip``: digits).
    """
    _check_batch(x)
    b, _, h, w = x.shape
    pad = default_pad(max(h, w)) if pad is None else pad
    if pad < 0:
        raise InvalidArgument(f"pad must be >= 0, got {pad}")
    if b == 0:
        return x
    shift_y = _randint(x, -pad, pad + 1, b, generator)
    shift_x = _randint(x, -pad, pad + 1, b, generator)
    x = translate(x, shift_y, shift_x, pad)
    return _flip(x, generator) if flip else x


# --------------------------------------------------------------------------------------------
# SelMatch's combined augmentation
# --------------------------------------------------------------------------------------------


def augment_grouped(
    x: torch.Tensor,
    num_distill: int,
    name: str,
    *,
    generator: torch.Generator | None = None,
    strategy: str | None = None,
    host_generator: torch.Generator | None = None,
    flip: bool = True,
) -> torch.Tensor:
    """Augment a batch whose first ``num_distill`` rows are D_distill and the rest D_select.

    The training loop arranges each batch this way (the split point is known
    on the host), so no GPU value is read. ``name`` is one of
    :data:`AUGMENTATIONS`: ``combined`` applies DSA to the first rows, one
    strategy per image (:func:`dsa_per_image`), and simple augmentation to the
    rest; ``dsa`` (one strategy for the batch), ``simple`` and ``none`` treat
    all rows alike.

    Args:
        x: Float (B, C, H, W).
        num_distill: How many leading rows are D_distill, in [0, B].
        name: Augmentation name.
        generator: Source of the per-sample randomness, on ``x.device``.
        strategy: The strategy of a ``dsa`` batch (drawn when ``None``); ``combined``
            draws its own per image and refuses one.
        host_generator: CPU generator the DSA strategies are drawn from, so that
            drawing them reads no device value (default: ``generator``).
        flip: Whether the simple augmentation mirrors (``data.flip``); DSA keeps its strategies.
    """
    if not 0 <= num_distill <= x.shape[0]:
        raise InvalidArgument(f"num_distill must be in [0, {x.shape[0]}], got {num_distill}")
    if strategy is not None and name != "dsa":
        raise InvalidArgument(f"strategy= applies to the dsa augmentation only, got it with {name!r}")
    strategy_generator = host_generator if host_generator is not None else generator
    if name == "none":
        return x
    if name == "simple":
        return simple_augment(x, generator=generator, flip=flip)
    if name == "dsa":
        if strategy is None:
            strategy = draw_strategy(generator=strategy_generator)
        return dsa(x, generator=generator, strategy=strategy)
    if name == "combined":
        if num_distill == 0:
            return simple_augment(x, generator=generator, flip=flip)
        index = draw_strategies(num_distill, generator=strategy_generator)
        distilled = dsa_per_image(x[:num_distill], index, generator=generator)
        if num_distill == x.shape[0]:
            return distilled
        selected = simple_augment(x[num_distill:], generator=generator, flip=flip)
        return torch.cat([distilled, selected])
    AUGMENTATIONS.get(name)  # raises UnknownNameError with the known names
    raise InvalidArgument(f"augmentation {name!r} has no grouped form")


def combined_augment(
    x: torch.Tensor, distill_mask: torch.Tensor, *, generator: torch.Generator | None = None, flip: bool = True
) -> torch.Tensor:
    """DSA on the rows where ``distill_mask`` is True (one strategy per image), simple augmentation on the others.

    Batched calls per group (see :func:`augment_grouped`); rows come back in their original order.
    Counting the True rows reads a GPU value on CUDA; the training loop
    avoids that with :func:`augment_grouped`.

    Args:
        x: Float (B, C, H, W) in normalised space.
        distill_mask: Bool (B,), True for D_distill rows.
        generator: Source of randomness on ``x.device``.
        flip: Whether the simple augmentation of the other rows mirrors (``data.flip``).
    """
    _check_batch(x)
    if distill_mask.shape != (x.shape[0],) or distill_mask.dtype != torch.bool:
        raise InvalidArgument(
            f"distill_mask must be a bool tensor of shape ({x.shape[0]},), got {distill_mask.dtype} {tuple(distill_mask.shape)}"
        )
    distill_mask = distill_mask.to(x.device)
    order = torch.argsort((~distill_mask).to(torch.int8), stable=True)  # distill rows first
    num_distill = int(distill_mask.sum())  # sync point on CUDA
    grouped = augment_grouped(x[order], num_distill, "combined", generator=generator, flip=flip)
    return grouped[torch.argsort(order)]


AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")


@AUGMENTATIONS.register("none")
def _no_augment(x: torch.Tensor, distill_mask: torch.Tensor | None, generator: torch.Generator | None, *,
                flip: bool = True) -> torch.Tensor:
    return x


@AUGMENTATIONS.register("simple")
def _simple(x: torch.Tensor, distill_mask: torch.Tensor | None, generator: torch.Generator | None, *,
            flip: bool = True) -> torch.Tensor:
    return simple_augment(x, generator=generator, flip=flip)


@AUGMENTATIONS.register("dsa")
def _dsa(x: torch.Tensor, distill_mask: torch.Tensor | None, generator: torch.Generator | None, *,
         flip: bool = True) -> torch.Tensor:
    return dsa(x, generator=generator)


@AUGMENTATIONS.register("combined")
def _combined(x: torch.Tensor, distill_mask: torch.Tensor | None, generator: torch.Generator | None, *,
              flip: bool = True) -> torch.Tensor:
    if distill_mask is None:  # a plain subset: every row is a selected real image
        return simple_augment(x, generator=generator, flip=flip)
    return combined_augment(x, distill_mask, generator=generator, flip=flip)


def augment_of_set(augment: str, *, distilled: bool, selection: str = "dsa") -> str:
    """The augmentation a set trains with under the evaluation protocol ``augment``.

    ``combined`` gives a set with no D_distill row (a selection: random, a window) crop + flip
    only; such a set trains with ``selection`` instead, as the paper's Table 1 scores selection
    with DSA. ``distilled``: the set has D_distill rows. Other protocols apply to every set as named.
    """
    return selection if augment == "combined" and not distilled else augment


def get_augmentation(name: str) -> Augmentation:
    """The registered augmentation ``(x, distill_mask, generator) -> x`` called ``name``."""
    return AUGMENTATIONS.get(name)


__all__ = [
    "AUGMENTATIONS",
    "DSA_STRATEGIES",
    "augment_grouped",
    "augment_of_set",
    "combined_augment",
    "cutout_size",
    "default_pad",
    "draw_strategies",
    "draw_strategy",
    "dsa",
    "dsa_per_image",
    "get_augmentation",
    "simple_augment",
    "translate",
]
