"""The command that reruns a cell (or the whole run)."""

from __future__ import annotations

import shlex
from typing import Any

from ..config import load_preset, to_dict, toml_value
from ._plan import ReproducePlan


def rerun_command(plan: ReproducePlan, *, only: str | None = None) -> str:
    """The ``autoselmatch bench reproduce`` command line of ``plan`` (shell-quoted); ``--only`` if given.

    Settings that differ from the preset become ``--set`` options (a value
    the preset sets and the run unsets cannot be written as ``--set`` and is
    left out).
    """
    cfg = plan.cfg
    preset = plan.preset or cfg.preset
    base = load_preset(preset)
    argv = ["autoselmatch"]
    if cfg.device != "auto":
        argv += ["--device", cfg.device]
    if cfg.seed != base.seed:
        argv += ["--seed", str(cfg.seed)]
    argv += ["bench", "reproduce", "--dataset", cfg.data.name, "--preset", preset]
    if plan.ipcs:
        argv += ["--ipc", ",".join(plan.ipcs)]
    if plan.methods:
        argv += ["--methods", ",".join(plan.methods)]
    if cfg.distill.method != base.distill.method:
        argv += ["--method", cfg.distill.method]
    if plan.models:
        argv += ["--models", ",".join(plan.models)]
    argv += ["--runs", str(plan.runs), "--out", str(plan.out)]
    if cfg.cache_dir != base.cache_dir:
        argv += ["--cache-dir", cfg.cache_dir]
    if cfg.data.root is not None:
        argv += ["--data-root", cfg.data.root]
    if cfg.data.download:
        argv += ["--download"]
    if cfg.scores.file is not None:
        argv += ["--scores-file", cfg.scores.file]
    if plan.alphas:
        argv += ["--alpha", ",".join(f"{a:g}" for a in plan.alphas)]
    if plan.betas:
        argv += ["--beta", ",".join(f"{b:g}" for b in plan.betas)]
    if plan.storage is not None:
        argv += ["--storage", plan.storage]
    if plan.study_prefix is not None:
        argv += ["--study-prefix", plan.study_prefix]
    if not plan.ablation:
        argv += ["--no-ablation"]
    if not plan.coverage:
        argv += ["--no-coverage"]
    for name, path in plan.extras:
        argv += ["--extra", f"{name}={path}"]
    for key, value in _changed_settings(to_dict(base), to_dict(cfg)):
        argv += ["--set", f"{key}={toml_value(value)}"]
    if only is not None:
        argv += ["--only", only]
    return shlex.join(argv)


_FLAG_SETTINGS = frozenset({"preset", "seed", "device", "cache_dir", "data.name", "data.root", "data.download",
                            "scores.file", "distill.method"})


def _changed_settings(base: dict[str, Any], cfg: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Dotted keys whose value in ``cfg`` differs from ``base`` (model specs compare as a whole)."""
    changed = []
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if dotted in _FLAG_SETTINGS or value == base.get(key) or value is None:
            continue
        if isinstance(value, dict) and key != "model":
            changed += _changed_settings(base.get(key) or {}, value, f"{dotted}.")
        else:
            changed.append((dotted, value))
    return changed
