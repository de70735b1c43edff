"""What decides an expert trajectory, and where it is cached: the hash inputs, epoch count, seeds, ZCA.

:func:`expert_manifest` is the cache key (hashed into the folder name by
:func:`expert_cache_dir`); :class:`ZCAWhitening` is the optional whitening
the experts train on.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..data import ImageDataset
from ..errors import InvalidArgument
from ..fileio import stable_hash

TRAJECTORY_VERSION = 1  # bump when a change to the training code changes trajectories
EXPERT_SEED_STRIDE = 1000  # expert i of run seed s uses seed s * 1000 + i


# --------------------------------------------------------------------------------------------
# What determines a trajectory, and where it is cached
# --------------------------------------------------------------------------------------------


def expert_epochs_for(cfg: RunConfig, num_train: int | None = None) -> int:
    """Epochs each expert trains: ``experts.epochs``, or enough to store ``T+ + M`` snapshots.

    Args:
        cfg: The run settings (``experts`` and ``distill`` are read).
        num_train: Size of the training split; needed only when ``experts.snapshot_every``
            is set and ``experts.epochs`` is not (snapshots are counted in SGD steps).
    """
    if cfg.experts.epochs is not None:
        return cfg.experts.epochs
    snapshots = cfg.distill.max_start_epoch + cfg.distill.expert_epochs
    if cfg.experts.snapshot_every is None:
        return snapshots
    if num_train is None:
        raise InvalidArgument("with experts.snapshot_every set, the default epoch count depends on the "
                              "training split's size; pass num_train")
    steps = steps_per_epoch(num_train, cfg.experts.batch_size)
    return max(1, math.ceil(snapshots * cfg.experts.snapshot_every / steps))


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    """SGD steps of one expert epoch: every minibatch, the last one possibly smaller."""
    return max(1, math.ceil(num_train / batch_size))


def snapshot_steps(cfg: RunConfig, num_train: int) -> int | None:
    """``experts.snapshot_every`` as stored in the cache key: None when it is unset or equals one epoch.

    One epoch's worth of steps is the default layout, so it shares the default's cache.
    """
    every = cfg.experts.snapshot_every
    if every is None or every == steps_per_epoch(num_train, cfg.experts.batch_size):
        return None
    return every


def expert_seed(seed: int, index: int) -> int:
    """Seed of expert ``index`` in a run with seed ``seed``."""
    return seed * EXPERT_SEED_STRIDE + index


def expert_manifest(ds: ImageDataset, cfg: RunConfig) -> dict[str, Any]:
    """Everything that determines the trajectories of ``cfg``'s experts on ``ds``; hashed into the cache key.

    The number of experts is not part of it (expert ``i`` does not depend on
    how many others there are), so asking for more experts later trains only
    the new ones. The training device is not part of it either.
    ``snapshot_every`` appears only when it differs from one epoch.

    Args:
        ds: The dataset; its training split (validation excluded) is what experts see.
        cfg: The run settings; ``seed``, ``data`` and ``experts`` (and ``distill`` for the
            default epoch count) are read.
    """
    images, labels = ds.split("train")
    digest = _tensor_digest(images, labels)
    channels, height, width = ds.image_shape
    e = cfg.experts
    snapshot = snapshot_steps(cfg, len(labels))
    key = {
        "trajectory_version": TRAJECTORY_VERSION,
        "dataset": {
            "name": ds.name,
            "val_fraction": cfg.data.val_fraction,  # as configured; the sha256 below is what binds the split
            "split_seed": cfg.data.split_seed,
            "num_train": int(len(labels)),
            "image_shape": [channels, height, width],
            "num_classes": ds.num_classes,
            "mean": list(ds.mean),
            "std": list(ds.std),
            "sha256": digest,
        },
        "model": {"name": e.model.name, "options": dict(e.model.options)},
        "optimizer": {
            "name": "sgd",
            "lr": e.lr,
            "momentum": e.momentum,
            "weight_decay": e.weight_decay,
            "batch_size": e.batch_size,
        },
        "augment": e.augment,
        "zca": {"eps": e.zca_eps} if e.zca else None,
        "epochs": expert_epochs_for(cfg, len(labels)),
        "seed": cfg.seed,
    }
    if snapshot is not None:  # absent by default: the key (and folder) of the per-epoch layout is unchanged
        key["snapshot_every"] = snapshot
    if e.augment == "simple" and not ds.flip:  # crops without mirrors (data.flip); absent otherwise, as before
        key["flip"] = False
    return key


def expert_cache_dir(cfg: RunConfig, manifest: dict[str, Any]) -> Path:
    """``<cache_dir>/experts/<dataset>-<hash of manifest>``."""
    name = re.sub(r"[^A-Za-z0-9_.]+", "-", manifest["dataset"]["name"]).strip("-") or "dataset"
    return cfg.cache_path / "experts" / f"{name}-{stable_hash(manifest)}"


def _tensor_digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 of the training pixels and labels: a changed or re-split dataset gets another key."""
    digest = hashlib.sha256()
    digest.update(images.detach().cpu().contiguous().numpy())
    digest.update(labels.detach().cpu().to(torch.int64).contiguous().numpy())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# ZCA whitening
# --------------------------------------------------------------------------------------------


class ZCAWhitening:
    """ZCA whitening fitted on normalised training images, as kornia's ``ZCAWhitening`` used by MTT.

    ``W = U diag(1 / sqrt(S + eps)) U^T`` with ``U S U^T`` the (unbiased)
    covariance of the flattened images; ``x -> (x - mean) W``. Experts trained
    with ``experts.zca`` see whitened images, so distillation and evaluation
    must whiten real images with the same transform (``ExpertStore.zca``).

    Args:
        mean: (D,) per-feature mean of the flattened training images.
        transform: (D, D) whitening matrix.
        inverse_transform: (D, D) its inverse, to map whitened images back.
    """

    def __init__(self, mean: torch.Tensor, transform: torch.Tensor, inverse_transform: torch.Tensor) -> None:
        self.mean = mean
        self.transform = transform
        self.inverse_transform = inverse_transform

    @classmethod
    def fit(cls, images: torch.Tensor, eps: float = 0.1) -> "ZCAWhitening":
        """Fit on float (N, C, H, W) normalised images (in float64 on the CPU, for determinism)."""
        if len(images) < 2:
            raise InvalidArgument(f"ZCA needs at least 2 training images, got {len(images)}")
        x = images.detach().cpu().flatten(1).double()  # (N, D)
        mean = x.mean(0)
        centred = x - mean
        cov = centred.T @ centred / (len(x) - 1)  # (D, D)
        values, vectors = torch.linalg.eigh(cov)
        values = values.clamp_min(0.0)
        transform = (vectors * torch.rsqrt(values + eps)) @ vectors.T
        inverse = (vectors * torch.sqrt(values + eps)) @ vectors.T
        return cls(mean.float(), transform.float(), inverse.float())

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> whitened (N, C, H, W) on the images' device."""
        mean, transform = self.mean.to(images.device), self.transform.to(images.device)
        return ((images.flatten(1) - mean) @ transform).view_as(images)

    def inverse(self, images: torch.Tensor) -> torch.Tensor:
        """Whitened (N, C, H, W) -> normalised (N, C, H, W)."""
        mean, inverse = self.mean.to(images.device), self.inverse_transform.to(images.device)
        return (images.flatten(1) @ inverse + mean).view_as(images)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "transform": self.transform, "inverse_transform": self.inverse_transform}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "ZCAWhitening":
        return cls(state["mean"], state["transform"], state["inverse_transform"])
