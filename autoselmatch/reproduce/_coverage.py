"""Coverage: one reference network, its features of the training pool and test set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..fileio import load_torch, save_torch, stable_hash
from ..runtime import LOG
from ._cells import _eval_config, cell_key
from ._plan import Cell, SetSpec
from ._sets import BuiltSet, _Inputs


@dataclass
class _Reference:
    model: torch.nn.Module
    radius: float
    test_features: torch.Tensor  # (M, F)
    difficulty: torch.Tensor  # (M,) EL2N of each test sample, higher = harder
    key: str


def reference_network(inputs: _Inputs, sets_dir: Path, device: torch.device) -> _Reference:
    """The coverage feature space: the evaluation model trained on the whole training split (cached)."""
    from ..evaluate import budget_steps, embed, nearest_distances, train_network

    cfg, ds = inputs.cfg, inputs.ds
    full = Cell("coverage-reference", "eval", SetSpec("full", None), cfg.seed, cfg.evaluate.augment)
    ec = _eval_config(cfg, full)
    key = stable_hash({"cell": cell_key(full, cfg), "what": "coverage reference"})
    path = sets_dir / f"coverage-reference-{key}.pt"
    if path.is_file():
        blob = load_torch(path, map_location=device)
        channels, size, _ = ds.image_shape
        model = ec.model.build(channels=channels, num_classes=ds.num_classes, image_size=size).to(device)
        model.load_state_dict(blob["state"])
        model.eval()
        radius = float(blob["radius"])
    else:
        LOG.info("training the coverage reference network on the whole training split")
        train_x, train_y = ds.split("train")
        train_x = ds.normalize(train_x.to(device))
        steps = budget_steps(ec, n_set=len(train_y), n_full=len(ds.train_labels))
        model = train_network(train_x, train_y.to(device), num_classes=ds.num_classes, cfg=ec, steps=steps,
                              seed=cfg.seed, device=device)
        features = embed(model, train_x)
        radius = float(nearest_distances(features, features, exclude_self=True).mean())
        save_torch({"state": {k: v.cpu() for k, v in model.state_dict().items()}, "radius": radius}, path)
    test_x = ds.normalize(ds.test_images.to(device))
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(test_x[i:i + 1024]).float(), dim=1)
                           for i in range(0, len(test_x), 1024)])  # (M, K)
    onehot = torch.nn.functional.one_hot(ds.test_labels.to(device), ds.num_classes).float()
    difficulty = torch.linalg.vector_norm(probs - onehot, dim=1)  # (M,)
    return _Reference(model, radius, embed(model, test_x), difficulty, key)


def run_coverage_cell(inputs: _Inputs, reference: _Reference, built: BuiltSet, device: torch.device) -> dict[str, Any]:
    """Coverage of the test set (all, easy half, hard half) by the set, in the reference feature space."""
    from ..evaluate import coverage, embed

    images = built.images.to(device)
    images = inputs.ds.normalize(images) if images.dtype == torch.uint8 else images.float()
    syn = embed(reference.model, images)
    result = coverage(syn[:0], reference.test_features, syn, difficulty=reference.difficulty, radius=reference.radius)
    return {"coverage": result.to_dict(), "reference": reference.key}
