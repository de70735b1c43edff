"""Expert trajectories: train once, cache on disk, resume after a crash, load lazily.

Trajectory matching (eq. 1 in DESIGN.md) compares a student with an expert
network trained on the real training split, at epochs ``t`` and ``t + M``.
This module trains ``K`` such experts and stores, per expert, the flat
parameter vector (:class:`autoselmatch.models.FlatModel` order) at
initialisation and after every epoch, or every ``experts.snapshot_every`` SGD
steps when that is set (then ``distill.expert_epochs`` and
``distill.max_start_epoch`` count these snapshots). It also records, per
epoch, which training samples the training forward passes classified
correctly: the by-product that forgetting and learning-speed scores are
derived from (:mod:`autoselmatch.scores`).

Storage (one folder per setting, ``<cache>/experts/<dataset>-<hash>/``)::

    manifest.json       the hash inputs ("key"), parameter count, stored rows - 1 ("num_epochs"),
                        and per finished expert: file, bytes, sha256, validation accuracy, correctness file
    expert_000.npy      float32 (R, P); row r = parameters after r epochs (R = E + 1), or after
                        r * snapshot_every SGD steps (R = E * steps per epoch // snapshot_every + 1)
    expert_000.correct.npy  uint8 (E, N): 1 where the training forward pass of epoch e classified
                        training sample n (``ds.split("train")`` order) correctly; augmentation on
    expert_001.npy      ...
    zca.pt              the whitening transform (only with experts.zca)
    .expert_000.lock    present while a process trains expert 0 (or left by one that was killed)

The folder name hashes :func:`expert_manifest`, i.e. everything that decides
a trajectory, so a distillation asking for other settings never reuses
mismatched experts. ``.npy`` files are memory-mapped or read one row at a
time, so a (start, target) pair costs 2 x P x 4 bytes of memory, not the
whole buffer (see bench/experts_memory.py).

Crash safety and resume: while expert ``i`` trains, its rows go into
``expert_00i.partial.npy`` (written in place, fsynced, as each snapshot is
reached) and, after each epoch, ``expert_00i.state.pt`` (model, optimizer,
epoch count and the correctness record so far) is replaced atomically with
the sha256 of every row so far. Rows beyond the recorded epoch are never
trusted. The correctness record is written atomically, then the finished
file is hashed, recorded in the manifest and only then renamed to
``expert_00i.npy``. Opening a store checks
each file's header, shape and size against the manifest; ``train_experts``
and :meth:`ExpertStore.verify` also compare sha256 checksums. A bad file is
reported and retrained, never loaded. The data order and augmentation of epoch ``e`` come from
a generator seeded by (expert seed, e), so on the CPU a resumed expert is
bit-identical to an uninterrupted one (on CUDA, non-deterministic cuDNN
kernels already make two uninterrupted runs differ in the last bits).
Expert ``i`` is seeded with ``seed * 1000 + i``; ZCA, when enabled, is
fitted on the normalised training split and stored as ``zca.pt``.

Several processes may train into one folder at once (``tune`` workers on
several machines over a shared cache, two commands started together). Each
expert is trained under its own lock file (:func:`autoselmatch.fileio.file_lock`):
a process skips the experts others are training, and at the end waits for
them, taking over (and resuming) any whose trainer died. Every manifest
change re-reads the manifest under ``.manifest.lock`` and merges into it, so
no process drops another's record. Expert ``i``'s file depends on ``i`` and
the settings only, not on which process trained it.

    cfg = load_preset("digits")
    ds = load_dataset("digits")
    store = train_experts(ds, cfg)                 # trains, or reuses what is cached
    start, target = store.pair(0, start_epoch=2, expert_epochs=2)   # (P,), (P,)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from ._version import __version__
from .config import RunConfig
from .data import ImageDataset
from .errors import DataError, InvalidArgument, TrainingDiverged
from .fileio import atomic_write, file_lock, load_torch, save_json, save_torch, sha256_file, stable_hash
from .models import FlatModel
from .runtime import LOG, fault_point, progress, resolve_device

TRAJECTORY_VERSION = 1  # bump when a change to the training code changes trajectories
FORMAT = "autoselmatch-experts"
DTYPE = np.dtype("<f4")
EXPERT_SEED_STRIDE = 1000  # expert i of run seed s uses seed s * 1000 + i
EVAL_BATCH = 1024
MANIFEST_LOCK = ".manifest.lock"


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


# --------------------------------------------------------------------------------------------
# The store: reading trajectories lazily
# --------------------------------------------------------------------------------------------


class ExpertStore:
    """Finished expert trajectories in one cache folder, read lazily from ``.npy`` files.

    Opening checks the manifest and every file's header and size (cheap);
    :meth:`verify` also checks sha256 checksums. Nothing is loaded until a
    trajectory or a pair is asked for.

    Args:
        directory: The cache folder (``expert_cache_dir``).
        num_experts: Use the first ``num_experts`` finished experts (all when None);
            fewer finished ones is a ``DataError``.
        num_params: Parameter count of the model that will consume the
            trajectories; a different stored count is a ``DataError``.

    Example::

        store = load_experts(ds, cfg)
        start, target = store.sample(torch.Generator().manual_seed(0), max_start_epoch=6, expert_epochs=2)
    """

    def __init__(self, directory: str | os.PathLike, *, num_experts: int | None = None,
                 num_params: int | None = None) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.num_params = int(self.manifest["num_params"])
        self.num_epochs = int(self.manifest["num_epochs"])  # stored rows - 1: epochs, or snapshots
        self.snapshot_every: int | None = self.manifest["key"].get("snapshot_every")  # None: one row per epoch
        if num_params is not None and num_params != self.num_params:
            raise DataError(
                f"experts in {self.directory} have {self.num_params} parameters but the model has {num_params}; "
                "retrain them with the model's settings"
            )
        finished = _finished_indices(self.manifest)
        if num_experts is None:
            num_experts = len(finished)
        if num_experts < 1 or finished[:num_experts] != list(range(num_experts)):
            raise DataError(
                f"{self.directory} holds {len(finished)} finished experts (need {num_experts}); "
                "rerun `autoselmatch experts` with the same settings to finish them"
            )
        self.num_experts = num_experts
        self._offsets = [self._check_file(i) for i in range(num_experts)]
        self._zca: ZCAWhitening | None = None

    # ---- files ---------------------------------------------------------------------------------

    def path(self, expert: int) -> Path:
        """The ``.npy`` file of expert ``expert``."""
        return self.directory / _expert_name(expert)

    def _check_file(self, expert: int) -> int:
        """Header/size check of one expert file; returns the data offset in bytes."""
        path = self.path(expert)
        problem = trajectory_file_problem(path, (self.num_epochs + 1, self.num_params))
        if problem is not None:
            raise DataError(f"expert file {path} is {problem}; rerun `autoselmatch experts` to retrain it")
        record = self.manifest["experts"][str(expert)]
        if path.stat().st_size != record["bytes"]:
            raise DataError(f"expert file {path} holds {path.stat().st_size} bytes, the manifest says {record['bytes']}")
        return _data_offset(path)

    def verify(self) -> None:
        """Check every expert's sha256 against the manifest (reads every file once)."""
        for i in range(self.num_experts):
            expected = self.manifest["experts"][str(i)]["sha256"]
            if sha256_file(self.path(i)) != expected:
                raise DataError(f"expert file {self.path(i)} does not match its recorded sha256; it is corrupt")

    # ---- reading -------------------------------------------------------------------------------

    def trajectory(self, expert: int) -> np.memmap:
        """Read-only memory map of expert ``expert``: float32 (num_epochs + 1, P), one row per snapshot."""
        self._check_expert(expert)
        return np.load(self.path(expert), mmap_mode="r", allow_pickle=False)

    def epoch(self, expert: int, epoch: int, *, device: torch.device | str | None = None) -> torch.Tensor:
        """Parameters (P,) of ``expert`` at row ``epoch`` (after that many epochs, or snapshots), read alone."""
        self._check_expert(expert)
        if not 0 <= epoch <= self.num_epochs:
            raise InvalidArgument(f"epoch must be in [0, {self.num_epochs}], got {epoch}")
        theta = torch.from_numpy(_read_row(self.path(expert), self._offsets[expert], epoch, self.num_params))  # (P,)
        return theta if device is None else theta.to(device)

    def pair(self, expert: int, start_epoch: int, expert_epochs: int, *,
             device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(theta*_t, theta*_{t+M}): float32 (P,) parameters of ``expert`` at ``start_epoch`` and M epochs later."""
        if expert_epochs < 1:
            raise InvalidArgument(f"expert_epochs must be >= 1, got {expert_epochs}")
        if start_epoch < 0:
            raise InvalidArgument(f"start_epoch must be >= 0, got {start_epoch}")
        if start_epoch + expert_epochs > self.num_epochs:
            raise InvalidArgument(
                f"start_epoch + expert_epochs must be <= the {self.num_epochs} stored epochs, "
                f"got {start_epoch} + {expert_epochs}"
            )
        return self.epoch(expert, start_epoch, device=device), self.epoch(expert, start_epoch + expert_epochs, device=device)

    def sample_index(self, generator: torch.Generator, *, max_start_epoch: int, expert_epochs: int) -> tuple[int, int]:
        """A uniformly drawn (expert, start epoch in [0, max_start_epoch))."""
        if max_start_epoch < 1:
            raise InvalidArgument(f"max_start_epoch must be >= 1, got {max_start_epoch}")
        if expert_epochs < 1:
            raise InvalidArgument(f"expert_epochs must be >= 1, got {expert_epochs}")
        if max_start_epoch + expert_epochs > self.num_epochs:
            raise InvalidArgument(
                f"max_start_epoch + expert_epochs = {max_start_epoch + expert_epochs} exceeds the "
                f"{self.num_epochs} epochs stored in {self.directory}; train experts with more epochs"
            )
        device = generator.device  # a CUDA generator works too, at one sync per draw
        expert = int(torch.randint(self.num_experts, (1,), generator=generator, device=device))
        start = int(torch.randint(max_start_epoch, (1,), generator=generator, device=device))
        return expert, start

    def sample(self, generator: torch.Generator, *, max_start_epoch: int, expert_epochs: int,
               device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, target) float32 (P,) for a random expert and start epoch (see :meth:`sample_index`)."""
        expert, start = self.sample_index(generator, max_start_epoch=max_start_epoch, expert_epochs=expert_epochs)
        return self.pair(expert, start, expert_epochs, device=device)

    @property
    def zca(self) -> ZCAWhitening | None:
        """The whitening the experts were trained with (None without ``experts.zca``)."""
        if self.manifest["key"]["zca"] is not None and self._zca is None:
            self._zca = _load_zca(self.directory, self.manifest)
        return self._zca

    def correctness(self, expert: int) -> np.ndarray:
        """uint8 (E, N): 1 where epoch e's training forward pass classified sample n correctly.

        N follows ``ds.split("train")`` (the pool, ascending). Experts trained
        before these records were kept have none: a ``DataError`` says so.
        """
        self._check_expert(expert)
        record = self.manifest["experts"][str(expert)].get("correct")
        if record is None:
            raise DataError(f"expert {expert} in {self.directory} was trained without a correctness record "
                            "(by an older autoselmatch); delete the folder, or pass another --cache-dir, to retrain it")
        path = self.directory / record["file"]
        if not path.is_file() or sha256_file(path) != record["sha256"]:
            raise DataError(f"correctness record {path} is missing or corrupt; "
                            "rerun `autoselmatch experts` to retrain it")
        values = np.load(path, allow_pickle=False)
        if values.dtype != np.uint8 or list(values.shape) != record["shape"]:
            raise DataError(f"correctness record {path} holds {values.dtype} {values.shape}, "
                            f"expected uint8 {record['shape']}")
        return values

    @property
    def val_accuracies(self) -> list[float | None]:
        """Final validation accuracy of each expert, in [0, 1] (None: no validation split, or an expert
        recorded before it was measured; the test split is kept for final reports)."""
        records = (self.manifest["experts"][str(i)] for i in range(self.num_experts))
        return [None if r.get("val_acc") is None else float(r["val_acc"]) for r in records]

    def _check_expert(self, expert: int) -> None:
        if not 0 <= expert < self.num_experts:
            raise InvalidArgument(f"expert must be in [0, {self.num_experts - 1}], got {expert}")

    def __repr__(self) -> str:
        return (f"ExpertStore({str(self.directory)!r}, num_experts={self.num_experts}, "
                f"num_epochs={self.num_epochs}, num_params={self.num_params})")


def load_experts(ds: ImageDataset, cfg: RunConfig) -> ExpertStore:
    """Open the cached experts for ``cfg`` on ``ds``; a ``DataError`` saying how to train them if missing.

    Checks that ``cfg.experts.num_experts`` experts are finished and that their
    parameter count matches ``cfg.experts.model`` built for ``ds``.
    """
    manifest = expert_manifest(ds, cfg)
    directory = expert_cache_dir(cfg, manifest)
    if not (directory / "manifest.json").is_file():
        raise DataError(
            f"no experts for {ds.name} with these settings in {directory}; run "
            f"`autoselmatch experts --dataset {ds.name} --num-experts {cfg.experts.num_experts} "
            f"--epochs {manifest['epochs']}` with the same preset and --set options"
        )
    store = ExpertStore(directory, num_experts=cfg.experts.num_experts, num_params=_num_params(ds, cfg))
    if store.manifest["key"] != manifest:
        raise DataError(f"the manifest in {directory} does not describe these settings; delete the folder and retrain")
    return store


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest.json of an expert folder, checked for the fields the store needs."""
    path = directory / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"no expert manifest at {path}; run `autoselmatch experts` first") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read expert manifest {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not an autoselmatch expert manifest")
    for field_name in ("key", "num_params", "num_epochs", "experts"):
        if field_name not in manifest:
            raise DataError(f"expert manifest {path} lacks {field_name!r}; delete the folder and retrain")
    return manifest


def _finished_indices(manifest: dict[str, Any]) -> list[int]:
    return sorted(int(k) for k in manifest["experts"])


def _expert_name(expert: int, suffix: str = ".npy") -> str:
    return f"expert_{expert:03d}{suffix}"


def _load_zca(directory: Path, manifest: dict[str, Any]) -> ZCAWhitening:
    path = directory / "zca.pt"
    record = manifest.get("zca_file")
    if not path.is_file() or record is None or sha256_file(path) != record["sha256"]:
        raise DataError(f"ZCA transform {path} is missing or corrupt; rerun `autoselmatch experts` with --zca")
    return ZCAWhitening.from_state_dict(load_torch(path))


def _num_params(ds: ImageDataset, cfg: RunConfig) -> int:
    channels, size, _ = ds.image_shape
    model = cfg.experts.model.build(channels=channels, num_classes=ds.num_classes, image_size=size)
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# .npy trajectory files: header checks and row writes
# --------------------------------------------------------------------------------------------


def _read_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) of a .npy file; ValueError/OSError when unreadable."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = reader(f)
        return tuple(shape), fortran_order, dtype, f.tell()


def _data_offset(path: Path) -> int:
    return _read_header(path)[3]


def trajectory_file_problem(path: Path, shape: tuple[int, int]) -> str | None:
    """Why ``path`` is not a complete float32 ``shape`` .npy file (None when it is)."""
    if not path.is_file():
        return "missing"
    try:
        file_shape, fortran_order, dtype, offset = _read_header(path)
    except (OSError, ValueError) as exc:
        return f"not a readable .npy file ({exc})"
    if dtype != DTYPE or fortran_order:
        return f"of dtype {dtype}{' (Fortran order)' if fortran_order else ''}, expected float32"
    if file_shape != tuple(shape):
        return f"of shape {file_shape}, expected {tuple(shape)}"
    expected = offset + shape[0] * shape[1] * DTYPE.itemsize
    size = path.stat().st_size
    if size < expected:
        return f"truncated ({size} bytes, expected {expected})"
    if size > expected:
        return f"too long ({size} bytes, expected {expected})"
    return None


def _read_row(path: Path, offset: int, row: int, num_params: int) -> np.ndarray:
    """Row ``row`` (P,) of a float32 trajectory file whose data starts at ``offset``; reads only that row."""
    values = np.fromfile(path, dtype=DTYPE, count=num_params, offset=offset + row * num_params * DTYPE.itemsize)
    if len(values) != num_params:
        raise DataError(f"expert file {path} is truncated at epoch {row}")
    return values


def _create_trajectory_file(path: Path, shape: tuple[int, int]) -> None:
    """An all-zero float32 ``shape`` .npy file, created atomically (sparse where the OS allows)."""
    with atomic_write(path) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": DTYPE.str, "fortran_order": False, "shape": shape})
        f.truncate(f.tell() + shape[0] * shape[1] * DTYPE.itemsize)


def _write_row(path: Path, offset: int, row: int, values: torch.Tensor) -> str:
    """Write float32 (P,) ``values`` as row ``row``, fsync, and return the row's sha256."""
    blob = values.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, blob, offset + row * len(blob))
        os.fsync(fd)
    finally:
        os.close(fd)
    return hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class _TrainingData:
    """Tensors and settings shared by every expert of one run (all on the training device)."""

    images: torch.Tensor  # float32 (N, C, H, W), normalised (and whitened with ZCA)
    labels: torch.Tensor  # int64 (N,)
    val_images: torch.Tensor  # float32 (M, C, H, W), the validation split (M may be 0)
    val_labels: torch.Tensor  # int64 (M,)
    num_classes: int
    augment: str  # none, simple or dsa
    device: torch.device


