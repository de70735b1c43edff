"""Coverage of the test set by a set, easy and hard halves apart (SelMatch Sec. 3.2 and Figure 7).

The feature space is that of one reference network: the evaluation model
(``cfg.evaluate``) trained on the whole training split, with the paper's
full-data budget (or ``reproduce.full_epochs`` epochs when set). Its radius r
is the mean nearest-neighbour distance among the training features; a test
sample is covered when a set sample lies within r of it. The test set's
easy and hard halves are split by that network's EL2N (the norm of softmax
minus one-hot): low = easy.

Cost: the reference network is one full-data training run (as long as the
``full`` row of ``bench reproduce``), then N x N nearest-neighbour distances
for r; both are done once and cached in a file. Each measurement then embeds
the set (n forward passes) and computes M x n distances (M test samples).

    ref = distill_reference(ds, cfg, device)          # trains or loads the reference
    set_coverage(ref, images).easy                    # images: (n, C, H, W) float, normalised
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import EvalConfig, RunConfig, to_dict
from .data import ImageDataset
from .evaluate import CoverageResult, budget_steps, coverage, embed, nearest_distances, train_network
from .fileio import load_torch, save_torch, stable_hash
from .runtime import LOG


@dataclass
class Reference:
    """The coverage feature space.

    Attributes:
        model: The reference network (eval mode).
        radius: r, the mean nearest-neighbour distance among its training-split features.
        test_features: (M, F) features of the test set.
        difficulty: (M,) EL2N of each test sample, higher = harder.
        key: Hash of what the network depends on (its cache file carries it).
    """

    model: torch.nn.Module
    radius: float
    test_features: torch.Tensor
    difficulty: torch.Tensor
    key: str


def reference_config(cfg: RunConfig) -> EvalConfig:
    """The ``evaluate`` section the reference trains with: ``reproduce.full_epochs`` epochs when set."""
    if cfg.reproduce.full_epochs is None:
        return cfg.evaluate
    return dataclasses.replace(cfg.evaluate, epochs=cfg.reproduce.full_epochs, steps=None)


def reference_network(ds: ImageDataset, ec: EvalConfig, *, seed: int, path: Path, key: str,
                      device: torch.device) -> Reference:
    """The reference network trained with ``ec`` on ``ds``'s whole training split, loaded from ``path`` if saved.

    Args:
        ds: The dataset.
        ec: Training settings of the network (model, budget, augmentation).
        seed: Its seed.
        path: Cache file (``{"state", "radius"}``); written after training.
        key: What the file's content depends on (recorded in the result).
        device: Where the network runs.
    """
    channels, size, _ = ds.image_shape
    if path.is_file():
        blob = load_torch(path, map_location=device, what="coverage reference", remedy="delete it to retrain")
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
                              seed=seed, device=device, flip=ds.flip)
        features = embed(model, train_x)
        radius = float(nearest_distances(features, features, exclude_self=True).mean())
        save_torch({"state": {k: v.cpu() for k, v in model.state_dict().items()}, "radius": radius}, path)
    model.eval()
    test_x = ds.normalize(ds.test_images.to(device))
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(test_x[i:i + 1024]).float(), dim=1)
                           for i in range(0, len(test_x), 1024)])  # (M, K)
    onehot = torch.nn.functional.one_hot(ds.test_labels.to(device), ds.num_classes).float()
    difficulty = torch.linalg.vector_norm(probs - onehot, dim=1)  # (M,)
    return Reference(model, radius, embed(model, test_x), difficulty, key)


def distill_reference(ds: ImageDataset, cfg: RunConfig, device: torch.device) -> Reference:
    """The reference network of a distillation's coverage (``distill.coverage_every``), cached in ``cfg.cache_path``.

    Keyed by the dataset, its settings, :func:`reference_config` and ``cfg.seed``:
    every distillation with those shares one network.
    """
    ec = reference_config(cfg)
    data = {k: v for k, v in to_dict(cfg.data).items() if k not in ("root", "download")}
    if cfg.data.flip:  # data.flip came later: the references keyed before it keep their keys
        del data["flip"]
    evaluate = {k: v for k, v in to_dict(ec).items() if k not in ("runs", "stack_runs")}
    key = stable_hash({"dataset": ds.name, "data": data, "evaluate": evaluate, "seed": cfg.seed,
                       "what": "coverage reference"})
    path = cfg.cache_path / "coverage" / f"reference-{ds.name}-{key}.pt"
    return reference_network(ds, ec, seed=cfg.seed, path=path, key=key, device=device)


def set_coverage(reference: Reference, images: torch.Tensor) -> CoverageResult:
    """Coverage of the test set (all, easy half, hard half) by ``images``: float (n, C, H, W), normalised."""
    features = embed(reference.model, images.float())  # (n, F)
    return coverage(features[:0], reference.test_features, features, difficulty=reference.difficulty,
                    radius=reference.radius)


__all__ = ["Reference", "distill_reference", "reference_config", "reference_network", "set_coverage"]
