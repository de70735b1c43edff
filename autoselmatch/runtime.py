"""Device choice, seeding, logging and progress bars shared by every stage.

torch and NumPy are imported inside the functions that need them, so the CLI
can set up logging without paying for them on ``--help``.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from typing import TYPE_CHECKING, Generic, Iterable, Iterator, TypeVar

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

    from .errors import InvalidArgument

    base, _, index = name.partition(":")
    if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
        raise InvalidArgument(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {name!r}")
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument(f"device {name!r} requested but CUDA is not available; use --device cpu (or auto)")
    if base == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise InvalidArgument(f"device {name!r} requested but there are {torch.cuda.device_count()} CUDA devices "
                              f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if base == "mps" and not torch.backends.mps.is_available():
        raise InvalidArgument(f"device {name!r} requested but MPS is not available; use --device cpu (or auto)")
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
    """Progress of a loop on stderr: a tqdm bar on a terminal, else a plain log line every
    ``AUTOSELMATCH_PROGRESS_SECONDS`` (30) seconds (no ``\\r`` or cursor codes in log files).

    Hidden when the logger is quiet or ``AUTOSELMATCH_NO_PROGRESS`` is set. Either
    form takes ``set_postfix(name=value, ...)`` for the values shown after the count.
    """
    from tqdm.auto import tqdm

    disable = LOG.getEffectiveLevel() > logging.INFO or bool(os.environ.get("AUTOSELMATCH_NO_PROGRESS"))
    if not disable and not _bars_render():
        every = float(os.environ.get("AUTOSELMATCH_PROGRESS_SECONDS", "30"))
        return LogProgress(iterable, desc=desc, total=total, every=every)
    return tqdm(iterable, desc=desc, total=total, leave=leave, disable=disable, dynamic_ncols=True)


def _bars_render() -> bool:
    """Whether a bar shows as a bar: stderr is a terminal, or a notebook (tqdm.auto draws a widget)."""
    import sys

    return (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()) or "ipykernel" in sys.modules


class LogProgress(Generic[T]):
    """Iterates ``iterable`` and logs ``desc: i/total (p %), key value, ..., t s`` at most every ``every`` seconds.

    The first line comes once ``every`` seconds have passed, and a last one when the loop ends
    (if any was logged and the count moved since), so short loops stay silent. ``key value``
    pairs are the last :meth:`set_postfix` values.
    """

    def __init__(self, iterable: Iterable[T], *, desc: str, total: int | None, every: float) -> None:
        self.iterable, self.desc, self.every = iterable, desc, every
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.postfix: dict[str, object] = {}
        self.count = 0

    def set_postfix(self, refresh: bool = True, **values: object) -> None:
        self.postfix = values

    def __iter__(self) -> Iterator[T]:
        start = last = time.monotonic()
        logged_at = 0  # count at the last line; 0: none yet
        for item in self.iterable:
            yield item
            self.count += 1
            now = time.monotonic()
            if now - last >= self.every:
                self._log(now - start)
                last, logged_at = now, self.count
        if 0 < logged_at < self.count:
            self._log(time.monotonic() - start)

    def _log(self, seconds: float) -> None:
        count = f"{self.count}/{self.total} ({100 * self.count / self.total:.0f} %)" if self.total else str(self.count)
        extra = "".join(f", {key} {value}" for key, value in self.postfix.items())
        LOG.info("%s: %s%s, %.0f s", self.desc, count, extra, seconds)


def fault_point(name: str) -> None:
    """Fault-injection hook for the crash tests (tests/test_faults.py); does nothing unless configured.

    ``AUTOSELMATCH_FAULT=POINT:N:SIGNAL`` (read once, at import) makes the
    process send itself ``SIGNAL`` (``KILL`` or ``INT``) at the ``N``-th call
    (1-based) of ``fault_point(POINT)``. Named points:

    - ``experts.epoch``: an epoch's row written, its state not yet saved;
    - ``experts.recorded``: a finished expert in the manifest, its file not yet renamed;
    - ``experts.import_row``: a row of an imported expert written, the expert not yet recorded;
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