@dataclass(frozen=True)
class _Layout:
    """Where an expert's training steps land in its file: rows at every ``snapshot_every`` SGD steps."""

    epochs: int  # E, training epochs
    steps_per_epoch: int
    snapshot_every: int  # SGD steps between rows (steps_per_epoch: one row per epoch)
    num_params: int
    num_train: int

    def rows_after(self, epoch: int) -> int:
        """Rows written once ``epoch`` epochs are done (row 0, the initialisation, included)."""
        return epoch * self.steps_per_epoch // self.snapshot_every + 1

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, P) of the trajectory file."""
        return self.rows_after(self.epochs), self.num_params


def train_experts(ds: ImageDataset, cfg: RunConfig, *, device: torch.device | str | None = None) -> ExpertStore:
    """Train (or finish, or reuse) ``cfg.experts.num_experts`` expert trajectories and return their store.

    Experts already finished with these settings are kept (their sha256 is
    checked); a half-trained expert resumes from its last finished epoch; a
    corrupt or truncated file is reported and retrained. Experts another
    process is training are left to it and waited for at the end.

    Args:
        ds: The dataset; experts train on ``ds.split("train")`` (validation excluded)
            and report accuracy on ``ds.split("val")`` (the test split is for final reports).
        cfg: Run settings: ``experts`` (model, optimizer, augmentation, ZCA, epochs),
            ``seed``, ``cache_dir``; ``distill`` gives the default epoch count.
        device: Where to train (default: ``cfg.device`` resolved).
    """
    key = expert_manifest(ds, cfg)
    num_params = _num_params(ds, cfg)
    num_train = key["dataset"]["num_train"]
    steps = steps_per_epoch(num_train, cfg.experts.batch_size)
    layout = _Layout(key["epochs"], steps, key.get("snapshot_every", steps), num_params, num_train)
    if layout.shape[0] < 2:
        raise InvalidArgument(f"experts.snapshot_every must be at most the {key['epochs'] * steps} SGD steps of "
                              f"{key['epochs']} epochs, got {layout.snapshot_every}")
    directory = expert_cache_dir(cfg, key)
    _ensure_writable(directory)
    device = resolve_device(cfg.device) if device is None else torch.device(device)
    manifest = _open_manifest(directory, key, layout)
    zca = _fitted_zca(ds, cfg.experts.zca_eps, directory) if cfg.experts.zca else None

    num_experts = cfg.experts.num_experts
    missing = [i for i in range(num_experts) if _expert_problem(directory, manifest, i, layout.shape) is not None]
    LOG.info("experts in %s: %d of %d finished, %d to train", directory, num_experts - len(missing), num_experts,
             len(missing))
    if missing:
        data = _training_data(ds, cfg, zca, device)
        busy = []
        for i in missing:  # first the experts no other process is training
            with file_lock(_lock_path(directory, i), blocking=False) as held:
                if held:
                    _train_unless_finished(i, cfg, data, directory, layout)
                else:
                    busy.append(i)
        for i in busy:  # then wait for the others' trainers (a dead one's lock is free: resume its state here)
            LOG.info("expert %d is being trained by another process; waiting for it", i + 1)
            with file_lock(_lock_path(directory, i)):
                _train_unless_finished(i, cfg, data, directory, layout)
    return ExpertStore(directory, num_experts=num_experts, num_params=num_params)


def _ensure_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise InvalidArgument(
            f"cache directory {directory} cannot be written ({exc.strerror or exc}); pass a writable --cache-dir"
        ) from None


def _open_manifest(directory: Path, key: dict[str, Any], layout: _Layout) -> dict[str, Any]:
    """The folder's manifest, created when missing and checked against ``key`` and the model."""
    path = directory / "manifest.json"
    num_params = layout.num_params
    if "snapshot_every" in key:
        rows = (f"row r = flat parameters after r * {layout.snapshot_every} SGD steps "
                f"({layout.steps_per_epoch} steps per epoch)")
    else:
        rows = "row e = flat parameters after e epochs"
    if not path.is_file():
        with file_lock(directory / MANIFEST_LOCK):
            if not path.is_file():  # no other process created it while this one waited
                save_json({
                    "format": FORMAT,
                    "hash": stable_hash(key),
                    "key": key,
                    "num_params": num_params,
                    "num_epochs": layout.shape[0] - 1,
                    "layout": f"one float32 .npy per expert, shape (num_epochs + 1, num_params); {rows}",
                    "expert_seed": f"seed * {EXPERT_SEED_STRIDE} + expert index",
                    "experts": {},
                    "zca_file": None,
                    "written_by": {"autoselmatch": __version__, "torch": torch.__version__},
                }, path)
    manifest = read_manifest(directory)
    if manifest["key"] != key:
        raise DataError(f"the manifest in {directory} does not describe these settings; delete the folder and retrain")
    if manifest["num_params"] != num_params:
        raise DataError(
            f"expert manifest in {directory} says {manifest['num_params']} parameters but the model "
            f"{key['model']['name']} has {num_params}; delete the folder and retrain"
        )
    return manifest


