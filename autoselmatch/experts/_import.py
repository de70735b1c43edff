"""Expert buffers of the reference implementations: import MTT's ``replay_buffer_<n>.pt`` files, and write them.

MTT's ``buffer.py`` (and SelMatch, FTD and DATM after it) saves experts to a
folder named after the dataset and the model, e.g.
``buffers/CIFAR100/ConvNetBN`` (``buffers/CIFAR100_NO_ZCA/ConvNetBN`` without
ZCA)::

    replay_buffer_0.pt   torch.save of a list of experts (10 by default);
    replay_buffer_1.pt   an expert is a list of E + 1 epochs (entry 0: the
    ...                  initialisation, entry e: after e epochs); an epoch is
                         the list of the network's parameter tensors in
                         ``model.parameters()`` order (BatchNorm running
                         statistics are not stored)

The distillation code flattens an epoch as ``torch.cat([p.reshape(-1) for p
in epoch])`` (MTT's ``ReparamModule`` keeps the same order), which is
:class:`autoselmatch.models.FlatModel`'s order for the same network: the
import checks every tensor's shape against the model's named parameters, in
order, and concatenates.

:func:`import_mtt_experts` converts a buffer folder into the cache folder that
:func:`autoselmatch.experts.load_experts` opens for the same settings, so
``distill`` and ``tune`` use the experts without training any. Files are
loaded one at a time (``torch.load(..., weights_only=True, mmap=True)``: only
tensors and lists, and the tensors are read from the file as each expert is
written) and each expert goes through ``expert_00i.partial.npy`` and the
manifest exactly as a trained one does. The manifest's ``imported`` entry
records the source folder and each source file's size, sha256 and experts;
a rerun skips the files already imported (resume), and a source file that
changed since is an error.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re
import sys
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..config import RunConfig
from ..data import ImageDataset
from ..errors import DataError, InvalidArgument
from ..fileio import atomic_write, file_lock, load_torch, sha256_file
from ..runtime import LOG, fault_point, progress
from ._key import expert_cache_dir, expert_manifest, steps_per_epoch
from ._store import ExpertStore, _create_trajectory_file, _data_offset, _expert_name, _write_row, read_manifest
from ._train import _ensure_writable, _fitted_zca, _Layout, _open_manifest, _update_manifest

MTT_FORMAT = "mtt-replay-buffer"
BUFFER_NAME = re.compile(r"replay_buffer_(\d+)\.pt")
IMPORT_LOCK = ".import.lock"

# MTT's model names (utils.get_network) -> the norm of their ConvNet: plain ConvNet is instance norm.
_MTT_NORMS = {"BN": "batch", "IN": "instance", "NN": "none", "LN": "layer", "GN": "group"}


def mtt_buffer_files(directory: str | os.PathLike) -> list[Path]:
    """The ``replay_buffer_<n>.pt`` files of ``directory``, by ``n``; an error if there are none or one is missing."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise InvalidArgument(f"--from-mtt {directory} is not a folder; give the folder holding replay_buffer_<n>.pt")
    found = {int(m.group(1)): p for p in directory.iterdir() if (m := BUFFER_NAME.fullmatch(p.name))}
    if not found:
        raise InvalidArgument(f"--from-mtt {directory} holds no replay_buffer_<n>.pt files (MTT's buffer.py layout)")
    numbers = sorted(found)
    gaps = sorted(set(range(numbers[-1] + 1)) - set(numbers))
    if gaps:
        present = ", ".join(found[n].name for n in numbers)
        raise DataError(f"{directory} lacks replay_buffer_{gaps[0]}.pt (it has {present}); "
                        "copy the missing file, or move the later ones away")
    return [found[n] for n in numbers]


def mtt_model_norm(directory: str | os.PathLike) -> str | None:
    """The ConvNet norm that MTT's folder name implies (``.../ConvNetBN`` -> ``batch``), None when it says nothing.

    MTT names the folder after ``--model``: ``ConvNet`` and ``ConvNetD4`` are
    instance norm, ``ConvNetBN``/``ConvNetD4BN`` batch norm, ``...NN`` none.
    The shapes cannot tell batch from instance norm (both store a weight and a
    bias per channel), so the name is all there is.
    """
    name = Path(directory).expanduser().resolve().name
    found = re.fullmatch(r"ConvNet(?:D\d+|W\d+)?(BN|IN|NN|LN|GN)?", name)
    if found is None:
        return None
    return _MTT_NORMS[found.group(1)] if found.group(1) else "instance"


