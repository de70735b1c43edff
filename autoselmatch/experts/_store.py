"""Reading finished trajectories lazily: :class:`ExpertStore`, the manifest, and ``.npy`` file helpers.

The helpers check a trajectory file's header, shape and size, read one row
without loading the rest, and create and write the files training fills in
(:mod:`autoselmatch.experts._train`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import RunConfig
from ..data import ImageDataset
from ..errors import DataError, InvalidArgument
from ..fileio import atomic_write, load_torch, sha256_file
from ._key import ZCAWhitening, expert_cache_dir, expert_manifest

FORMAT = "autoselmatch-experts"
DTYPE = np.dtype("<f4")


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

    def sample_index(self, generator: torch.Generator, *, max_start_epoch: int, expert_epochs: int,
                     min_start_epoch: int = 0) -> tuple[int, int]:
        """A uniformly drawn (expert, start epoch in [min_start_epoch, max_start_epoch))."""
        if not 0 <= min_start_epoch < max_start_epoch:
            raise InvalidArgument(f"start epochs must satisfy 0 <= min_start_epoch < max_start_epoch, "
                                  f"got {min_start_epoch} and {max_start_epoch}")
        if expert_epochs < 1:
            raise InvalidArgument(f"expert_epochs must be >= 1, got {expert_epochs}")
        if max_start_epoch + expert_epochs > self.num_epochs:
            raise InvalidArgument(
                f"max_start_epoch + expert_epochs = {max_start_epoch + expert_epochs} exceeds the "
                f"{self.num_epochs} epochs stored in {self.directory}; train experts with more epochs"
            )
        device = generator.device  # a CUDA generator works too, at one sync per draw
        expert = int(torch.randint(self.num_experts, (1,), generator=generator, device=device))
        start = int(torch.randint(min_start_epoch, max_start_epoch, (1,), generator=generator, device=device))
        return expert, start

    def sample(self, generator: torch.Generator, *, max_start_epoch: int, expert_epochs: int,
               min_start_epoch: int = 0, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, target) float32 (P,) for a random expert and start epoch (see :meth:`sample_index`)."""
        expert, start = self.sample_index(generator, max_start_epoch=max_start_epoch, expert_epochs=expert_epochs,
                                          min_start_epoch=min_start_epoch)
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
        if record is None and "imported" in self.manifest["experts"][str(expert)]:
            raise DataError(f"expert {expert} in {self.directory} was imported from reference buffers, which hold "
                            "no correctness record; train experts (another --cache-dir) for these scores")
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