def _training_data(ds: ImageDataset, cfg: RunConfig, zca: ZCAWhitening | None, device: torch.device) -> _TrainingData:
    images, labels = ds.split("train")
    val_images, val_labels = ds.split("val")
    images, val_images = ds.normalize(images.to(device)), ds.normalize(val_images.to(device))
    if zca is not None:
        images, val_images = zca(images), zca(val_images)
    return _TrainingData(images, labels.to(device), val_images, val_labels.to(device), ds.num_classes,
                         cfg.experts.augment, device)


def _fitted_zca(ds: ImageDataset, eps: float, directory: Path) -> ZCAWhitening:
    """The stored ZCA transform if intact, else one fitted on the normalised training split and stored.

    Under the manifest lock: of processes starting together, the first fits
    and records it, the others load that one.
    """
    path = directory / "zca.pt"
    with file_lock(directory / MANIFEST_LOCK):
        manifest = read_manifest(directory)
        record = manifest.get("zca_file")
        if path.is_file() and record is not None and sha256_file(path) == record["sha256"]:
            return ZCAWhitening.from_state_dict(load_torch(path))
        zca = ZCAWhitening.fit(ds.normalize(ds.split("train")[0]), eps)
        save_torch(zca.state_dict(), path)
        manifest["zca_file"] = {"name": path.name, "sha256": sha256_file(path)}
        save_json(manifest, directory / "manifest.json")
    return zca


