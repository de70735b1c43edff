"""Distilled sets saved by the reference implementations (MTT, FTD, DATM): read them to score them here.

Those codes ``torch.save`` plain tensors beside each other::

    images_best.pt   float (n, C, H, W), in the dataset's normalised space
                     ((x - mean) / std with the usual constants), or ZCA-whitened
                     when the run used --zca (MTT's default on CIFAR)
    labels_best.pt   int64 (n,) hard labels, or float (n, K) learned soft labels (DATM)
    lr_best.pt       optional: the learned student learning rate (a 0-d or 1-element tensor;
                     also read as syn_lr.pt / syn_lr_best.pt)

:func:`load_reference_set` reads a folder holding them or the files
themselves (safe load: tensors only, nothing in them runs). Soft labels
become class probabilities: rows that already are distributions are kept,
anything else is read as logits and put through a softmax (DATM learns
logits). Networks then train on them with the soft cross-entropy
``-sum_k p_k log softmax(f(x))_k``, the loss the distillation matched with.

ZCA: images saved whitened are only meaningful beside real images whitened
the same way. :func:`whitening_problem` tells normalised from whitened
images by how strongly neighbouring pixels correlate (about 0.9 in natural
images, near 0 once whitened), so a missing or a wrong ``--zca`` is an error,
not a silently wrong accuracy.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .data import ImageDataset
from .errors import DataError, InvalidArgument
from .experts import ZCAWhitening
from .fileio import load_torch

IMAGES_NAMES = ("images_best.pt",)
LABELS_NAMES = ("labels_best.pt",)
LR_NAMES = ("lr_best.pt", "syn_lr.pt", "syn_lr_best.pt")
WHITENING_SAMPLE = 2000  # training images whose statistics the set's are compared with


@dataclass(frozen=True)
class ReferenceSet:
    """A set saved by a reference implementation.

    Attributes:
        images: float32 (n, C, H, W), normalised or ZCA-whitened as saved.
        labels: int64 (n,) hard labels, or float32 (n, K) class probabilities (soft labels).
        lr: The learned student learning rate (None: not saved).
        files: The files read (images, labels[, lr]).
    """

    images: torch.Tensor
    labels: torch.Tensor
    lr: float | None
    files: tuple[Path, ...]

    @property
    def soft(self) -> bool:
        """Whether the labels are soft (n, K) probabilities."""
        return self.labels.dim() == 2


def load_reference_set(paths: Sequence[str | os.PathLike]) -> ReferenceSet:
    """Read a reference set: one folder (``images_best.pt``, ``labels_best.pt``[, ``lr_best.pt``]), or the files.

    Args:
        paths: ``[folder]`` or ``[images.pt, labels.pt]`` or ``[images.pt, labels.pt, lr.pt]``.

    Raises:
        InvalidArgument: Wrong number of paths, or a folder without the two files.
        DataError: A file that is not a tensor of the expected shape (or not a torch file of
            tensors at all).
    """
    paths = [Path(p).expanduser() for p in paths]
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        images_path, labels_path = _find(folder, IMAGES_NAMES), _find(folder, LABELS_NAMES)
        if images_path is None or labels_path is None:
            raise InvalidArgument(f"{folder} must hold images_best.pt and labels_best.pt (as MTT, FTD and DATM save "
                                  "them); or give the images and labels files")
        lr_path = _find(folder, LR_NAMES)
    elif len(paths) in (2, 3) and not any(p.is_dir() for p in paths):
        images_path, labels_path = paths[0], paths[1]
        lr_path = paths[2] if len(paths) == 3 else None
    else:
        raise InvalidArgument("--from-reference takes a folder, or IMAGES.pt LABELS.pt [LR.pt]; "
                              f"got {len(paths)} path(s)")
    images = _tensor(images_path, "reference images")
    if images.dim() != 4 or not images.is_floating_point():
        raise DataError(f"reference images {images_path} must be float (n, C, H, W), "
                        f"got {images.dtype} {tuple(images.shape)}")
    labels = _labels(_tensor(labels_path, "reference labels"), len(images), labels_path)
    lr = None if lr_path is None else _lr(lr_path)
    if not bool(torch.isfinite(images).all()):
        raise DataError(f"reference images {images_path} hold NaN or infinite values")
    files = (images_path, labels_path) + (() if lr_path is None else (lr_path,))
    return ReferenceSet(images.float().contiguous(), labels, lr, files)


def neighbour_correlation(images: torch.Tensor) -> float:
    """Mean correlation of horizontally adjacent values over (n, C, H, W) images: ~0.9 natural, ~0 whitened."""
    left, right = images[..., :-1].flatten().double(), images[..., 1:].flatten().double()
    left, right = left - left.mean(), right - right.mean()
    denominator = float(left.norm() * right.norm())
    return float(left @ right) / denominator if denominator else 0.0


def whitening_problem(images: torch.Tensor, normalised: torch.Tensor, whitened: torch.Tensor, *,
                      zca: bool) -> str | None:
    """Why ``images`` do not look like the space ``zca`` says (None: they do).

    Args:
        images: float (n, C, H, W), the set.
        normalised: float (m, C, H, W), real training images in normalised space.
        whitened: The same, ZCA-whitened.
        zca: Whether the set is said to be whitened.
    """
    ours = neighbour_correlation(images)
    plain, white = neighbour_correlation(normalised), neighbour_correlation(whitened)
    nearer_white = abs(ours - white) < abs(ours - plain)
    if nearer_white == zca:
        return None
    stats = (f"neighbouring pixels correlate {ours:.2f} in the set, {plain:.2f} in normalised and "
             f"{white:.2f} in ZCA-whitened training images")
    if zca:
        return f"the images do not look ZCA-whitened ({stats}); drop --zca"
    return f"the images look ZCA-whitened ({stats}); pass --zca"


def reference_whitening(ds: ImageDataset, images: torch.Tensor, *, zca: bool, eps: float) -> ZCAWhitening | None:
    """The ZCA transform of a set saved whitened (None for a normalised one); a set that looks otherwise is an error.

    Fitted on ``ds``'s normalised training split (as the experts' ``zca.pt``); its
    statistics decide whether ``images`` (float (n, C, H, W)) look whitened
    (:func:`whitening_problem`), which must agree with ``zca``.
    """
    train = ds.normalize(ds.split("train")[0].cpu())
    transform = ZCAWhitening.fit(train, eps)
    sample = train[:WHITENING_SAMPLE]
    problem = whitening_problem(images.cpu(), sample, transform(sample), zca=zca)
    if problem is not None:
        raise InvalidArgument(problem)
    return transform if zca else None


def _find(folder: Path, names: Sequence[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _tensor(path: Path, what: str) -> torch.Tensor:
    if not path.is_file():
        raise InvalidArgument(f"{what} {path} does not exist")
    value = load_torch(path, what=what)
    if not isinstance(value, torch.Tensor):
        raise DataError(f"{what} {path} must hold one tensor, got a {type(value).__name__}")
    return value.detach().cpu()


def _labels(labels: torch.Tensor, n: int, path: Path) -> torch.Tensor:
    """int64 (n,) hard labels, or float32 (n, K) probabilities (rows that are no distribution: softmax of logits)."""
    if len(labels) != n:
        raise DataError(f"reference labels {path} hold {len(labels)} rows for {n} images")
    if labels.dim() == 1 and not labels.is_floating_point() and labels.dtype != torch.bool:
        return labels.long()
    if labels.dim() == 1 and labels.is_floating_point() and bool((labels == labels.round()).all()):
        return labels.long()  # integral floats: hard labels saved as float
    if labels.dim() == 2 and labels.is_floating_point():
        labels = labels.float()
        if not bool(torch.isfinite(labels).all()):
            raise DataError(f"reference labels {path} hold NaN or infinite values")
        is_distribution = bool((labels >= 0).all()) and bool(torch.allclose(labels.sum(1), torch.ones(n), atol=1e-3))
        return labels if is_distribution else torch.softmax(labels, dim=1)
    raise DataError(f"reference labels {path} must be integer (n,) or float soft labels (n, K), "
                    f"got {labels.dtype} {tuple(labels.shape)}")


def _lr(path: Path) -> float:
    if not path.is_file():
        raise InvalidArgument(f"learned lr {path} does not exist")
    value = load_torch(path, what="learned lr")
    if isinstance(value, (int, float)):
        value = torch.tensor(float(value))
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise DataError(f"learned lr {path} must hold one number, got {_what(value)}")
    lr = float(value.detach().reshape(()))
    if not (math.isfinite(lr) and lr > 0):
        raise DataError(f"learned lr {path} must be a positive number, got {lr}")
    return lr


def _what(value: object) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"


__all__ = ["ReferenceSet", "load_reference_set", "neighbour_correlation", "reference_whitening", "whitening_problem"]