def import_mtt_experts(directory: str | os.PathLike, ds: ImageDataset, cfg: RunConfig, *,
                       num_experts: int | None = None, norm: str | None = None) -> ExpertStore:
    """Convert MTT replay buffers into the cached experts of ``cfg`` on ``ds``; resumes an interrupted import.

    Args:
        directory: The folder holding ``replay_buffer_<n>.pt`` (MTT's ``buffers/<dataset>/<model>``).
        ds: The dataset the experts were trained on (its key, shapes and classes).
        cfg: The settings the experts are filed under: ``experts`` (model, the optimizer and
            augmentation they were trained with, ``zca``), ``seed``, ``cache_dir``; the
            epoch count is ``expert_epochs_for(cfg)`` and the first that many epochs of each
            expert are imported.
        num_experts: Import the first this many experts (default: every expert of every file).
        norm: The norm the experts' ConvNet used (``batch``, ``instance``, ``none``); default
            what the folder name says (:func:`mtt_model_norm`). A norm other than
            ``experts.model``'s is an error.

    Returns:
        The store of the imported experts (the folder ``load_experts(ds, cfg)`` opens).

    Raises:
        InvalidArgument: No buffer files, a model that does not fit the buffers, too few epochs.
        DataError: A truncated, corrupt or non-tensor buffer file (nothing from it is executed),
            a source file that changed since an earlier import into the same folder, or a cache
            folder that holds natively trained experts.
    """
    source = Path(directory).expanduser().resolve()
    files = mtt_buffer_files(source)
    key = expert_manifest(ds, cfg)
    if "snapshot_every" in key:
        raise InvalidArgument("MTT buffers hold one row per epoch; unset experts.snapshot_every to import them")
    _check_norm(source, cfg, norm)
    _check_zca(source, cfg)
    channels, size, _ = ds.image_shape
    model = cfg.experts.model.build(channels=channels, num_classes=ds.num_classes, image_size=size)
    names = [n for n, _ in model.named_parameters()]
    shapes = [tuple(p.shape) for p in model.parameters()]
    num_params = sum(p.numel() for p in model.parameters())
    epochs = key["epochs"]
    num_train = key["dataset"]["num_train"]
    steps = steps_per_epoch(num_train, cfg.experts.batch_size)
    layout = _Layout(epochs, steps, steps, num_params, num_train)  # one row per epoch, as a trained expert's
    cache = expert_cache_dir(cfg, key)
    _ensure_writable(cache)
    with file_lock(cache / IMPORT_LOCK, blocking=False) as held:
        if not held:
            raise DataError(f"another process is importing experts into {cache}; wait for it to finish")
        manifest = _open_manifest(cache, key, layout)
        imported = _check_provenance(cache, manifest, source)
        done = 0  # experts imported so far (index of the next one)
        for path in progress(files, desc="import experts"):
            if num_experts is not None and done >= num_experts:
                break
            record = imported["files"].get(path.name)
            digest = sha256_file(path)
            if record is not None and record["sha256"] != digest:
                raise DataError(f"{path} changed since it was imported into {cache} (sha256 differs); "
                                "delete that folder to import again")
            if record is not None and _all_finished(cache, manifest, record, num_experts):
                done = record["experts"][1]
                continue
            done = _import_file(path, digest, done, num_experts, cache, names, shapes, epochs)
            manifest = read_manifest(cache)
        if cfg.experts.zca:
            _fitted_zca(ds, cfg.experts.zca_eps, cache)
    if done == 0:
        raise DataError(f"no experts imported from {source}")
    LOG.info("imported %d experts from %s into %s", done, source, cache)
    return ExpertStore(cache, num_experts=done if num_experts is None else min(done, num_experts),
                       num_params=num_params)


def write_mtt_buffer(store: ExpertStore, directory: str | os.PathLike, shapes: Sequence[Sequence[int]], *,
                     experts_per_file: int = 10) -> list[Path]:
    """Write ``store``'s experts in MTT's buffer layout (what reference code reads); returns the files.

    Args:
        store: The experts.
        directory: The folder to write ``replay_buffer_<n>.pt`` into.
        shapes: The model's parameter shapes, in ``model.parameters()`` order (they split each row).
        experts_per_file: Experts per file (MTT's ``--save_interval``, 10).
    """
    directory = Path(directory)
    numels = [int(np.prod(s)) for s in shapes]
    if sum(numels) != store.num_params:
        raise InvalidArgument(f"the shapes hold {sum(numels)} parameters, the experts {store.num_params}")
    written = []
    for n, first in enumerate(range(0, store.num_experts, experts_per_file)):
        experts = []
        for i in range(first, min(first + experts_per_file, store.num_experts)):
            rows = torch.from_numpy(np.array(store.trajectory(i)))  # (E + 1, P)
            experts.append([[t.reshape(s).clone() for t, s in zip(torch.split(row, numels), shapes)] for row in rows])
        path = directory / f"replay_buffer_{n}.pt"
        with atomic_write(path) as f:
            torch.save(experts, f)
        written.append(path)
    return written


