"""Take results away: exported distilled sets, a verified loader, study copies and trial artifacts.

An exported set is a folder that any framework can read without autoselmatch
or the original dataset::

    DIR/manifest.json        dataset, IPC, alpha, beta, scores, settings, versions, sha256 of every file
    DIR/dataset.pt           dict of tensors/strings/numbers (``torch.load(..., weights_only=True)``)
    DIR/dataset.npz          the same arrays for NumPy (no pickles)
    DIR/png/<class>/<i>.png  an ImageFolder tree of the uint8 pixels
    DIR/grid.png             first 10 classes x k images, D_select and D_distill framed in two colours

Everything is written to a temporary sibling folder and renamed into place at
the end, so a crash never leaves a half-written export.
:func:`load_distilled` checks every checksum before it returns a dataset::

    train = autoselmatch.load_distilled("exports/cifar100-ipc50", augment=True)
    loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True)

:func:`export_study` copies Optuna studies from any storage (SQLite, journal
file, PostgreSQL) into one SQLite file plus the artifact files they
reference; :func:`upload_trial_artifacts` is what ``tune`` calls so that the
dashboard shows each trial's image grid, curves and distilled set.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from ._version import __version__
from .errors import DataError, InvalidArgument
from .fileio import load_torch, sha256_file
from .runtime import LOG
from .storage import artifact_dir_of, close_storage, open_existing_storage

if TYPE_CHECKING:
    import optuna
    from optuna.artifacts import ArtifactMeta
    from optuna.artifacts._protocol import ArtifactStore
    from PIL import Image

FORMATS = ("pt", "npz", "png")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "autoselmatch-distilled-set/1"
GRID_FILE = "grid.png"
SET_ARRAYS = ("pixels", "labels", "distill_mask", "images")  # what load_distilled reads from dataset.pt/.npz
RESULT_PATH_ATTR = "result_path"  # trial user attr holding the path of the trial's distilled set
# alpha-study user attr that tune writes with the final set: {result_path, trial, alpha, beta, test_accuracy, ...}
FINAL_ATTR = "final"
SELECT_COLOUR = (31, 119, 180)  # blue frame: D_select, frozen real images
DISTILL_COLOUR = (255, 127, 14)  # orange frame: D_distill, optimised pixels
# Characters a class name may not contain when it becomes a folder name (path separators, NUL).
UNSAFE_NAME_CHARS = ("/", "\\", "\0")


# --------------------------------------------------------------------------------------------
# Distilled-set results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedResult:
    """A distilled set in memory, whatever file or dict it came from.

    Attributes:
        pixels: uint8 (n, C, H, W), the images as 8-bit pixels.
        images: float32 (n, C, H, W) in normalised space, exactly as distilled
            (``None`` when the source held only pixels).
        labels: int64 (n,).
        distill_mask: bool (n,), True for D_distill rows (optimised pixels),
            False for D_select rows (frozen real images).
        dataset: Dataset name.
        classes: Class names; label ``k`` is ``classes[k]``.
        mean, std: Per-channel normalisation constants in [0, 1] pixel units.
        eta: The learned student learning rate (``None`` if unknown).
        settings: Every setting that produced the set (plain JSON-able dict).
        curves: Distillation curves (loss, eta, quick accuracies), if recorded.
    """

    pixels: torch.Tensor
    images: torch.Tensor | None
    labels: torch.Tensor
    distill_mask: torch.Tensor
    dataset: str
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eta: float | None
    settings: dict[str, Any]
    curves: dict[str, Any]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def ipc(self) -> int:
        """Images per class (the largest class count when classes differ)."""
        return int(torch.bincount(self.labels, minlength=len(self.classes)).max())


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (n, C, H, W) -> float32 (n, C, H, W), ``(x / 255 - mean) / std``."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (pixels.float() / 255.0 - m) / s


def to_pixels(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """float (n, C, H, W) in normalised space -> uint8 pixels, rounded and clipped to [0, 255]."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((images.detach().float().cpu() * s + m) * 255.0).round().clamp(0, 255).to(torch.uint8)


