"""Coverage cells, in the feature space of :func:`autoselmatch.coverage.distill_reference` (shared with distillations)."""

from __future__ import annotations

from typing import Any

import torch

from ..coverage import Reference, set_coverage
from ._sets import BuiltSet, _Inputs


def run_coverage_cell(inputs: _Inputs, reference: Reference, built: BuiltSet, device: torch.device) -> dict[str, Any]:
    """Coverage of the test set (all, easy half, hard half) by the set, in the reference feature space."""
    images = built.images.to(device)
    images = inputs.ds.normalize(images) if images.dtype == torch.uint8 else images.float()
    return {"coverage": set_coverage(reference, images).to_dict(), "reference": reference.key}
