"""Coverage cells: the reference network of :mod:`autoselmatch.coverage`, cached beside the run's sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..coverage import Reference, reference_config, set_coverage
from ..coverage import reference_network as train_reference
from ..fileio import stable_hash
from ._cells import cell_key
from ._plan import Cell, SetSpec
from ._sets import BuiltSet, _Inputs


def reference_network(inputs: _Inputs, sets_dir: Path, device: torch.device) -> Reference:
    """The coverage feature space: the evaluation model trained on the whole training split (cached in ``sets_dir``)."""
    cfg = inputs.cfg
    full = Cell("coverage-reference", "eval", SetSpec("full", None), cfg.seed, cfg.evaluate.augment)
    key = stable_hash({"cell": cell_key(full, cfg), "what": "coverage reference"})
    return train_reference(inputs.ds, reference_config(cfg), seed=cfg.seed,
                           path=sets_dir / f"coverage-reference-{key}.pt", key=key, device=device)


def run_coverage_cell(inputs: _Inputs, reference: Reference, built: BuiltSet, device: torch.device) -> dict[str, Any]:
    """Coverage of the test set (all, easy half, hard half) by the set, in the reference feature space."""
    images = built.images.to(device)
    images = inputs.ds.normalize(images) if images.dtype == torch.uint8 else images.float()
    return {"coverage": set_coverage(reference, images).to_dict(), "reference": reference.key}