def load_result(result: str | os.PathLike | Mapping[str, Any]) -> LoadedResult:
    """Read a distillation result (a ``.pt`` written by ``distill``/``tune``, or its dict).

    The dict (:meth:`autoselmatch.distill.DistillResult.to_dict`) holds
    ``images`` (float32 (n, C, H, W), normalised) and/or ``uint8`` pixels
    (also accepted as ``pixels``), ``labels``, ``distill_mask``, ``dataset``,
    ``eta``, ``settings`` (dict or JSON string) and optionally ``curves`` or
    ``loss_history``/``evals``; ``classes``, ``mean`` and ``std`` are read from
    the dataset (``autoselmatch.data.load_dataset``) when absent.

    Args:
        result: Path of a result file, the result dict, or an object with ``to_dict()`` returning it.
    """
    if hasattr(result, "to_dict"):
        raw = result.to_dict()
    elif isinstance(result, Mapping):
        raw = dict(result)
    else:
        path = Path(result).expanduser()
        if not path.is_file():
            raise DataError(f"result file {path} does not exist")
        raw = load_torch(path, what="result file")
        if not isinstance(raw, dict):
            raise DataError(f"result file {path} must hold a dict, got {type(raw).__name__}")
    for key in ("labels", "distill_mask", "dataset"):
        if key not in raw:
            raise DataError(f"result has no {key!r}; keys are: {', '.join(sorted(map(str, raw)))}")
    if "pixels" not in raw and "uint8" in raw:
        raw["pixels"] = raw["uint8"]
    if "images" not in raw and "pixels" not in raw:
        raise DataError(f"result has neither 'images' nor 'uint8' pixels; keys are: {', '.join(sorted(map(str, raw)))}")
    dataset = str(raw["dataset"])
    classes, mean, std = raw.get("classes"), raw.get("mean"), raw.get("std")
    if classes is None or mean is None or std is None:
        classes, mean, std = _dataset_constants(dataset, classes, mean, std)
    images = raw.get("images")
    images = None if images is None else torch.as_tensor(images).detach().float().cpu()
    pixels = raw.get("pixels")
    pixels = to_pixels(images, mean, std) if pixels is None else torch.as_tensor(pixels).cpu()
    out = LoadedResult(
        pixels=pixels,
        images=images,
        labels=torch.as_tensor(raw["labels"]).cpu(),
        distill_mask=torch.as_tensor(raw["distill_mask"]).cpu(),
        dataset=dataset,
        classes=tuple(str(c) for c in classes),
        mean=tuple(float(m) for m in _as_list(mean)),
        std=tuple(float(s) for s in _as_list(std)),
        eta=None if raw.get("eta") is None else float(raw["eta"]),
        settings=_as_dict(raw.get("settings"), "settings"),
        curves=_as_dict(raw.get("curves"), "curves") or _curves_from_history(raw),
    )
    _check_result(out)
    return out


