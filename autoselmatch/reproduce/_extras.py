"""Extra rows of the main table: sets made elsewhere (``--extra NAME=PATH``), scored like every other row.

PATH is a folder saved by MTT, FTD or DATM (``images_best.pt``,
``labels_best.pt``; hard or soft labels, see :mod:`autoselmatch.reference`).
Its row sits in the column of its IPC (images per class; for soft labels,
rows / classes), which must be one of the run's IPCs. Every image counts as
distilled (DSA under ``combined``), as in ``evaluate --from-reference``.
Whitened sets are refused here: ``evaluate --from-reference --zca`` scores
them alone. The cells' keys hold the files' sha256, so a changed file is
scored again; the set is read from PATH, not copied into ``OUT/sets/``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch

from ..choices import REPRODUCE_METHODS
from ..config import RunConfig
from ..data import ImageDataset
from ..errors import InvalidArgument
from ..fileio import sha256_file, stable_hash
from ._plan import SetSpec
from ._sets import BuiltSet

EXTRA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def parse_extras(values: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``NAME=PATH`` options as (name, path) pairs; a name must be new (not a method) and a plain word."""
    pairs: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not path:
            raise InvalidArgument(f"--extra takes NAME=PATH (a folder with images_best.pt and labels_best.pt), "
                                  f"got {value!r}")
        if not EXTRA_NAME.fullmatch(name):
            raise InvalidArgument(f"--extra name must be letters, digits and _.+- , got {name!r}")
        if name in REPRODUCE_METHODS or name == "partial" or name in pairs:
            raise InvalidArgument(f"--extra name {name!r} is already a row of the table; choose another")
        pairs[name] = path
    return tuple(pairs.items())


def extra_specs(extras: Sequence[tuple[str, str]], ds: ImageDataset, ipcs: Sequence[int],
                cfg: RunConfig) -> list[SetSpec]:
    """One :class:`SetSpec` per extra set, read and checked now (before any cell runs)."""
    specs = []
    for name, path in extras:
        try:
            reference = _load(Path(path).expanduser(), ds, cfg, check=True)
        except InvalidArgument as exc:
            if "ZCA" not in str(exc):
                raise
            raise InvalidArgument(f"--extra {name}: {str(exc).split(';')[0]}; score a whitened set alone with "
                                  "`autoselmatch evaluate --from-reference PATH --zca`") from None
        n = len(reference.labels)
        ipc = round(n / ds.num_classes) if reference.soft else int(torch.bincount(reference.labels).max())
        if ipc not in ipcs:
            raise InvalidArgument(f"--extra {name} holds {ipc} images per class; add --ipc {ipc} to place its row "
                                  f"(the run's IPCs are {', '.join(map(str, ipcs))})")
        digest = stable_hash([sha256_file(f) for f in reference.files])
        specs.append(SetSpec(name, ipc, source=str(Path(path).expanduser().resolve()), source_sha256=digest))
    return specs


def extra_set(spec: SetSpec, ds: ImageDataset, cfg: RunConfig) -> BuiltSet:
    """The extra set of ``spec`` as a :class:`BuiltSet` (every row distilled)."""
    reference = _load(Path(spec.source), ds, cfg, check=False)
    settings = {"method": spec.name, "source": spec.source, "files": [str(f) for f in reference.files],
                "labels": "soft" if reference.soft else "hard", "learned_lr": reference.lr, "loss_ratio": None}
    return BuiltSet(reference.images, reference.labels, torch.ones(len(reference.labels), dtype=torch.bool), settings)


def _load(path: Path, ds: ImageDataset, cfg: RunConfig, *, check: bool):
    """The reference set at ``path``; ``check``: also its shapes and that it is not ZCA-whitened (a fit of ZCA)."""
    from ..evaluate import check_set
    from ..reference import load_reference_set, reference_whitening

    reference = load_reference_set([path])
    if check:
        check_set(ds, reference.images, reference.labels, None)
        reference_whitening(ds, reference.images, zca=False, eps=cfg.experts.zca_eps)
    return reference
