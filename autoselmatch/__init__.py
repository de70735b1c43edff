"""autoselmatch: SelMatch dataset distillation with alpha and beta tuned by Optuna.

The public API is importable from the package root; submodules load on first
use, so ``import autoselmatch`` (and the CLI's ``--help``) stays cheap.

    import autoselmatch as asm
    ds = asm.load_dataset("digits")
    model = asm.build_model("convnet", channels=1, num_classes=10, image_size=8, width=32)
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

_EXPORTS = {
    "load_dataset": "data",
    "ImageDataset": "data",
    "dataset_names": "data",
    "build_model": "models",
    "list_models": "models",
    "FlatModel": "models",
    "ModelSpec": "models",
    "RunConfig": "config",
    "load_preset": "config",
    "apply_overrides": "config",
    "AutoSelMatchError": "errors",
    "InvalidArgument": "errors",
    "DataError": "errors",
    "dsa": "augment",
    "simple_augment": "augment",
    "combined_augment": "augment",
    "get_augmentation": "augment",
    "DSA_STRATEGIES": "augment",
    "evaluate_set": "evaluate",
    "train_network": "evaluate",
    "budget_steps": "evaluate",
    "accuracy": "evaluate",
    "EvalResult": "evaluate",
    "coverage": "evaluate",
    "model_coverage": "evaluate",
    "ExpertStore": "experts",
    "train_experts": "experts",
    "load_experts": "experts",
    "expert_manifest": "experts",
    "expert_cache_dir": "experts",
    "distill": "distill",
    "selmatch": "distill",
    "initial_set": "distill",
    "DistillResult": "distill",
    "DistillStep": "distill",
    "TrajectoryMatcher": "distill",
    "SyntheticSet": "synset",
    "select_window": "selection",
    "select": "selection",
    "Window": "selection",
    "max_beta": "selection",
    "sweep_beta": "selection",
    "window_accuracy": "selection",
    "SELECTIONS": "selection",
    "get_scores": "scores",
    "SCORES": "scores",
    "check_score_file": "scores",
    "load_distilled": "export",
    "DistilledSet": "export",
    "export_set": "export",
    "export_study": "export",
    "build_report": "report",
    "ReproducePlan": "reproduce",
    "ReproduceResult": "reproduce",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'autoselmatch' has no attribute {name!r}")
