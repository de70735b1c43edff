"""What every base method's loop shares: the student network, the DSA strategies, and the experts' checks."""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Protocol

import torch
import torch.nn as nn

from ..augment import DSA_STRATEGIES
from ..config import RunConfig
from ..data import ImageDataset
from ..errors import DataError, InvalidArgument


class ExpertSource(Protocol):
    """What the core needs from an expert store (see :mod:`autoselmatch.experts`)."""

    num_experts: int
    num_params: int
    num_epochs: int
    manifest: Mapping[str, Any]

    def sample(self, generator: torch.Generator, *, max_start_epoch: int, expert_epochs: int,
               min_start_epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]: ...


def student_network(cfg: RunConfig, ds: ImageDataset) -> nn.Module:
    """The experts' architecture (``cfg.experts.model``) for ``ds``, as a student (see :func:`batch_stats_only`)."""
    channels, size, _ = ds.image_shape
    return batch_stats_only(cfg.experts.model.build(channels=channels, num_classes=ds.num_classes, image_size=size))


def batch_stats_only(module: nn.Module) -> nn.Module:
    """Make every BatchNorm of ``module`` use batch statistics only, and put it in training mode.

    Running statistics are removed (not tracked, no buffers): the student
    only ever runs in training mode, and without buffer updates it is a
    pure function of theta, so recomputed segments and replays see the same
    network and nothing is written per step.
    """
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.track_running_stats = False
            layer.running_mean = layer.running_var = layer.num_batches_tracked = None
    return module.train()


def dsa_strategies(cfg: RunConfig) -> tuple[str, ...]:
    """The DSA strategies of ``cfg.distill`` (empty when ``distill.dsa`` is off)."""
    if not cfg.distill.dsa:
        return ()
    strategies = tuple(s for s in cfg.distill.dsa_strategies.split("_") if s)
    unknown = [s for s in strategies if s not in DSA_STRATEGIES]
    if unknown or not strategies:
        raise InvalidArgument(f"distill.dsa_strategies must join names from {', '.join(DSA_STRATEGIES)} with '_', "
                              f"got {cfg.distill.dsa_strategies!r}")
    return strategies


def check_experts(experts: ExpertSource | None, ds: ImageDataset, cfg: RunConfig, num_params: int) -> None:
    """Refuse experts that are missing, were made for another dataset or model, or are too short."""
    make = f"make them with `autoselmatch experts --dataset {ds.name}` (same preset and --set options)"
    if experts is None:
        raise DataError(f"no expert trajectories for {ds.name}; {make}")
    key = experts.manifest.get("key", {})
    trained_on = key.get("dataset", {}).get("name")
    if trained_on != ds.name:
        raise DataError(f"experts were trained on {trained_on!r}, not {ds.name!r}; {make}")
    student = {"name": cfg.experts.model.name, "options": dict(sorted(cfg.experts.model.options.items()))}
    if _plain(key.get("model")) != _plain(student):
        raise DataError(f"experts were trained with model {key.get('model')}, but the student is {student}; {make}")
    if experts.num_params != num_params:
        raise DataError(f"experts have {experts.num_params} parameters but the student {cfg.experts.model.name} has "
                        f"{num_params}; they belong to another model; {make}")
    if getattr(experts, "zca", None) is not None:
        raise InvalidArgument("experts trained with ZCA whitening cannot be matched: synthetic sets live in the "
                              "normalised space; use experts with experts.zca = false")
    needed = cfg.distill.max_start_epoch + cfg.distill.expert_epochs
    if needed > experts.num_epochs:
        every = key.get("snapshot_every")  # SGD steps between stored snapshots; absent: one per epoch
        stored, epochs = f"{experts.num_epochs} epochs", needed
        if every is not None:
            steps = math.ceil(len(ds.split("train")[1]) / key["optimizer"]["batch_size"])  # per epoch
            stored = f"{experts.num_epochs} snapshots (every {every} SGD steps)"
            epochs = math.ceil(needed * every / steps)
        raise InvalidArgument(f"distill.max_start_epoch + distill.expert_epochs = {needed} exceeds the "
                              f"{stored} stored per expert; lower them or retrain with "
                              f"`autoselmatch experts --dataset {ds.name} --epochs {epochs}`")


def _plain(model: Any) -> Any:
    """A model spec in a comparable form (JSON round trip: tuples and lists compare equal)."""
    return json.loads(json.dumps(model, sort_keys=True, default=str))
