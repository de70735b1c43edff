"""Crash-safe file writes and safe loads.

Every file the tool writes that a later run trusts (expert trajectories,
distillation checkpoints, exported sets, score caches) goes through
:func:`atomic_write`: the bytes land in a temporary file in the same folder,
are flushed to disk, and only then renamed over the target, so a crash leaves
either the old file or the complete new one, never a truncated one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import torch

from .errors import DataError
from .runtime import fault_point

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes files owner-only; give them the usual permissions
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def load_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``: tensors, dicts, lists and numbers only.

    A file that would import anything else (a class, a function: code run while
    loading), a truncated file and one of another format raise :class:`DataError`
    in one line; nothing from the file is executed. A missing file raises
    ``FileNotFoundError``.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(f"refusing to load {path}: {_refusal(exc)}") from None
    except (EOFError, IndexError, RuntimeError):  # what torch raises on a truncated or foreign file
        raise DataError(f"{path} is not a complete torch file (truncated, or of another format)") from None
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: a zip whose directory points past the end (a truncated file)
            raise
        raise DataError(f"{path} is not a complete torch file (truncated)") from None


def _refusal(exc: pickle.UnpicklingError) -> str:
    """torch's several-paragraph weights-only refusal, as the one fact that matters."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if found is not None:
        return f"it holds a Python object ({found.group(1)}), not only tensors, numbers and strings"
    return "it is not a torch file of tensors"


def save_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """Short sha256 of the canonical JSON of ``obj``; used as a cache key."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