def flatten_epoch(epoch: Any, names: Sequence[str], shapes: Sequence[tuple[int, ...]], where: str) -> torch.Tensor:
    """One epoch of an MTT expert (a list of parameter tensors) as a float32 (P,) vector in FlatModel order.

    Args:
        epoch: The list of tensors, in the reference network's ``parameters()`` order.
        names, shapes: The named parameters of the model the experts are filed under, in order.
        where: The file and position, for errors.
    """
    if not isinstance(epoch, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in epoch):
        raise DataError(f"{where} is not a list of parameter tensors (MTT's layout), got {_describe(epoch)}")
    if len(epoch) != len(shapes):
        raise InvalidArgument(f"{where} holds {len(epoch)} parameter tensors, the model has {len(shapes)} "
                              f"({_model_hint(shapes)}); set experts.model to the network the buffers were trained with")
    for name, tensor, shape in zip(names, epoch, shapes):
        if tuple(tensor.shape) != shape:
            raise InvalidArgument(f"{where}: parameter {name} has shape {tuple(tensor.shape)} in the buffer, "
                                  f"{shape} in the model ({_model_hint(shapes)}); set experts.model's width/depth "
                                  "to the network the buffers were trained with")
    if not all(t.is_floating_point() for t in epoch):
        raise DataError(f"{where} holds non-float parameter tensors")
    return torch.cat([t.detach().reshape(-1).to(torch.float32) for t in epoch])


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _import_file(path: Path, digest: str, first: int, limit: int | None, cache: Path, names: Sequence[str],
                 shapes: Sequence[tuple[int, ...]], epochs: int) -> int:
    """Convert the experts of one buffer file (from expert index ``first``); returns the next index."""
    experts = load_torch(path, what="expert buffer", mmap=True,
                         remedy="copy it again from where the experts were trained")
    mapped = zipfile.is_zipfile(path)  # load_torch maps torch's zip format; a legacy file was read whole
    if not isinstance(experts, list) or not experts:
        raise DataError(f"expert buffer {path} holds {_describe(experts)}, expected a list of experts (MTT's layout)")
    stop = first + len(experts)
    manifest = read_manifest(cache)
    for j, expert in enumerate(experts):
        index = first + j
        if limit is not None and index >= limit:
            break
        where = f"expert buffer {path} [{j}]"
        if not isinstance(expert, (list, tuple)):
            raise DataError(f"{where} is {_describe(expert)}, expected a list of epochs (MTT's layout)")
        if len(expert) < epochs + 1:
            raise InvalidArgument(f"{where} holds {len(expert) - 1} epochs, the settings need {epochs}; "
                                  f"pass --epochs {len(expert) - 1} or fewer (and the same to distill)")
        if str(index) not in manifest["experts"] or not (cache / _expert_name(index)).is_file():
            _write_expert(cache, index, [expert[e] for e in range(epochs + 1)], names, shapes, where,
                          {"source_file": path.name, "source_index": j, "source_epochs": len(expert) - 1})
        if mapped:
            _release(expert)  # its pages leave this process's memory before the next expert is read
        experts[j] = None
    _update_manifest(cache, lambda fresh: fresh["imported"]["files"].update(
        {path.name: {"bytes": path.stat().st_size, "sha256": digest, "experts": [first, stop]}}))
    return stop if limit is None else min(stop, limit)


def _write_expert(cache: Path, index: int, epochs: Sequence[Any], names: Sequence[str],
                  shapes: Sequence[tuple[int, ...]], where: str, origin: dict[str, Any]) -> None:
    """Rows of one expert into its partial file, recorded in the manifest, then renamed into place."""
    partial = cache / _expert_name(index, ".partial.npy")
    num_params = sum(int(np.prod(s)) for s in shapes)
    _create_trajectory_file(partial, (len(epochs), num_params))
    offset = _data_offset(partial)
    for e, epoch in enumerate(epochs):
        row = flatten_epoch(epoch, names, shapes, f"{where} epoch {e}")
        if not bool(torch.isfinite(row).all()):
            partial.unlink()
            raise DataError(f"{where} epoch {e} holds NaN or infinite parameters")
        _write_row(partial, offset, e, row)
        fault_point("experts.import_row")
    record = {"seed": None, "val_acc": None, "train_acc": [], "imported": origin, "file": _expert_name(index),
              "bytes": partial.stat().st_size, "sha256": sha256_file(partial)}
    _update_manifest(cache, lambda fresh: fresh["experts"].update({str(index): record}))
    os.replace(partial, cache / _expert_name(index))


