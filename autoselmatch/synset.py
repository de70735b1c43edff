"""A synthetic set and its file: :class:`SyntheticSet`, the one reader and writer of set files.

``distill`` and ``tune`` write set files (``result.pt``), ``reproduce``
caches them, ``evaluate`` and ``export`` read them; all go through
:meth:`SyntheticSet.save` and :meth:`SyntheticSet.load`. The pixel
normalisation ``(x / 255 - mean) / std`` and its inverse are written here
once (:func:`from_pixels`, :func:`to_pixels`).

The set file
------------

A ``torch.save`` of one dict, loaded with ``weights_only=True`` (tensors,
strings, numbers, lists and dicts only; a file that would import anything
else is refused). ``n`` images of shape (C, H, W)::

    images        float32 (n, C, H, W) in the dataset's normalised space,
                  or uint8 (n, C, H, W) pixels
    uint8         uint8 (n, C, H, W), the images as pixels; written beside float
                  images when mean/std are known; read only when "images" is absent
    pixels        the same as "uint8" (the name an ``export`` dataset.pt uses)
    labels        int64 (n,) hard labels (any integer dtype is read)
    distill_mask  bool (n,), optional: True for D_distill rows (optimised pixels,
                  DSA under combined augmentation), False for D_select rows (real
                  images); absent means all False
    dataset       str, optional: the dataset name
    classes       list of str, optional: label k is classes[k]
    mean, std     lists of C floats, optional: the normalisation, in [0, 1] pixel units
    eta           float, optional: the learned student learning rate
    settings      JSON string (or dict), optional: every setting that made the set
    loss_history  float64 (k,), optional: matching loss per iteration
    evals         list of [iteration, accuracy], optional: quick validation accuracies
    curves        JSON string {"loss": [...], "evals": [...]}, optional: the form a
                  trial artifact carries instead of loss_history/evals
    indices       int64 (n,) or (0,), optional: training-set index each row started from
    iterations    int, optional: distillation iterations completed
    activity      list of dicts, optional: whether the distillation did anything, one
                  dict at the start, at each evaluation or coverage point and at the end
                  (see below)

Other keys (``alpha``, ``config``, ...) are allowed and ignored. ``distill``
writes every key above except ``pixels`` and ``curves``; the smallest valid
file holds ``images`` and ``labels``.

The activity record
-------------------

Each entry of ``activity`` describes the run up to one iteration::

    iteration      int, iterations completed
    loss_ratio     float or None: :func:`loss_ratio` of the losses so far, the mean
                   matching loss of the last w iterations over that of the first w
                   (None before the first iteration)
    eta            float, the learned student learning rate
    pixel_change   float, mean |x - x0| over the D_distill pixels, x0 their initial
                   values; in normalised space, where one unit is one std of the data
                   (0 when there is no D_distill; D_select rows never count)
    coverage_easy  float, optional (``distill.coverage_every``): coverage of the easy
    coverage_hard  and hard halves of the test set (:mod:`autoselmatch.coverage`)
    coverage       float, optional: coverage of the whole test set

A loss ratio near 1 and a pixel change near 0 mean the distillation barely
moved the set.

Example::

    s = SyntheticSet.load("studies/distill/digits/result.pt")
    s.images.shape, s.labels.shape, int(s.distill_mask.sum())   # (n, C, H, W), (n,), |D_distill|
    s.to_pixels()                                                # uint8 (n, C, H, W)
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .errors import DataError
from .fileio import load_torch, save_torch

ACTIVITY_WINDOW = 10
"""w of :func:`loss_ratio` at most: iterations averaged at each end of the loss history."""


def loss_ratio(losses: Sequence[float], window: int = ACTIVITY_WINDOW) -> float | None:
    """Mean of the last w losses over the mean of the first w, w = max(1, min(window, len(losses) // 2)).

    The two windows never overlap once there are two losses, so one noisy
    iteration does not decide the ratio. None for an empty history (or a
    start of 0).
    """
    if not len(losses):
        return None
    w = max(1, min(window, len(losses) // 2))
    start = float(np.mean(losses[:w]))
    return float(np.mean(losses[-w:])) / start if start else None


def barely_distilled(ratio: float | None, pixels: float | None, *, moved: float, ratio_above: float) -> bool:
    """Whether a distillation barely moved its set: its D_distill pixels moved less than ``moved`` std or,
    for a set that did not record its pixel change, its loss ratio stayed above ``ratio_above``.

    The pixel change decides where known: the loss ratio misleads both ways (the learned eta lowers
    the loss while the pixels stay; a partial update's real rows keep it high while the distilled
    ones move). False for a set that was not distilled (``ratio`` None).
    """
    if ratio is None:
        return False
    if pixels is not None:
        return pixels < moved
    return ratio > ratio_above


def from_pixels(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (n, C, H, W) pixels -> float32 (n, C, H, W) in normalised space: ``(x / 255 - mean) / std``."""
    m = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    return (pixels.float() / 255.0 - m) / s


def to_pixels(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """float (n, C, H, W) in normalised space -> uint8 pixels (same device), rounded and clipped to [0, 255]."""
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return ((images.detach().float() * s + m) * 255.0).round().clamp(0, 255).to(torch.uint8)


@dataclass
class SyntheticSet:
    """A synthetic (distilled or selected) set and everything that made it; the set file is its saved form.

    Attributes:
        images: float32 (n, C, H, W) in the dataset's normalised space, or
            uint8 (n, C, H, W) pixels (a set that only ever was pixels).
        labels: int64 (n,) hard labels.
        distill_mask: bool (n,): True for D_distill rows (optimised), False
            for D_select rows (frozen real images).
        dataset: Dataset name (None: unknown, the reader must be told).
        classes: Class names; label ``k`` is ``classes[k]`` (empty: unknown).
        mean, std: Per-channel normalisation constants in [0, 1] pixel units
            (empty: unknown; then float images cannot become pixels).
        eta: Learned student learning rate (None: not distilled, or unknown).
        settings: Every setting that shaped the set (config, ipc, alpha, beta, ...).
        loss_history: Matching loss per iteration.
        evals: (iteration, quick validation accuracy) pairs.
        indices: int64 (n,) training-set index each row was initialised from.
        iterations: Distillation iterations completed.
        activity: The activity record (see the module docstring): one dict at the start,
            at each evaluation or coverage point and at the end, oldest first.
    """

    images: torch.Tensor
    labels: torch.Tensor
    distill_mask: torch.Tensor
    dataset: str | None = None
    classes: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    eta: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    loss_history: list[float] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    indices: torch.Tensor | None = None
    iterations: int = 0
    activity: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def ipc(self) -> int:
        """Images per class (the largest class count when classes differ)."""
        return int(torch.bincount(self.labels, minlength=len(self.classes)).max())

    @property
    def curves(self) -> dict[str, Any]:
        """``{"loss": [...], "evals": [[iteration, accuracy], ...]}``, each only when recorded."""
        curves: dict[str, Any] = {}
        if self.loss_history:
            curves["loss"] = list(self.loss_history)
        if self.evals:
            curves["evals"] = [[i, a] for i, a in self.evals]
        return curves

    @property
    def loss_ratio(self) -> float | None:
        """The final matching-loss ratio: the last activity entry's, else :func:`loss_ratio` of the loss history."""
        if self.activity:
            return self.activity[-1].get("loss_ratio")
        return loss_ratio(self.loss_history)

    @property
    def pixel_change(self) -> float | None:
        """The final mean |x - x0| of the D_distill pixels (std units): the last activity entry's, else None."""
        return self.activity[-1].get("pixel_change") if self.activity else None

    def to_pixels(self) -> torch.Tensor:
        """uint8 (n, C, H, W) pixels (on the images' device): the images mapped back through the normalisation."""
        if self.images.dtype == torch.uint8:
            return self.images
        if not self.mean or not self.std:
            raise DataError("the set has float images but no mean/std to turn them into pixels")
        return to_pixels(self.images, self.mean, self.std)

    def normalized(self) -> torch.Tensor:
        """float32 (n, C, H, W) in normalised space: the images as they are, or the pixels normalised."""
        if self.images.is_floating_point():
            return self.images.float()
        if not self.mean or not self.std:
            raise DataError("the set has uint8 pixels but no mean/std to normalise them")
        return from_pixels(self.images, self.mean, self.std)

    def to_dict(self) -> dict[str, Any]:
        """The saved form (see the module docstring): tensors on the CPU, numbers, strings and lists."""
        images = self.images.detach().cpu()
        blob: dict[str, Any] = {"images": images if images.dtype == torch.uint8 else images.float()}
        if images.is_floating_point() and self.mean and self.std:
            blob["uint8"] = self.to_pixels().cpu()
        blob.update({
            "labels": self.labels.cpu().long(),
            "distill_mask": self.distill_mask.cpu().bool(),
            "dataset": self.dataset,
            "eta": None if self.eta is None else float(self.eta),
            "settings": json.dumps(self.settings, sort_keys=True, default=str),
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
            "loss_history": torch.tensor(self.loss_history, dtype=torch.float64),
            "evals": [[int(i), float(a)] for i, a in self.evals],
            "indices": (self.indices if self.indices is not None else torch.zeros(0, dtype=torch.long)).cpu(),
            "iterations": int(self.iterations),
            "activity": [dict(point) for point in self.activity],
        })
        return {k: v for k, v in blob.items() if v is not None}

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` atomically to ``path`` (a ``.pt`` file) and return the path."""
        path = Path(path)
        save_torch(self.to_dict(), path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, what: str = "set file") -> "SyntheticSet":
        """Read a set file (safe load: nothing in it is executed); bad content raises one-line :class:`DataError`.

        Args:
            path: The file.
            what: What the file is called in errors (``"set file"``, ``"result file"``).
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataError(f"{what} {path} does not exist")
        blob = load_torch(path, what=what)
        if isinstance(blob, torch.Tensor):  # what MTT, FTD and DATM save: images_best.pt, labels_best.pt
            raise DataError(f"{what} {path} holds a bare tensor, not a set file; for images and labels saved by "
                            "MTT, FTD or DATM use `autoselmatch evaluate --from-reference IMAGES LABELS`")
        if not isinstance(blob, dict):
            raise DataError(f"{what} {path} must hold a dict with 'images' and 'labels', got {type(blob).__name__}")
        return cls.from_dict(blob, source=f"{what} {path}")

    @classmethod
    def from_dict(cls, blob: Mapping[str, Any], *, source: str = "set") -> "SyntheticSet":
        """The set of a loaded set-file dict (see the module docstring), checked; ``source`` names it in errors."""
        images = blob.get("images")
        if images is None:
            images = blob.get("uint8", blob.get("pixels"))
        if not isinstance(images, torch.Tensor):
            raise DataError(f"{source} must hold a tensor under 'images' (or uint8 'pixels'); "
                            f"keys are: {', '.join(sorted(map(str, blob)))}")
        if not isinstance(blob.get("labels"), torch.Tensor):
            raise DataError(f"{source} has no 'labels' tensor; keys are: {', '.join(sorted(map(str, blob)))}")
        labels = blob["labels"]
        n = len(labels)
        mask = blob.get("distill_mask")
        if mask is None:
            mask = torch.zeros(n, dtype=torch.bool)
        if not isinstance(mask, torch.Tensor):
            raise DataError(f"{source}: 'distill_mask' must be a bool tensor, got {type(mask).__name__}")
        dataset = blob.get("dataset")
        if dataset is not None and not isinstance(dataset, str):
            raise DataError(f"{source}: 'dataset' must be a string, got {type(dataset).__name__}")
        history = blob.get("loss_history")
        evals = blob.get("evals")
        curves = _json_dict(blob.get("curves"), "curves", source)
        indices = blob.get("indices")
        out = cls(
            images=images.detach().cpu(),
            labels=labels.detach().cpu(),
            distill_mask=mask.cpu(),
            dataset=dataset,
            classes=tuple(str(c) for c in blob.get("classes") or ()),
            mean=tuple(float(m) for m in _as_list(blob.get("mean") or ())),
            std=tuple(float(s) for s in _as_list(blob.get("std") or ())),
            eta=None if blob.get("eta") is None else float(blob["eta"]),
            settings=_json_dict(blob.get("settings"), "settings", source),
            loss_history=[float(v) for v in _as_list(history if history is not None else curves.get("loss", ()))],
            evals=[(int(i), float(a)) for i, a in _as_list(evals if evals is not None else curves.get("evals", ()))],
            indices=indices.cpu() if isinstance(indices, torch.Tensor) and len(indices) else None,
            iterations=int(blob.get("iterations", 0)),
            activity=_activity(blob.get("activity"), source),
        )
        out.check(source)
        return dataclasses.replace(out, labels=out.labels.long())

    def check(self, source: str = "set") -> None:
        """Raise a one-line :class:`DataError` naming ``source`` unless the tensors form one set.

        Images (n, C, H, W) float or uint8, integer labels (n,) within ``classes``
        (when known), a bool mask (n,), one mean/std entry per channel (when known).
        """
        n = len(self.labels)
        if self.images.dim() != 4 or not (self.images.is_floating_point() or self.images.dtype == torch.uint8):
            raise DataError(f"{source}: images must be float or uint8 (n, C, H, W), "
                            f"got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dim() != 1 or self.labels.dtype.is_floating_point or self.labels.dtype == torch.bool:
            raise DataError(f"{source}: labels must be integers of shape (n,), "
                            f"got {self.labels.dtype} {tuple(self.labels.shape)}")
        if len(self.images) != n:
            raise DataError(f"{source} has {len(self.images)} images but {n} labels")
        if self.distill_mask.dtype != torch.bool or tuple(self.distill_mask.shape) != (n,):
            raise DataError(f"{source}: distill_mask must be bool ({n},), "
                            f"got {self.distill_mask.dtype} {tuple(self.distill_mask.shape)}")
        if self.classes and n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise DataError(f"{source}: labels must be in [0, {len(self.classes) - 1}] ({len(self.classes)} classes)")
        channels = self.images.shape[1]
        if (self.mean or self.std) and (len(self.mean) != channels or len(self.std) != channels):
            raise DataError(f"{source}: mean/std have {len(self.mean)}/{len(self.std)} entries for {channels} channels")


def _as_list(value: Any) -> list:
    return value.tolist() if isinstance(value, (torch.Tensor, np.ndarray)) else list(value)


def _activity(value: Any, source: str) -> list[dict[str, Any]]:
    """The stored activity record (absent in files before it existed: empty), checked and made plain numbers."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, Mapping) and "iteration" in p for p in value):
        raise DataError(f"{source}: 'activity' must be a list of dicts with an 'iteration' each")
    return [{str(k): (int(v) if k == "iteration" else None if v is None else float(v)) for k, v in point.items()}
            for point in value]


def _json_dict(value: Any, name: str, source: str) -> dict[str, Any]:
    """A dict stored as a JSON string (or as a dict), made plain JSON (tensors become lists)."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}: {name} is not valid JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise DataError(f"{source}: {name} must be a dict or a JSON object, got {type(value).__name__}")
    return json.loads(json.dumps(dict(value), default=json_default))


def json_default(value: Any) -> Any:
    """``json.dumps(..., default=json_default)``: tensors and NumPy values as plain lists and numbers."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


__all__ = ["ACTIVITY_WINDOW", "SyntheticSet", "from_pixels", "json_default", "loss_ratio", "to_pixels"]
