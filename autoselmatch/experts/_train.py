"""Training experts: :func:`train_experts`, per-expert locks, crash-safe resume, the correctness record.

Rows go into ``expert_00i.partial.npy`` as training reaches each snapshot;
``expert_00i.state.pt`` holds what a resume needs; a finished expert is
recorded in the manifest and then renamed into place (see the package
docstring, :mod:`autoselmatch.experts`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from .._version import __version__
from ..config import RunConfig
from ..data import ImageDataset
from ..errors import DataError, InvalidArgument, TrainingDiverged
from ..fileio import atomic_write, file_lock, load_torch, save_json, save_torch, sha256_file, stable_hash
from ..models import FlatModel
from ..runtime import LOG, fault_point, progress, resolve_device
from ._key import EXPERT_SEED_STRIDE, ZCAWhitening, expert_cache_dir, expert_manifest, expert_seed, steps_per_epoch
from ._store import (
    FORMAT,
    ExpertStore,
    _create_trajectory_file,
    _data_offset,
    _expert_name,
    _num_params,
    _read_row,
    _write_row,
    read_manifest,
    trajectory_file_problem,
)

EVAL_BATCH = 1024
MANIFEST_LOCK = ".manifest.lock"


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
    flip: bool = True  # whether ``simple`` mirrors (data.flip)


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
                         cfg.experts.augment, device, ds.flip)


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
    from ..augment import augment_grouped, draw_strategy

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
        images = augment_grouped(images, len(index), data.augment, generator=augment_generator, strategy=strategy,
                                 flip=data.flip)
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