def _release(expert: Any) -> None:
    """Drop the resident pages of an expert's memory-mapped tensors (``madvise(MADV_DONTNEED)``, Linux).

    ``torch.load(mmap=True)`` maps the whole file once; pages read stay
    resident until the mapping goes, so without this a file's import would
    hold the whole file. The pages are clean copies of the file (only ever
    read), so dropping them loses nothing. Elsewhere, or for tensors not
    mapped from a file, nothing happens.
    """
    if _MADVISE is None:
        return
    page = mmap.PAGESIZE
    for epoch in expert if isinstance(expert, (list, tuple)) else ():
        for tensor in epoch if isinstance(epoch, (list, tuple)) else ():
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            start, end = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
            first, last = -(-start // page) * page, end // page * page  # whole pages inside the storage only
            if last > first:
                _MADVISE(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)


def _libc_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None


_MADV_DONTNEED = 4
_MADVISE = _libc_madvise()


def _check_provenance(cache: Path, manifest: dict[str, Any], source: Path) -> dict[str, Any]:
    """The manifest's ``imported`` entry for ``source`` (created when new); refuses a folder of other experts."""
    imported = manifest.get("imported")
    if imported is None:
        native = [k for k, r in manifest["experts"].items() if "imported" not in r]
        if native:
            raise DataError(f"{cache} already holds {len(native)} trained experts with these settings; "
                            "pass another --cache-dir to import beside them")
        imported = {"format": MTT_FORMAT, "source": str(source), "files": {}}
        _update_manifest(cache, lambda fresh: fresh.update(imported=imported))
    elif imported["source"] != str(source):
        raise DataError(f"{cache} holds experts imported from {imported['source']}, not {source}; "
                        "pass another --cache-dir")
    return imported


def _all_finished(cache: Path, manifest: dict[str, Any], record: dict[str, Any], limit: int | None) -> bool:
    first, stop = record["experts"]
    stop = stop if limit is None else min(stop, limit)
    return all(str(i) in manifest["experts"] and (cache / _expert_name(i)).is_file() for i in range(first, stop))


def _check_norm(source: Path, cfg: RunConfig, norm: str | None) -> None:
    """Refuse experts whose norm differs from ``experts.model``'s (shapes alone cannot tell batch from instance)."""
    spec = cfg.experts.model
    if not spec.name.startswith("convnet"):
        return
    ours = spec.options.get("norm", "batch")
    theirs = norm if norm is not None else mtt_model_norm(source)
    if theirs is None:
        LOG.warning("cannot tell the experts' norm from the folder name %s; assuming experts.model's (%s)",
                    source.name, ours)
    elif theirs != ours:
        remedy = (f'or set experts.model to {{ name = "{spec.name}", ..., norm = "{theirs}" }}'
                  if theirs in ("batch", "instance", "none") else f"autoselmatch's ConvNet has no {theirs} norm")
        mtt_name = {"batch": "ConvNetBN", "instance": "ConvNet", "none": "ConvNetNN"}.get(ours, "matching")
        raise InvalidArgument(f"the experts in {source} use {theirs} norm but experts.model uses norm={ours}: "
                              f"{theirs}-norm experts do not fit a {ours}-norm student; import {mtt_name} buffers "
                              f"(or pass --norm if the folder name misleads), {remedy}")


def _check_zca(source: Path, cfg: RunConfig) -> None:
    """Warn when MTT's folder name (``CIFAR100_NO_ZCA/...``: no ZCA; ``CIFAR100/...``: ZCA) contradicts experts.zca."""
    parent = source.parent.name
    theirs = False if parent.endswith("_NO_ZCA") else True if parent in ("CIFAR10", "CIFAR100") else None
    if theirs is not None and theirs != cfg.experts.zca:
        LOG.warning("the folder %s suggests experts trained %s ZCA, but experts.zca is %s", source,
                    "with" if theirs else "without", cfg.experts.zca)


def _model_hint(shapes: Sequence[tuple[int, ...]]) -> str:
    return f"first {shapes[0]}, last {shapes[-1]}" if shapes else "no parameters"


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    return f"a {type(value).__name__}"
