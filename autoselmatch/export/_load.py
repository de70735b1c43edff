"""Loading an export folder: the manifest, its checksums, and :class:`DistilledSet`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import DataError
from ..fileio import load_torch, sha256_file
from ..synset import SyntheticSet, from_pixels
from ._set import MANIFEST, MANIFEST_FORMAT

SET_ARRAYS = ("pixels", "labels", "distill_mask", "images")  # what load_distilled reads from dataset.pt/.npz


class DistilledSet(torch.utils.data.Dataset):
    """An exported distilled set as a torch Dataset of ``(image, label)`` pairs.

    Images are float32 (C, H, W) in the dataset's normalised space (the exact
    distilled values when the export kept them, else the uint8 pixels
    normalised with the stored mean/std). With ``augment=True`` each sample
    goes through the augmentation its test score was measured with
    (:attr:`augmentation`): SelMatch's combined augmentation for a distilled
    set (DSA for D_distill images, random crop + flip for D_select images, crop
    only when the study or run that made the set had ``data.flip`` off, as the
    ``digits`` preset has), DSA for a selection that ``tune`` exported (random
    selection, the window: scored with ``tune.beta_augment``). Batched training
    loops can skip the per-sample path: take ``images``, ``labels`` and
    ``distill_mask`` and call :func:`autoselmatch.augment.get_augmentation`
    (``augmentation``) on each batch.

    Args:
        images: float32 (n, C, H, W), normalised.
        pixels: uint8 (n, C, H, W).
        labels: int64 (n,).
        distill_mask: bool (n,), True for D_distill rows.
        manifest: The export's manifest (dataset, IPC, alpha, beta, accuracies, settings).
        augment: Augment each sample in ``__getitem__``: ``True`` with :attr:`augmentation`, or the
            name of a registered augmentation (``combined``, ``dsa``, ``simple``, ``none``) to use instead.
        generator: Source of the augmentation's randomness (CPU generator;
            ``None``: torch's global RNG, which DataLoader workers seed one by one,
            whereas a generator would be copied into every worker unchanged).
    """

    def __init__(
        self,
        images: torch.Tensor,
        pixels: torch.Tensor,
        labels: torch.Tensor,
        distill_mask: torch.Tensor,
        manifest: dict[str, Any],
        *,
        augment: bool | str = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if isinstance(augment, str):
            from ..augment import AUGMENTATIONS

            AUGMENTATIONS.get(augment)  # an unknown name is a one-line error naming the known ones
        self.images = images
        self.pixels = pixels
        self.labels = labels
        self.distill_mask = distill_mask
        self.manifest = manifest
        self.augment = augment
        self.generator = generator

    @property
    def flip(self) -> bool:
        """Whether D_select images may be mirrored: ``data.flip`` of the study that made the set, else of
        the run that made it (a set exported from a file); True when neither says (sets made before
        ``data.flip``)."""
        for data in ((self.manifest.get("study_settings") or {}).get("data"),
                     ((self.manifest.get("settings") or {}).get("config") or {}).get("data")):
            if isinstance(data, dict) and "flip" in data:
                return bool(data["flip"])
        return True

    @property
    def augmentation(self) -> str:
        """The augmentation the set's networks train with: the one its recorded test score used (the
        manifest's ``evaluation.augment``: ``dsa`` for a selection ``tune`` exported, ``combined`` for a
        SelMatch set), else ``combined`` (exports without an evaluation record), or the name given as
        ``augment``."""
        if isinstance(self.augment, str):
            return self.augment
        evaluation = self.manifest.get("evaluation")
        recorded = evaluation.get("augment") if isinstance(evaluation, dict) else None
        return recorded if isinstance(recorded, str) else "combined"

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.manifest["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.manifest["std"])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]  # (C, H, W)
        if self.augment:
            from ..augment import get_augmentation

            augment = get_augmentation(self.augmentation)
            image = augment(image[None], self.distill_mask[index : index + 1], self.generator, flip=self.flip)[0]
        return image, self.labels[index]


def load_distilled(
    path: str | os.PathLike,
    *,
    augment: bool | str = False,
    generator: torch.Generator | None = None,
) -> DistilledSet:
    """Load an export written by :func:`export_set` after checking every file's sha256.

    Reads ``dataset.pt`` (``weights_only``) or, without it, ``dataset.npz``
    (no pickles). A file that is missing or whose checksum differs from the
    manifest is refused with :class:`~autoselmatch.errors.DataError`.

    Args:
        path: The export folder (a file inside it, e.g. its ``dataset.npz``, stands for the folder).
        augment: Augment each sample: ``True`` with the augmentation the set's test score used
            (:attr:`DistilledSet.augmentation`), or a registered augmentation's name.
        generator: Randomness of the augmentation.
    """
    root = Path(path).expanduser()
    if root.is_file():
        if not (root.parent / MANIFEST).is_file():
            raise DataError(f"{root} is a file; load_distilled takes an export folder (the one holding {MANIFEST})")
        root = root.parent
    manifest = read_manifest(root)
    verify_export(root, manifest)
    files = manifest["files"]
    if "dataset.pt" in files:
        data = load_torch(root / "dataset.pt")
        tensors = {k: data[k] for k in SET_ARRAYS if k in data}
    elif "dataset.npz" in files:
        try:
            with np.load(root / "dataset.npz", allow_pickle=False) as npz:
                tensors = {k: torch.from_numpy(npz[k].copy()) for k in SET_ARRAYS if k in npz}
        except ValueError as exc:  # e.g. an object array, which would need unpickling
            raise DataError(f"cannot read {root / 'dataset.npz'}: {exc}") from None
    else:
        raise DataError(f"{root} holds neither dataset.pt nor dataset.npz; "
                        "export it with --format pt or npz to load it")
    pixels = tensors["pixels"]
    images = tensors["images"] if "images" in tensors else from_pixels(pixels, manifest["mean"], manifest["std"])
    return DistilledSet(images, pixels, tensors["labels"], tensors["distill_mask"], manifest,
                        augment=augment, generator=generator)


def load_set(path: str | os.PathLike) -> SyntheticSet:
    """A set from any file autoselmatch writes, as a :class:`~autoselmatch.synset.SyntheticSet`.

    ``path`` is a set file (``result.pt``, an export's ``dataset.pt``), an export
    folder or a file inside one (read through :func:`load_distilled`, which checks
    the checksums), or a ``.npz`` holding ``images`` or uint8 ``pixels`` and
    ``labels`` (``distill_mask``, ``dataset``, ``classes``, ``mean``, ``std`` optional).
    """
    path = Path(path).expanduser()
    if path.is_dir() or (path.suffix == ".npz" and (path.parent / MANIFEST).is_file()):
        exported = load_distilled(path)
        m = exported.manifest
        return SyntheticSet(images=exported.images, labels=exported.labels.long(),
                            distill_mask=exported.distill_mask.bool(), dataset=m.get("dataset"),
                            classes=tuple(m.get("classes") or ()), mean=tuple(m.get("mean") or ()),
                            std=tuple(m.get("std") or ()),
                            settings=m["settings"] if isinstance(m.get("settings"), dict) else {})  # its base method
    if path.suffix == ".npz":
        return _npz_set(path)
    return SyntheticSet.load(path)


def _npz_set(path: Path) -> SyntheticSet:
    """A set from a NumPy archive (no pickles): arrays become tensors, text arrays strings or lists."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read set file {path}: {str(exc).splitlines()[0]}") from None
    blob: dict[str, Any] = {}
    for key, array in arrays.items():
        if array.dtype.kind == "U":  # dataset: a 0-d string; classes: a 1-d array of strings
            blob[key] = str(array) if array.ndim == 0 else [str(v) for v in array]
        elif key in ("mean", "std"):
            blob[key] = array.tolist()
        else:
            blob[key] = torch.from_numpy(array.copy())
    return SyntheticSet.from_dict(blob, source=f"set file {path}")


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of an export folder, checked for its format and file list."""
    path = root / MANIFEST
    if not path.is_file():
        raise DataError(f"{root} is not an autoselmatch export: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{path} is not a manifest of format {MANIFEST_FORMAT}")
    if not isinstance(manifest.get("files"), dict):
        raise DataError(f"{path} has no 'files' table of checksums")
    return manifest


def verify_export(root: Path, manifest: Mapping[str, Any]) -> None:
    """Check that every file the manifest lists is inside ``root``, present, and has its sha256."""
    base = root.resolve()
    for name, digest in manifest["files"].items():
        file = (root / name).resolve()
        if not file.is_relative_to(base) or file == base:
            raise DataError(f"manifest of {root} lists {name!r}, which is outside the export folder")
        if not file.is_file():
            raise DataError(f"{root / name} is missing; the export is incomplete, export it again")
        if sha256_file(file) != digest:
            raise DataError(f"checksum mismatch for {root / name}: the file changed after export; export it again")
