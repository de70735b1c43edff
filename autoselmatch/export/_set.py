"""Writing an export folder: ``dataset.pt``, ``dataset.npz``, a PNG tree, ``grid.png`` and ``manifest.json``."""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from .._version import __version__
from ..choices import EXPORT_FORMATS
from ..errors import InvalidArgument
from ..fileio import sha256_file
from ..runtime import LOG
from ..synset import SyntheticSet, json_default
from ._grid import image_grid
from ._result import load_result

FORMATS = EXPORT_FORMATS
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "autoselmatch-distilled-set/1"
GRID_FILE = "grid.png"
# Characters a class name may not contain when it becomes a folder name (path separators, NUL).
UNSAFE_NAME_CHARS = ("/", "\\", "\0")


def export_set(
    result: str | os.PathLike | Mapping[str, Any] | SyntheticSet,
    out_dir: str | os.PathLike,
    *,
    formats: Iterable[str] = FORMATS,
    overwrite: bool = False,
    meta: Mapping[str, Any] | None = None,
    grid_per_class: int = 10,
) -> dict[str, Any]:
    """Write a distilled set as ``dataset.pt``/``dataset.npz``/a PNG tree, ``grid.png`` and ``manifest.json``.

    Args:
        result: A set file, its dict or a :class:`~autoselmatch.synset.SyntheticSet` (see :func:`load_result`).
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
    r = load_result(result)
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
        image_grid(r.to_pixels(), r.labels, r.distill_mask, r.classes, per_class=grid_per_class).save(tmp / GRID_FILE)
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


def _pt_payload(r: SyntheticSet) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "pixels": r.to_pixels().contiguous(),  # uint8 (n, C, H, W)
        "labels": r.labels.contiguous(),  # int64 (n,)
        "distill_mask": r.distill_mask.contiguous(),  # bool (n,)
        "classes": list(r.classes),
        "mean": list(r.mean),
        "std": list(r.std),
        "dataset": r.dataset,
        "eta": r.eta,
    }
    if r.images.is_floating_point():
        payload["images"] = r.images.contiguous()  # float32 (n, C, H, W), exact distilled values
    return payload


def _npz_payload(r: SyntheticSet) -> dict[str, np.ndarray]:
    payload = {
        "pixels": r.to_pixels().numpy(),
        "labels": r.labels.numpy(),
        "distill_mask": r.distill_mask.numpy(),
        "classes": np.array(r.classes, dtype=str),
        "mean": np.array(r.mean, dtype=np.float64),
        "std": np.array(r.std, dtype=np.float64),
        "dataset": np.array(r.dataset, dtype=str),
        "eta": np.array(math.nan if r.eta is None else r.eta, dtype=np.float64),
    }
    if r.images.is_floating_point():
        payload["images"] = r.images.numpy()
    return payload


def _write_png_tree(root: Path, r: SyntheticSet, folders: Sequence[str]) -> None:
    """``root/<class>/<index>.png`` for every image; the index is its row in the set."""
    from PIL import Image

    width = len(str(max(len(r) - 1, 0)))
    root_resolved = root.resolve()
    for folder in folders:
        target = (root / folder).resolve()
        if target.parent != root_resolved:  # second guard behind class_folders
            raise InvalidArgument(f"class folder {folder!r} would leave {root}")
    array = r.to_pixels().permute(0, 2, 3, 1).numpy()  # (n, H, W, C)
    for index, (label, pixels) in enumerate(zip(r.labels.tolist(), array)):
        folder = root / folders[label]
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        image.save(folder / f"{index:0{width}d}.png")


def _manifest(r: SyntheticSet, formats: Sequence[str], folders: Sequence[str],
              meta: Mapping[str, Any]) -> dict[str, Any]:
    meta = json.loads(json.dumps(dict(meta), default=json_default))
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
        "image_shape": list(r.images.shape[1:]),
        "classes": list(r.classes),
        "mean": list(r.mean),
        "std": list(r.std),
        "eta": r.eta,
        "formats": list(formats),
        "has_float_images": r.images.is_floating_point(),
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
