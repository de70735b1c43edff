"""Device choice, seeding, logging and progress bars shared by every stage.

torch and NumPy are imported inside the functions that need them, so the CLI
can set up logging without paying for them on ``--help``.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from typing import TYPE_CHECKING, Iterable, TypeVar

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
LOG = logging.getLogger("autoselmatch")
T = TypeVar("T")
# AUTOSELMATCH_FAULT=POINT:N:SIGNAL, see fault_point; POINT may itself contain ":"
_FAULT_POINT, _FAULT_HIT, _FAULT_SIGNAL = (os.environ.get("AUTOSELMATCH_FAULT", "").rsplit(":", 2) + ["", ""])[:3]
_fault_hits = 0


def resolve_device(name: str = "auto") -> torch.device:
    """Map ``auto|cpu|cuda|mps`` (or ``cuda:1``) to an available torch device.

    ``auto`` picks CUDA, then MPS, then CPU. Asking for a backend that is not
    available raises ``ValueError`` instead of failing later inside a kernel.
    """
    import torch

    base = name.split(":")[0]
    if base not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if base == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} requested but MPS is not available; use --device cpu")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded the same way."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def setup_logging(verbosity: int = 0) -> None:
    """Configure the package logger: -1 quiet (warnings), 0 info, 1+ debug.

    Adds a stderr handler only when the application has not configured
    logging itself (the root logger has no handlers); otherwise records
    propagate to the application's handlers.
    """
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    LOG.setLevel(level)
    if LOG.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    LOG.addHandler(handler)
    LOG.propagate = False


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, leave: bool = False) -> Iterable[T]:
    """A tqdm bar on stderr, hidden when the logger is quiet or ``AUTOSELMATCH_NO_PROGRESS`` is set."""
    from tqdm.auto import tqdm

    disable = LOG.getEffectiveLevel() > logging.INFO or bool(os.environ.get("AUTOSELMATCH_NO_PROGRESS"))
    return tqdm(iterable, desc=desc, total=total, leave=leave, disable=disable, dynamic_ncols=True)


def fault_point(name: str) -> None:
    """Fault-injection hook for the crash tests (tests/test_faults.py); does nothing unless configured.

    ``AUTOSELMATCH_FAULT=POINT:N:SIGNAL`` (read once, at import) makes the
    process send itself ``SIGNAL`` (``KILL`` or ``INT``) at the ``N``-th call
    (1-based) of ``fault_point(POINT)``. Named points:

    - ``experts.epoch``: an epoch's row written, its state not yet saved;
    - ``experts.recorded``: a finished expert in the manifest, its file not yet renamed;
    - ``distill.iteration``: an iteration's gradients computed, the update not applied;
    - ``tune.claimed``: a trial claimed (RUNNING), its objective not yet called;
    - ``tune.report``: an intermediate value reported;
    - ``tune.told``: a trial's result stored, the next trial not yet claimed;
    - ``write:FILENAME``: inside :func:`autoselmatch.fileio.atomic_write`, the
      temporary file complete and fsynced, not yet renamed over ``FILENAME``.

    Example: ``AUTOSELMATCH_FAULT=write:checkpoint.pt:2:KILL`` kills the
    process while it writes its second distillation checkpoint.
    """
    global _fault_hits
    if name != _FAULT_POINT:
        return
    _fault_hits += 1
    if str(_fault_hits) == _FAULT_HIT:
        signal.raise_signal(signal.SIGKILL if _FAULT_SIGNAL == "KILL" else signal.SIGINT)
