"""Crash-safe file writes and safe loads.

Every file the tool writes that a later run trusts (expert trajectories,
distillation checkpoints, exported sets, score caches) goes through
:func:`atomic_write`: the bytes land in a temporary file in the same folder,
are flushed to disk, and only then renamed over the target, so a crash leaves
either the old file or the complete new one, never a truncated one. A writer
killed before the rename leaves its hidden ``.NAME.XXXXXXXX.tmp``; the next
write of ``NAME`` removes it (see :func:`remove_stale_temporaries`).

:func:`file_lock` lets processes that share a folder (several workers over one
NFS cache, two commands started together) take turns: an exclusive ``flock``
on a lock file, dropped by the OS when its holder exits or is killed.
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
import time
from pathlib import Path
from typing import IO, Any, Iterator

import torch

from .errors import DataError
from .runtime import LOG, fault_point

try:
    import fcntl
except ImportError:  # Windows: no flock; file_lock locks nothing and stale temporaries stay
    fcntl = None

_UMASK = os.umask(0)
os.umask(_UMASK)

STALE_TMP_SECONDS = 60.0  # an unlocked temporary file untouched this long was left by a killed writer


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    The temporary file stays ``flock``-ed until the rename, which tells
    :func:`remove_stale_temporaries` (run first, on ``path``'s siblings) that
    its writer is alive.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes files owner-only; give them the usual permissions
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held until ``fd`` closes, after the rename
        with os.fdopen(os.dup(fd), mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the ``.NAME.XXXXXXXX.tmp`` siblings of ``path`` that killed writers left; return them.

    A temporary file is stale when it was last modified more than
    :data:`STALE_TMP_SECONDS` ago and no process holds its ``flock`` (a live
    :func:`atomic_write` holds it from creation to rename, so a slow writer's
    file is never removed). Without fcntl nothing is removed.
    """
    path = Path(path)
    if fcntl is None or not path.parent.is_dir():
        return []
    pattern = re.compile(re.escape(f".{path.name}.") + r"[^.]+\.tmp")
    removed = []
    for entry in os.scandir(path.parent):
        if pattern.fullmatch(entry.name) and _remove_if_stale(Path(entry.path)):
            removed.append(Path(entry.path))
    if removed:
        LOG.info("removed %d temporary file(s) of %s left by an interrupted write", len(removed), path)
    return removed


def _remove_if_stale(tmp: Path) -> bool:
    try:
        if time.time() - tmp.stat().st_mtime < STALE_TMP_SECONDS:
            return False  # too fresh: its writer may not have locked it yet
        fd = os.open(tmp, os.O_RDWR)
    except OSError:  # gone already, or not ours to open
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        tmp.unlink()
        return True
    except OSError:  # BlockingIOError: a live writer holds it
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on the lock file ``path`` for the ``with`` block; yields whether it is held.

    The file is created when missing and removed on release, so a folder
    keeps no lock files once its users are done. The OS drops the lock when
    its holder dies (SIGKILL included): the file a killed holder leaves is
    taken over by the next process and never blocks anyone. On Linux, flock
    on NFS (v4, or v3 with lockd) is mapped to server-side locks and holds
    across machines. Without fcntl (Windows) nothing is locked: yields True
    and says so in a debug message.

    Args:
        path: The lock file, conventionally a hidden ``.NAME.lock`` beside what it guards.
        blocking: Wait for the lock (True) or yield False at once when another process holds it.

    Example::

        with file_lock(folder / ".manifest.lock"):
            manifest = read(folder); manifest.update(...); write(folder, manifest)
    """
    if fcntl is None:
        LOG.debug("no fcntl on this platform: %s is not locked", path)
        yield True
        return
    path = Path(path)
    fd = _acquire(path, blocking)
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        path.unlink(missing_ok=True)  # while still held: only a holder removes the file
        os.close(fd)


def _acquire(path: Path, blocking: bool) -> int | None:
    """A descriptor holding the lock on the file now at ``path``; None when busy and not ``blocking``."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    return fd
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder we waited for removed the file we locked: lock the one there now


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def load_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu", *, what: str = "",
               remedy: str = "", mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors, dicts, lists and numbers only.

    A file that would import anything else (a class, a function: code run while
    loading), a truncated file and one of another format raise :class:`DataError`
    in one line; nothing from the file is executed. A missing file raises
    ``FileNotFoundError``.

    Args:
        path: The file.
        map_location: Where tensors are put.
        what: What the file should be (``"set file"``), named before the path in errors.
        remedy: What the user can do about a bad file (``"delete it to recompute"``), after the error.
        mmap: Map the tensors' storage from the file instead of reading it (a large file is read
            as its tensors are used; CPU only). A file in torch's legacy (non-zip) format is read whole.
    """
    name = f"{what} {path}" if what else str(path)
    then = f"; {remedy}" if remedy else ""
    if mmap:
        import zipfile

        mmap = zipfile.is_zipfile(path)  # torch maps only its zip format
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap or None)
    except pickle.UnpicklingError as exc:
        raise DataError(f"refusing to load {name}: {_refusal(exc)}{then}") from None
    except (EOFError, IndexError, RuntimeError):  # what torch raises on a truncated or foreign file
        if _is_npz(path):  # a whole NumPy archive is no truncated torch file: say what it is
            raise DataError(f"{name} is a NumPy .npz archive, not a torch file{then}") from None
        raise DataError(f"{name} is not a complete torch file (truncated, or of another format){then}") from None
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: a zip whose directory points past the end (a truncated file)
            raise
        raise DataError(f"{name} is not a complete torch file (truncated){then}") from None


def _is_npz(path: str | os.PathLike) -> bool:
    """A readable zip whose members are all ``.npy`` arrays (what ``numpy.savez`` writes)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return bool(names) and all(n.endswith(".npy") for n in names)


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


def save_text(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` (a table, a page), atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


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