def _update_manifest(directory: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    """Apply ``change`` to the manifest as it is on disk now, under the manifest lock, and write it back.

    Re-reading under the lock keeps the records other processes wrote since
    this one last read the manifest.
    """
    with file_lock(directory / MANIFEST_LOCK):
        manifest = read_manifest(directory)
        change(manifest)
        save_json(manifest, directory / "manifest.json")


def _lock_path(directory: Path, expert: int) -> Path:
    """The lock file held while a process trains (or resumes, or repairs) expert ``expert``."""
    return directory / f".{_expert_name(expert, '.lock')}"


def _expert_problem(directory: Path, manifest: dict[str, Any], expert: int, shape: tuple[int, int]) -> str | None:
    """Why expert ``expert`` is not finished according to ``manifest`` (None: recorded, and its file intact)."""
    path = directory / _expert_name(expert)
    record = manifest["experts"].get(str(expert))
    if record is None:
        return "not recorded in the manifest" if path.exists() else "missing"
    problem = trajectory_file_problem(path, shape)
    if problem is None and sha256_file(path) != record["sha256"]:
        problem = "corrupt (sha256 differs from the manifest)"
    correct = record.get("correct")  # absent in experts trained before the records were kept: still valid
    if problem is None and correct is not None:
        correct_path = directory / correct["file"]
        if not correct_path.is_file() or sha256_file(correct_path) != correct["sha256"]:
            problem = f"accompanied by a missing or corrupt correctness record {correct_path.name}"
    return problem


def _train_unless_finished(expert: int, cfg: RunConfig, data: _TrainingData, directory: Path,
                           layout: _Layout) -> None:
    """Train ``expert`` (its lock held) unless another process finished it since this one looked.

    A bad file is reported and removed, and its record dropped, before the
    expert is trained (or resumed from its saved state) again.
    """
    manifest = read_manifest(directory)
    problem = _expert_problem(directory, manifest, expert, layout.shape)
    if problem is None:
        LOG.info("expert %d was finished by another process", expert + 1)
        return
    path = directory / _expert_name(expert)
    if path.exists():
        LOG.warning("expert file %s is %s; retraining it", path, problem)
        path.unlink()
    if str(expert) in manifest["experts"]:
        _update_manifest(directory, lambda fresh: fresh["experts"].pop(str(expert)))
    record, correct = _train_expert(expert, cfg, data, directory, layout)
    _finish_expert(directory, expert, record, correct)
    accuracy = record["val_acc"]
    LOG.info("expert %d/%d done: %s", expert + 1, cfg.experts.num_experts,
             "no validation split" if accuracy is None else f"validation accuracy {100 * accuracy:.2f} %")


def _finish_expert(directory: Path, expert: int, record: dict[str, Any], correct: np.ndarray) -> None:
    """Write the correctness record, record the finished partial file in the manifest, then rename it into place.

    The record goes first: a crash in between leaves a recorded but missing
    file, which the next run finishes again from the saved state.

    Args:
        correct: uint8 (E, N) correctness of the training forward passes, per epoch.
    """
    correct_path = directory / _expert_name(expert, ".correct.npy")
    with atomic_write(correct_path) as f:
        np.lib.format.write_array(f, correct, allow_pickle=False)
    partial = directory / _expert_name(expert, ".partial.npy")
    record.update(file=_expert_name(expert), bytes=partial.stat().st_size, sha256=sha256_file(partial),
                  correct={"file": correct_path.name, "sha256": sha256_file(correct_path),
                           "shape": list(correct.shape)})
    _update_manifest(directory, lambda fresh: fresh["experts"].update({str(expert): record}))
    fault_point("experts.recorded")
    os.replace(partial, directory / _expert_name(expert))
    (directory / _expert_name(expert, ".state.pt")).unlink(missing_ok=True)


def _train_expert(expert: int, cfg: RunConfig, data: _TrainingData, directory: Path,
                  layout: _Layout) -> tuple[dict[str, Any], np.ndarray]:
    """Train one expert from scratch or from its saved state.

    Returns its manifest record (without file fields) and its uint8 (E, N)
    correctness record.
    """
    seed = expert_seed(cfg.seed, expert)
    epochs = layout.epochs
    channels, size = data.images.shape[1], data.images.shape[2]
    with torch.random.fork_rng(devices=[]):  # the init depends on the expert seed only
        torch.manual_seed(seed)
        model = cfg.experts.model.build(channels=channels, num_classes=data.num_classes, image_size=size)
    model = model.to(data.device)
    flat = FlatModel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.experts.lr, momentum=cfg.experts.momentum,
                                weight_decay=cfg.experts.weight_decay)
    partial = directory / _expert_name(expert, ".partial.npy")
    state_path = directory / _expert_name(expert, ".state.pt")
    state = _resume_state(partial, state_path, layout)
    if state is None:
        _create_trajectory_file(partial, layout.shape)
        state = {"epoch": 0, "train_acc": [], "seconds": 0.0,
                 "correct": torch.zeros(0, layout.num_train, dtype=torch.uint8),
                 "row_sha256": [_write_row(partial, _data_offset(partial), 0, flat.flatten())]}
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        LOG.info("expert %d: resuming after epoch %d of %d", expert + 1, state["epoch"], epochs)
    offset = _data_offset(partial)
    train_acc: list[float] = list(state["train_acc"])
    row_sha256: list[str] = list(state["row_sha256"])
    correct: list[torch.Tensor] = list(state["correct"])  # per epoch, uint8 (N,)
    seconds = float(state["seconds"])
    step = state["epoch"] * layout.steps_per_epoch  # SGD steps done

    def on_step() -> None:  # after every SGD step: store a row at every snapshot
        nonlocal step
        step += 1
        if step % layout.snapshot_every == 0:
            row_sha256.append(_write_row(partial, offset, step // layout.snapshot_every, flat.flatten()))

    bar = progress(range(state["epoch"], epochs), desc=f"expert {expert + 1}/{cfg.experts.num_experts}",
                   total=epochs - state["epoch"])
    for epoch in bar:
        began = time.perf_counter()
        loss, acc, hits = _train_epoch(model, optimizer, data, cfg.experts.batch_size,
                                       _epoch_generators(seed, epoch, data.device), on_step=on_step)
        if not np.isfinite(loss):
            raise TrainingDiverged(
                f"expert {expert} diverged in epoch {epoch + 1} (loss {loss}); lower experts.lr (now {cfg.experts.lr})"
            )
        fault_point("experts.epoch")
        train_acc.append(acc)
        correct.append(hits.to("cpu", torch.uint8))
        seconds += time.perf_counter() - began
        save_torch({"epoch": epoch + 1, "row_sha256": row_sha256, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "train_acc": train_acc, "seconds": seconds,
                    "correct": torch.stack(correct)}, state_path)
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{100 * acc:.1f}%")
        LOG.debug("expert %d epoch %d/%d: loss %.4f train acc %.4f", expert + 1, epoch + 1, epochs, loss, acc)
    record = {
        "seed": seed,
        "val_acc": _accuracy(model, data.val_images, data.val_labels) if len(data.val_labels) else None,
        "train_acc": train_acc,
        "device": str(data.device),
        "seconds": round(seconds, 3),
    }
    return record, torch.stack(correct).numpy()


def _resume_state(partial: Path, state_path: Path, layout: _Layout) -> dict[str, Any] | None:
    """The saved state of a half-trained expert, or None (nothing usable: start over)."""
    if not state_path.is_file():
        partial.unlink(missing_ok=True)
        return None
    problem = trajectory_file_problem(partial, layout.shape)
    try:
        state = load_torch(state_path)
    except Exception as exc:  # a state file that torch cannot read is as good as none
        problem = problem or f"accompanied by an unreadable state file ({exc})"
        state = None
    if problem is None and not (isinstance(state, dict) and 1 <= state.get("epoch", -1) <= layout.epochs):
        problem = "accompanied by a state file without a valid epoch"
    if problem is None:
        correct = state.get("correct")
        if not (isinstance(correct, torch.Tensor) and correct.dtype == torch.uint8
                and tuple(correct.shape) == (state["epoch"], layout.num_train)):
            problem = "accompanied by a state file without a correctness record"  # e.g. written by an older version
    if problem is None:
        problem = _rows_problem(partial, state.get("row_sha256"), layout.rows_after(state["epoch"]), layout.num_params)
    if problem is not None:
        LOG.warning("partial expert file %s is %s; restarting this expert", partial, problem)
        partial.unlink(missing_ok=True)
        state_path.unlink(missing_ok=True)
        return None
    return state


def _rows_problem(partial: Path, digests: Any, rows: int, num_params: int) -> str | None:
    """The first ``rows`` rows of ``partial`` must match the sha256 digests saved with the state."""
    if not isinstance(digests, list) or len(digests) != rows:
        return "accompanied by a state file without row checksums"
    offset = _data_offset(partial)
    for row, digest in enumerate(digests):
        if hashlib.sha256(_read_row(partial, offset, row, num_params)).hexdigest() != digest:
            return f"inconsistent with its state file at row {row}"
    return None


def _epoch_generators(seed: int, epoch: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """(data order on the CPU, augmentation on ``device``) generators of one epoch, from (seed, epoch) only."""
    order_seed, augment_seed = np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint64)
    order = torch.Generator().manual_seed(int(order_seed))
    augment = torch.Generator(device=device).manual_seed(int(augment_seed))
    return order, augment


def _train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: _TrainingData, batch_size: int,
                 generators: tuple[torch.Generator, torch.Generator], *,
                 on_step: Callable[[], None] | None = None) -> tuple[float, float, torch.Tensor]:
    """One shuffled pass over the training split. One sync, at the end (plus what ``on_step`` does).

    DSA strategies are drawn from the CPU generator (drawing them on the
    device would read a GPU value per batch); per-sample parameters come from
    the device generator.

    Returns:
        (mean loss, accuracy, bool (N,) on the device): whether each training
        sample, in ``data.images`` order, was classified correctly by the
        (augmented, train-mode) forward pass that trained on it.
    """
    from .augment import augment_grouped, draw_strategy

    order, augment_generator = generators
    model.train()
    n = len(data.labels)
    perm = torch.randperm(n, generator=order).to(data.device)  # (N,)
    loss_sum = torch.zeros((), device=data.device)
    hits = torch.zeros(n, dtype=torch.bool, device=data.device)  # (N,)
    for start in range(0, n, batch_size):
        index = perm[start : start + batch_size]
        images, labels = data.images[index], data.labels[index]  # (B, C, H, W), (B,)
        strategy = draw_strategy(generator=order) if data.augment == "dsa" else None
        images = augment_grouped(images, len(index), data.augment, generator=augment_generator, strategy=strategy)
        logits = model(images)  # (B, num_classes)
        loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step()
        loss_sum += loss.detach() * len(index)
        hits[index] = logits.detach().argmax(1) == labels
    return float(loss_sum) / n, float(hits.sum()) / n, hits  # sync point: once per epoch


@torch.no_grad()
def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of ``model`` in eval mode (BatchNorm running statistics)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=labels.device)
    for start in range(0, len(labels), EVAL_BATCH):
        logits = model(images[start : start + EVAL_BATCH])
        correct += (logits.argmax(1) == labels[start : start + EVAL_BATCH]).sum()
    return float(correct) / max(1, len(labels))


__all__ = [
    "ExpertStore",
    "ZCAWhitening",
    "expert_cache_dir",
    "expert_epochs_for",
    "expert_manifest",
    "expert_seed",
    "load_experts",
    "read_manifest",
    "snapshot_steps",
    "steps_per_epoch",
    "train_experts",
    "trajectory_file_problem",
]