def _curves_from_history(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Curves of a distillation result: ``loss`` per iteration and ``evals`` as (iteration, accuracy) pairs."""
    curves: dict[str, Any] = {}
    if raw.get("loss_history") is not None and len(raw["loss_history"]):
        curves["loss"] = [float(v) for v in _as_list(raw["loss_history"])]
    if raw.get("evals") is not None and len(raw["evals"]):
        curves["evals"] = [[int(i), float(a)] for i, a in _as_list(raw["evals"])]
    return curves


def _as_list(value: Any) -> list:
    return value.tolist() if isinstance(value, (torch.Tensor, np.ndarray)) else list(value)


def _as_dict(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(f"result {name} is not valid JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise DataError(f"result {name} must be a dict or a JSON object, got {type(value).__name__}")
    return json.loads(json.dumps(dict(value), default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


def _dataset_constants(name: str, classes: Any, mean: Any, std: Any) -> tuple[Any, Any, Any]:
    """Fill missing class names and normalisation constants from the dataset itself."""
    from .data import load_dataset

    LOG.info("reading class names and mean/std of %s (not stored in the result)", name)
    ds = load_dataset(name, val_fraction=0.0)
    return (ds.classes if classes is None else classes, ds.mean if mean is None else mean,
            ds.std if std is None else std)


def _check_result(r: LoadedResult) -> None:
    n = len(r.labels)
    if r.pixels.dtype != torch.uint8 or r.pixels.dim() != 4:
        raise DataError(f"result pixels must be uint8 (n, C, H, W), got {r.pixels.dtype} {tuple(r.pixels.shape)}")
    if len(r.pixels) != n:
        raise DataError(f"result has {len(r.pixels)} images but {n} labels")
    if r.images is not None and r.images.shape != r.pixels.shape:
        raise DataError(f"result images {tuple(r.images.shape)} and pixels {tuple(r.pixels.shape)} differ in shape")
    if r.labels.dtype != torch.int64 or r.labels.dim() != 1:
        raise DataError(f"result labels must be int64 (n,), got {r.labels.dtype} {tuple(r.labels.shape)}")
    if r.distill_mask.dtype != torch.bool or tuple(r.distill_mask.shape) != (n,):
        raise DataError(f"result distill_mask must be bool ({n},), "
                        f"got {r.distill_mask.dtype} {tuple(r.distill_mask.shape)}")
    if n and (int(r.labels.min()) < 0 or int(r.labels.max()) >= len(r.classes)):
        raise DataError(f"result labels must be in [0, {len(r.classes) - 1}] ({len(r.classes)} classes)")
    channels = r.pixels.shape[1]
    if len(r.mean) != channels or len(r.std) != channels:
        raise DataError(f"result mean/std have {len(r.mean)}/{len(r.std)} entries for {channels} channels")


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def export_set(
    result: str | os.PathLike | Mapping[str, Any] | LoadedResult,
    out_dir: str | os.PathLike,
    *,
    formats: Iterable[str] = FORMATS,
    overwrite: bool = False,
    meta: Mapping[str, Any] | None = None,
    grid_per_class: int = 10,
) -> dict[str, Any]:
    """Write a distilled set as ``dataset.pt``/``dataset.npz``/a PNG tree, ``grid.png`` and ``manifest.json``.

    Args:
        result: A result file, its dict (see :func:`load_result`) or a :class:`LoadedResult`.
        out_dir: The export folder; it must not exist or be empty unless ``overwrite``.
        formats: Any of ``pt``, ``npz``, ``png`` (at least one).
        overwrite: Replace an existing, non-empty ``out_dir``.
        meta: Manifest entries to add or override: ``study``, ``trial``,
            ``alpha``, ``beta`` (default: the result's settings), ``score``,
            ``val_accuracy``, ``test_accuracy``, ``study_settings``, ...
        grid_per_class: Images per class in ``grid.png``.

    Returns:
        The manifest that was written.
    """
    formats = _check_formats(formats)
    if grid_per_class < 1:
        raise InvalidArgument(f"grid_per_class must be >= 1, got {grid_per_class}")
    out = Path(out_dir).expanduser()
    _check_out_dir(out, overwrite)
    r = result if isinstance(result, LoadedResult) else load_result(result)
    folders = class_folders(r.classes) if "png" in formats else []

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling_dir(out, "tmp")
    try:
        if "pt" in formats:
            torch.save(_pt_payload(r), tmp / "dataset.pt")
        if "npz" in formats:
            np.savez(tmp / "dataset.npz", **_npz_payload(r))
        if "png" in formats:
            _write_png_tree(tmp / "png", r, folders)
        image_grid(r.pixels, r.labels, r.distill_mask, r.classes, per_class=grid_per_class).save(tmp / GRID_FILE)
        manifest = _manifest(r, formats, folders, meta or {})
        files = [p for p in sorted(tmp.rglob("*")) if p.is_file()]
        manifest["files"] = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _install_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    LOG.info("exported %d images (%s) to %s", len(r), ", ".join(formats), out)
    return manifest


def _check_formats(formats: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(f.strip().lower() for f in formats if f.strip()))
    if not chosen:
        raise InvalidArgument(f"formats must name at least one of {', '.join(FORMATS)}")
    for f in chosen:
        if f not in FORMATS:
            raise InvalidArgument(f"unknown export format {f!r}; choose from {', '.join(FORMATS)}")
    return chosen


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InvalidArgument(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InvalidArgument(f"output directory {out} exists and is not empty; pass --overwrite to replace it")


def class_folders(classes: Sequence[str]) -> list[str]:
    """Folder name of each class in the PNG tree: the class name itself, refused if it could leave the folder.

    A name that is empty, ``.`` or ``..``, holds a path separator or NUL, or
    starts with ``~`` is refused rather than rewritten, so the tree always
    carries the true class names.
    """
    for name in classes:
        if name.strip() in ("", ".", "..") or name.startswith("~") or any(c in name for c in UNSAFE_NAME_CHARS):
            raise InvalidArgument(
                f"class name {name!r} cannot be a folder name (empty, '.', '..', '~...', or holding '/', '\\\\' or NUL)"
            )
    if len({c.lower() for c in classes}) != len(classes):
        raise InvalidArgument("class names must be unique (ignoring case) to be used as folder names")
    return list(classes)


def _pt_payload(r: LoadedResult) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "pixels": r.pixels.contiguous(),  # uint8 (n, C, H, W)
        "labels": r.labels.contiguous(),  # int64 (n,)
        "distill_mask": r.distill_mask.contiguous(),  # bool (n,)
        "classes": list(r.classes),
        "mean": list(r.mean),
        "std": list(r.std),
        "dataset": r.dataset,
        "eta": r.eta,
    }
    if r.images is not None:
        payload["images"] = r.images.contiguous()  # float32 (n, C, H, W), exact distilled values
    return payload


def _npz_payload(r: LoadedResult) -> dict[str, np.ndarray]:
    payload = {
        "pixels": r.pixels.numpy(),
        "labels": r.labels.numpy(),
        "distill_mask": r.distill_mask.numpy(),
        "classes": np.array(r.classes, dtype=str),
        "mean": np.array(r.mean, dtype=np.float64),
        "std": np.array(r.std, dtype=np.float64),
        "dataset": np.array(r.dataset, dtype=str),
        "eta": np.array(math.nan if r.eta is None else r.eta, dtype=np.float64),
    }
    if r.images is not None:
        payload["images"] = r.images.numpy()
    return payload


def _write_png_tree(root: Path, r: LoadedResult, folders: Sequence[str]) -> None:
    """``root/<class>/<index>.png`` for every image; the index is its row in the set."""
    from PIL import Image

    width = len(str(max(len(r) - 1, 0)))
    root_resolved = root.resolve()
    for folder in folders:
        target = (root / folder).resolve()
        if target.parent != root_resolved:  # second guard behind class_folders
            raise InvalidArgument(f"class folder {folder!r} would leave {root}")
    array = r.pixels.permute(0, 2, 3, 1).numpy()  # (n, H, W, C)
    for index, (label, pixels) in enumerate(zip(r.labels.tolist(), array)):
        folder = root / folders[label]
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        image.save(folder / f"{index:0{width}d}.png")


def _manifest(r: LoadedResult, formats: Sequence[str], folders: Sequence[str],
              meta: Mapping[str, Any]) -> dict[str, Any]:
    meta = _as_dict(dict(meta), "meta")
    settings = r.settings
    counts = torch.bincount(r.labels, minlength=len(r.classes))
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"autoselmatch": __version__, "torch": torch.__version__, "numpy": np.__version__},
        "dataset": r.dataset,
        "ipc": r.ipc,
        "alpha": settings.get("alpha"),
        "beta": settings.get("beta"),
        "score": None,
        "val_accuracy": None,
        "test_accuracy": None,
        "study": None,
        "trial": None,
        "num_images": len(r),
        "num_distill": int(r.distill_mask.sum()),
        "num_select": int((~r.distill_mask).sum()),
        "per_class": counts.tolist(),
        "image_shape": list(r.pixels.shape[1:]),
        "classes": list(r.classes),
        "mean": list(r.mean),
        "std": list(r.std),
        "eta": r.eta,
        "formats": list(formats),
        "has_float_images": r.images is not None,
        "png_folders": list(folders),
        "grid": GRID_FILE,
        "settings": settings,
        "curves": r.curves,
    }
    manifest.update(meta)
    return manifest


def _sibling_dir(out: Path, suffix: str) -> Path:
    """A new hidden folder beside ``out`` (``.NAME.<random>.SUFFIX``), created with the user's umask.

    ``tempfile.mkdtemp`` would make it private (0700), and the export would keep that mode after the rename.
    """
    for _ in range(100):
        path = out.parent / f".{out.name}.{secrets.token_hex(4)}.{suffix}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary folder beside {out}")


def _install_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``, replacing what is there (callers checked it may)."""
    if not out.exists():
        os.replace(tmp, out)
        return
    trash = _sibling_dir(out, "old")
    os.replace(out, trash / out.name)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(trash / out.name, out)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Image grid
# --------------------------------------------------------------------------------------------


def image_grid(
    pixels: torch.Tensor,
    labels: torch.Tensor,
    distill_mask: torch.Tensor,
    classes: Sequence[str],
    *,
    num_classes: int = 10,
    per_class: int = 10,
    min_side: int = 32,
) -> "Image.Image":
    """A PIL image: one row per class (the first ``num_classes``), ``per_class`` images each.

    Each image is framed blue when it is in D_select (real, frozen) and orange
    when it is in D_distill (optimised). A row shows both groups when the
    class has both: half of the slots go to D_distill, the rest to D_select.

    Args:
        pixels: uint8 (n, C, H, W).
        labels: int64 (n,).
        distill_mask: bool (n,).
        classes: Class names (row titles).
        num_classes: Rows, taken from the first classes.
        per_class: Columns.
        min_side: Small images are enlarged (nearest neighbour) to at least this side.
    """
    from PIL import Image, ImageDraw

    _, channels, height, width = pixels.shape
    zoom = max(1, math.ceil(min_side / max(height, width)))
    border, gap, title_w, legend_h = 2, 2, 90, 18
    cell_w, cell_h = width * zoom + 2 * border, height * zoom + 2 * border
    rows = list(range(min(num_classes, len(classes))))
    canvas = Image.new("RGB", (title_w + per_class * (cell_w + gap), legend_h + len(rows) * (cell_h + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([2, 4, 12, 14], fill=SELECT_COLOUR)
    draw.text((16, 3), "D_select (real)", fill="black")
    draw.rectangle([120, 4, 130, 14], fill=DISTILL_COLOUR)
    draw.text((134, 3), "D_distill (optimised)", fill="black")
    for row, label in enumerate(rows):
        top = legend_h + row * (cell_h + gap)
        draw.text((2, top + cell_h // 2 - 5), str(classes[label])[:14], fill="black")
        for col, index in enumerate(_grid_pick(labels, distill_mask, label, per_class)):
            tile = pixels[index].permute(1, 2, 0).numpy()  # (H, W, C)
            tile = np.repeat(tile, 3, axis=2) if channels == 1 else tile[..., :3]
            picture = Image.fromarray(np.ascontiguousarray(tile)).resize((width * zoom, height * zoom), Image.NEAREST)
            left = title_w + col * (cell_w + gap)
            colour = DISTILL_COLOUR if bool(distill_mask[index]) else SELECT_COLOUR
            draw.rectangle([left, top, left + cell_w - 1, top + cell_h - 1], fill=colour)
            canvas.paste(picture, (left + border, top + border))
    return canvas


def _grid_pick(labels: torch.Tensor, distill_mask: torch.Tensor, label: int, k: int) -> list[int]:
    """Up to ``k`` indices of class ``label``: half D_distill, half D_select, topped up from either."""
    members = labels == label
    distill = torch.nonzero(members & distill_mask).flatten().tolist()
    select = torch.nonzero(members & ~distill_mask).flatten().tolist()
    n_distill = min(len(distill), max(math.ceil(k / 2), k - len(select)))
    return distill[:n_distill] + select[: k - n_distill]


def grid_png(result: LoadedResult, *, per_class: int = 10) -> bytes:
    """``image_grid`` of a result, as PNG bytes."""
    buffer = io.BytesIO()
    grid = image_grid(result.pixels, result.labels, result.distill_mask, result.classes, per_class=per_class)
    grid.save(buffer, "PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Loading an export
# --------------------------------------------------------------------------------------------


class DistilledSet(torch.utils.data.Dataset):
    """An exported distilled set as a torch Dataset of ``(image, label)`` pairs.

    Images are float32 (C, H, W) in the dataset's normalised space (the exact
    distilled values when the export kept them, else the uint8 pixels
    normalised with the stored mean/std). With ``augment=True`` each sample
    goes through SelMatch's combined augmentation: DSA for D_distill images,
    random crop + flip for D_select images. Batched training loops can skip
    the per-sample path: take ``images``, ``labels`` and ``distill_mask`` and
    call :func:`autoselmatch.augment.combined_augment` on each batch.

    Args:
        images: float32 (n, C, H, W), normalised.
        pixels: uint8 (n, C, H, W).
        labels: int64 (n,).
        distill_mask: bool (n,), True for D_distill rows.
        manifest: The export's manifest (dataset, IPC, alpha, beta, accuracies, settings).
        augment: Apply the combined augmentation in ``__getitem__``.
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
        augment: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.images = images
        self.pixels = pixels
        self.labels = labels
        self.distill_mask = distill_mask
        self.manifest = manifest
        self.augment = augment
        self.generator = generator

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
            from .augment import combined_augment

            image = combined_augment(image[None], self.distill_mask[index : index + 1], generator=self.generator)[0]
        return image, self.labels[index]


def load_distilled(
    path: str | os.PathLike,
    *,
    augment: bool = False,
    generator: torch.Generator | None = None,
) -> DistilledSet:
    """Load an export written by :func:`export_set` after checking every file's sha256.

    Reads ``dataset.pt`` (``weights_only``) or, without it, ``dataset.npz``
    (no pickles). A file that is missing or whose checksum differs from the
    manifest is refused with :class:`~autoselmatch.errors.DataError`.

    Args:
        path: The export folder.
        augment: Apply SelMatch's combined augmentation to each sample.
        generator: Randomness of the augmentation.
    """
    root = Path(path).expanduser()
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
    images = tensors["images"] if "images" in tensors else normalize(pixels, manifest["mean"], manifest["std"])
    return DistilledSet(images, pixels, tensors["labels"], tensors["distill_mask"], manifest,
                        augment=augment, generator=generator)


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


# --------------------------------------------------------------------------------------------
# Study export
# --------------------------------------------------------------------------------------------


def study_artifacts(study: "optuna.Study", storage: "optuna.storages.BaseStorage") -> list["ArtifactMeta"]:
    """Every artifact a study and its trials reference (Optuna records them as ``artifacts:<id>`` system attrs)."""
    from optuna.artifacts import get_all_artifact_meta

    metas = list(get_all_artifact_meta(study))
    for trial in study.get_trials(deepcopy=False):
        metas += get_all_artifact_meta(trial, storage=storage)
    return metas


def export_study(
    storage: str,
    out_file: str | os.PathLike,
    *,
    studies: Sequence[str] | None = None,
    artifacts: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Copy studies into one self-contained SQLite file, with their artifact files beside it.

    ``optuna.copy_study`` copies directions, attributes and trials (their
    ``artifacts:<id>`` system attrs included) but not the artifact files; those
    are copied from ``artifacts`` to ``<out stem>-artifacts/``, so
    ``optuna-dashboard sqlite:///OUT.db --artifact-dir OUT-artifacts`` shows
    everything. Both are written under temporary names and renamed at the end.

    Args:
        storage: Source storage URL: ``sqlite:///F.db``, ``journal:///F.log`` (or ``F.log``),
            ``postgresql://...``.
        out_file: The SQLite file to create (``.db``).
        studies: Names of the studies to copy (default: all).
        artifacts: Source artifact folder (default: ``<storage file stem>-artifacts`` beside a
            file storage; a server database needs it given).
        overwrite: Replace an existing ``out_file`` and artifact folder.

    Returns:
        ``{"out", "artifact_dir", "studies", "trials", "artifacts", "missing_artifacts"}``.
    """
    import optuna

    out = Path(out_file).expanduser()
    art_out = out.with_name(f"{out.stem}-artifacts")
    if out.exists() and not overwrite:
        raise InvalidArgument(f"output {out} exists; pass --overwrite to replace it")
    if out.exists() and not out.is_file():
        raise InvalidArgument(f"output {out} exists and is not a file")
    if art_out.exists() and any(art_out.iterdir()) and not overwrite:
        raise InvalidArgument(f"artifact folder {art_out} exists and is not empty; pass --overwrite to replace it")
    if artifacts is not None and not Path(artifacts).expanduser().is_dir():
        raise InvalidArgument(f"artifact folder {artifacts} does not exist")
    spec, source = open_existing_storage(storage)
    art_in = Path(artifacts).expanduser() if artifacts is not None else artifact_dir_of(spec, None)
    try:
        names = _choose_studies(source, studies)
        out.parent.mkdir(parents=True, exist_ok=True)
        work = _sibling_dir(out, "tmp")
        try:
            (work / "artifacts").mkdir()
            target = optuna.storages.RDBStorage(f"sqlite:///{work / out.name}")
            trials, wanted = 0, set()
            try:
                with _quiet_optuna():
                    for name in names:
                        optuna.copy_study(from_study_name=name, from_storage=source, to_storage=target)
                        study = optuna.load_study(study_name=name, storage=source)
                        trials += len(study.get_trials(deepcopy=False))
                        wanted.update(meta.artifact_id for meta in study_artifacts(study, source))
            finally:
                close_storage(target)
            copied, missing = _copy_artifacts(wanted, art_in, work / "artifacts")
            os.replace(work / out.name, out)
            _install_dir(work / "artifacts", art_out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        close_storage(source)
    if missing:
        LOG.warning("%d referenced artifact file(s) were not found in %s; the dashboard will not show them",
                    len(missing), art_in)
    LOG.info("copied %d studies (%d trials, %d artifacts) to %s", len(names), trials, copied, out)
    return {"out": str(out), "artifact_dir": str(art_out), "studies": names, "trials": trials,
            "artifacts": copied, "missing_artifacts": len(missing)}


def _choose_studies(storage: "optuna.storages.BaseStorage", studies: Sequence[str] | None) -> list[str]:
    available = [s.study_name for s in storage.get_all_studies()]
    if not available:
        raise DataError("the storage holds no study")
    if studies is None:
        return available
    for name in studies:
        if name not in available:
            raise InvalidArgument(f"unknown study {name!r}; the storage holds: {', '.join(available)}")
    return list(dict.fromkeys(studies))


def _copy_artifacts(wanted: set[str], src: Path | None, dst: Path) -> tuple[int, list[str]]:
    """Copy ``src/<id>`` to ``dst/<id>`` for every wanted artifact id; return (copied, missing ids)."""
    copied, missing = 0, []
    for artifact_id in sorted(wanted):
        if not _plain_name(artifact_id):
            raise DataError(f"artifact id {artifact_id!r} is not a plain file name; the study is corrupt")
        file = None if src is None else src / artifact_id
        if file is None or not file.is_file():
            missing.append(artifact_id)
            continue
        shutil.copy2(file, dst / artifact_id)
        copied += 1
    return copied, missing


def _plain_name(name: str) -> bool:
    """Whether ``name`` is a single file name that stays inside its folder."""
    return name not in ("", ".", "..") and Path(name).name == name and "\\" not in name


@contextlib.contextmanager
def _quiet_optuna():
    """Silence Optuna's per-study INFO lines ("A new study created ...") while copying."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


# --------------------------------------------------------------------------------------------
# Exporting a study's trial
# --------------------------------------------------------------------------------------------


def pick_trial(study: "optuna.Study", number: int | None = None) -> "optuna.trial.FrozenTrial":
    """The study's best trial, or trial ``number``; it must have finished."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if number is None:
        if not any(t.state == TrialState.COMPLETE for t in trials):
            raise DataError(f"study {study.study_name!r} has no finished trial to export")
        return study.best_trial
    by_number = {t.number: t for t in trials}
    if number not in by_number:
        raise InvalidArgument(f"study {study.study_name!r} has no trial {number}; trials are 0..{len(trials) - 1}")
    if by_number[number].state != TrialState.COMPLETE:
        raise InvalidArgument(f"trial {number} of {study.study_name!r} is {by_number[number].state.name}, not COMPLETE")
    return by_number[number]


def export_trial(
    storage: str,
    study_name: str,
    out_dir: str | os.PathLike,
    *,
    trial: int | None = None,
    artifacts: str | os.PathLike | None = None,
    formats: Iterable[str] = FORMATS,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export a study's final set, or a given trial's set, with :func:`export_set`.

    Without ``trial``: the final set that ``tune`` made from the best trial
    (the study's ``final`` user attr: distilled for the full iteration budget
    and scored on the test set) when there is one, else the best trial's own
    set. A set is read from its ``result_path``; when that file is gone (a
    study copied to another machine) from the matching ``*distilled.pt``
    artifact.

    Args:
        storage: Storage URL (see :func:`export_study`).
        study_name: Study to read, e.g. ``cifar100-ipc50-alpha``.
        out_dir: Export folder.
        trial: Trial number (default: the final set, else the best trial).
        artifacts: Artifact folder (default: where ``tune`` puts it for this storage).
        formats: Export formats.
        overwrite: Replace a non-empty ``out_dir``.
    """
    import optuna
    from optuna.artifacts import get_all_artifact_meta

    _check_formats(formats)
    _check_out_dir(Path(out_dir).expanduser(), overwrite)
    spec, source = open_existing_storage(storage)
    try:
        try:
            study = optuna.load_study(study_name=study_name, storage=source)
        except KeyError:
            names = ", ".join(s.study_name for s in source.get_all_studies()) or "none"
            raise InvalidArgument(f"unknown study {study_name!r}; the storage holds: {names}") from None
        final = study.user_attrs.get(FINAL_ATTR) if trial is None else None
        chosen = pick_trial(study, final["trial"] if final else trial)
        dataset = study.user_attrs.get("dataset") or study_name.split("-ipc")[0]
        art_dir = Path(artifacts).expanduser() if artifacts is not None else artifact_dir_of(spec, dataset)
        if final:
            result = _find_result(final.get(RESULT_PATH_ATTR), get_all_artifact_meta(study), art_dir,
                                  f"the final set of {study_name}")
        else:
            result = _find_result(chosen.user_attrs.get(RESULT_PATH_ATTR),
                                  get_all_artifact_meta(chosen, storage=source), art_dir, f"trial {chosen.number}")
    finally:
        close_storage(source)
    final = final or {}
    meta = {
        "study": study_name,
        "trial": chosen.number,
        "final": bool(final),
        "score": chosen.value,
        "alpha": chosen.params.get("alpha", final.get("alpha")),
        "beta": chosen.params.get("beta", final.get("beta")),
        "val_accuracy": chosen.user_attrs.get("val_accuracy", chosen.value),
        "test_accuracy": final.get("test_accuracy"),
        "evaluation": final.get("evaluation"),
        "study_settings": study.user_attrs.get("settings"),
    }
    meta = {key: value for key, value in meta.items() if value is not None}
    return export_set(result, out_dir, formats=formats, overwrite=overwrite, meta=meta)


def _find_result(path: str | None, uploads: Sequence["ArtifactMeta"], art_dir: Path | None,
                 what: str) -> LoadedResult:
    """The set at ``path``, else the ``*distilled.pt`` among ``uploads`` found in ``art_dir``."""
    if path is not None and Path(path).expanduser().is_file():
        return load_result(path)
    for meta in uploads:
        if art_dir is None or not meta.filename.endswith("distilled.pt") or not _plain_name(meta.artifact_id):
            continue
        if (art_dir / meta.artifact_id).is_file():
            return load_result(art_dir / meta.artifact_id)
    raise DataError(
        f"{what} has no readable distilled set: {RESULT_PATH_ATTR} is {path!r} and no "
        f"'*distilled.pt' artifact was found in {art_dir}; pass --artifacts DIR if the artifacts live elsewhere"
    )


# --------------------------------------------------------------------------------------------
# Trial artifacts (called by tune)
# --------------------------------------------------------------------------------------------


def upload_trial_artifacts(
    target: "optuna.Trial | optuna.Study",
    artifact_store: "ArtifactStore",
    result: str | os.PathLike | Mapping[str, Any] | LoadedResult,
    *,
    curves: Mapping[str, Any] | None = None,
    include_set: bool = True,
    grid_per_class: int = 10,
) -> dict[str, str]:
    """Upload a result's image grid, curves and (optionally) the set itself as Optuna artifacts.

    Call it with the running ``optuna.Trial`` inside the objective (Optuna
    refuses attrs on finished trials), and once with the ``optuna.Study`` for
    the final best set. The dashboard lists the files under the trial/study.

    Args:
        target: A running trial, or a study.
        artifact_store: E.g. ``optuna.artifacts.FileSystemArtifactStore("studies/x-artifacts")``.
        result: The distilled result (file, dict or :class:`LoadedResult`).
        curves: Curves to store as JSON (default: the result's own ``curves``).
        include_set: Also upload the set as ``*distilled.pt`` (weights_only-loadable).
        grid_per_class: Images per class in the grid.

    Returns:
        ``{"grid": id, "curves": id, "set": id}`` for what was uploaded.
    """
    import optuna
    from optuna.artifacts import upload_artifact

    if not isinstance(target, (optuna.Trial, optuna.Study)):
        raise InvalidArgument(f"artifacts go to a running optuna.Trial or a Study, got {type(target).__name__}")
    r = result if isinstance(result, LoadedResult) else load_result(result)
    prefix = f"trial-{target.number}" if isinstance(target, optuna.Trial) else "best"
    curves = dict(curves) if curves is not None else r.curves
    uploaded: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="autoselmatch-artifacts-") as tmp:
        files = {"grid": Path(tmp) / f"{prefix}-grid.png"}
        files["grid"].write_bytes(grid_png(r, per_class=grid_per_class))
        if curves:
            files["curves"] = Path(tmp) / f"{prefix}-curves.json"
            files["curves"].write_text(json.dumps(curves, indent=2, sort_keys=True, default=_json_default))
        if include_set:
            files["set"] = Path(tmp) / f"{prefix}-distilled.pt"
            blob = {**_pt_payload(r), "settings": json.dumps(r.settings), "curves": json.dumps(curves)}
            torch.save(blob, files["set"])
        for kind, file in files.items():
            uploaded[kind] = upload_artifact(artifact_store=artifact_store, file_path=str(file), study_or_trial=target)
    return uploaded


__all__ = [
    "FORMATS",
    "LoadedResult",
    "DistilledSet",
    "class_folders",
    "study_artifacts",
    "export_set",
    "export_study",
    "export_trial",
    "image_grid",
    "load_distilled",
    "load_result",
    "pick_trial",
    "upload_trial_artifacts",
    "verify_export",
]
