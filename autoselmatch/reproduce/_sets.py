"""Building sets, one function per method in :data:`METHODS`, cached in the set-file format of ``evaluate``."""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import RunConfig, key_dict, to_dict
from ..data import ImageDataset
from ..distill import METHODS as BASES, method_key, selmatch
from ..fileio import file_lock, stable_hash
from ..registry import Registry
from ..runtime import LOG
from ..selection import select_count
from ..synset import SyntheticSet
from ._plan import BASE_SETS, SetSpec


class _Inputs:
    """The dataset and, loaded on first use, its difficulty scores and expert trajectories."""

    def __init__(self, ds: ImageDataset, cfg: RunConfig) -> None:
        self.ds, self.cfg = ds, cfg

    @functools.cached_property
    def scores(self) -> torch.Tensor:
        from ..scores import get_scores

        return get_scores(self.ds, self.cfg.scores, cache_dir=self.cfg.cache_path, seed=self.cfg.seed,
                          run=self.cfg)

    @functools.cached_property
    def experts(self) -> Any:
        from ..experts import train_experts

        return train_experts(self.ds, self.cfg)


@dataclass(frozen=True)
class BuiltSet:
    """A set ready to evaluate: uint8 pixels or normalised floats (n, C, H, W), labels (n,), D_distill mask (n,)."""

    images: torch.Tensor
    labels: torch.Tensor
    distill_mask: torch.Tensor
    settings: dict[str, Any]


SetBuilder = Callable[[_Inputs, SetSpec, Path], BuiltSet]
METHODS: Registry[SetBuilder] = Registry("reproduce method")


def _selected(inputs: _Inputs, index: torch.Tensor, settings: dict[str, Any]) -> BuiltSet:
    ds = inputs.ds
    index = index.to(ds.device)
    return BuiltSet(ds.train_images[index].cpu(), ds.train_labels[index].cpu(),
                    torch.zeros(len(index), dtype=torch.bool), {**settings, "indices": index.cpu().tolist()})


@METHODS.register("random")
def random_set(inputs: _Inputs, spec: SetSpec, workdir: Path) -> BuiltSet:
    """Class-balanced random real samples drawn with ``cfg.seed`` (MTT's initial set)."""
    from ..selection import select

    ds = inputs.ds
    index = select("random", None, ds.train_labels, ds.train_index, ipc=spec.ipc, seed=inputs.cfg.seed)
    return _selected(inputs, index, {"method": "random"})


@METHODS.register("hardest")
def hardest_set(inputs: _Inputs, spec: SetSpec, workdir: Path) -> BuiltSet:
    """The IPC hardest samples of each class by the difficulty score."""
    from ..selection import select

    ds = inputs.ds
    index = select("hardest", inputs.scores, ds.train_labels, ds.train_index, ipc=spec.ipc)
    return _selected(inputs, index, {"method": "hardest", "score": inputs.cfg.scores.name})


@METHODS.register("window")
def window_set(inputs: _Inputs, spec: SetSpec, workdir: Path) -> BuiltSet:
    """The selection-only window at beta."""
    from ..selection import select

    ds = inputs.ds
    index = select("window", inputs.scores, ds.train_labels, ds.train_index, ipc=spec.ipc, beta=spec.beta)
    return _selected(inputs, index, {"method": "window", "beta": spec.beta, "score": inputs.cfg.scores.name})


@dataclass(frozen=True)
class Recipe:
    """How a distilled set is made: init (``window``/``random``), mode (``selmatch``/``merge``), alpha, beta.

    Methods that end up with the same recipe (e.g. ``selmatch`` and ``mtt-init``
    when the tuned alpha is 1) share one distillation.
    """

    init: str
    mode: str
    alpha: float
    beta: float


def distill_recipe(spec: SetSpec) -> Recipe | None:
    """The recipe of a distilled method, ``None`` for selection and ``full``."""
    if spec.name == "mtt":
        return Recipe("random", "selmatch", 1.0, 0.0)
    if spec.name == "noise":
        return Recipe("noise", "selmatch", 1.0, 0.0)
    if spec.name == "mtt-init":
        return Recipe("window", "selmatch", 1.0, spec.beta)
    if spec.name == "partial":
        return Recipe("random", "selmatch", spec.alpha, 0.0)
    if spec.name in ("merge", "selmatch"):  # at alpha 1 merge distils the whole set, as selmatch does
        return Recipe("window", spec.name if spec.alpha < 1.0 else "selmatch", spec.alpha, spec.beta)
    return None


def distilled_set(inputs: _Inputs, spec: SetSpec, workdir: Path) -> BuiltSet:
    """A distilled set: :func:`autoselmatch.distill.selmatch` per the spec's recipe, checkpoints in ``workdir``.

    Builds ``mtt``, ``mtt-init``, ``merge``, ``selmatch``, the ablation's
    ``partial`` and SRe2L's ``noise``; :func:`distill_recipe` tells them apart; the
    base method is ``distill.method`` (``mtt`` is its alpha-1 random-init baseline
    whatever the method). An interrupted distillation resumes from its checkpoint.
    """
    recipe = distill_recipe(spec)
    cfg = _distill_config(inputs, spec.ipc, recipe)
    scores = inputs.scores if recipe.init == "window" else None
    experts = inputs.experts if recipe.alpha > 0 and BASES.get(cfg.distill.method).needs == "experts" else None
    result = selmatch(inputs.ds, cfg, ipc=spec.ipc, alpha=recipe.alpha, beta=recipe.beta, scores=scores,
                      experts=experts, checkpoint_dir=workdir, resume=True)
    settings = {"method": spec.name, **result.settings, "batch_syn": cfg.distill.batch_syn,
                "iterations": result.iterations, "eta": result.eta,
                "final_loss": result.loss_history[-1] if result.loss_history else None,
                "loss_ratio": result.loss_ratio, "activity": result.activity}
    if BASES.get(cfg.distill.method).evaluation == "hard-labels":  # else `evaluate FILE` needs it to find the teacher
        settings.pop("config", None)
    return BuiltSet(result.images, result.labels, result.distill_mask, settings)


def _distill_config(inputs: _Inputs, ipc: int, recipe: Recipe) -> RunConfig:
    """``cfg`` with the recipe's init and mode, and a student batch no larger than the rows that train students."""
    cfg = inputs.cfg
    k = inputs.ds.num_classes
    rows = k * ipc if recipe.mode == "selmatch" else k * (ipc - select_count(ipc, recipe.alpha))
    batch = min(cfg.distill.batch_syn, max(rows, 1))
    distill = dataclasses.replace(cfg.distill, init=recipe.init, mode=recipe.mode, batch_syn=batch)
    return dataclasses.replace(cfg, distill=distill)


for _name in ("mtt", "mtt-init", "merge", "selmatch"):  # one builder; :func:`distill_recipe` tells them apart
    METHODS.register(_name)(distilled_set)


@METHODS.register("full")
def full_set(inputs: _Inputs, spec: SetSpec, workdir: Path) -> BuiltSet:
    """The whole training split (validation samples excluded)."""
    images, labels = inputs.ds.split("train")
    return BuiltSet(images.cpu(), labels.cpu(), torch.zeros(len(labels), dtype=torch.bool), {"method": "full"})


def _builder(name: str) -> SetBuilder:
    if name == "partial" or name in BASE_SETS:  # the ablation's and the base tables' sets, not methods
        return distilled_set
    return METHODS.get(name)


def set_key(spec: SetSpec, cfg: RunConfig) -> str:
    """Hash of everything a set depends on (its cache file name carries it)."""
    data = {k: v for k, v in key_dict("data", cfg.data).items() if k not in ("root", "download")}
    if spec.source is not None:  # made elsewhere: its files decide it
        return stable_hash({"name": spec.name, "ipc": spec.ipc, "sha256": spec.source_sha256, "data": data})
    recipe = distill_recipe(spec)
    if recipe is None:
        parts: dict[str, Any] = {"name": spec.name, "ipc": spec.ipc, "beta": spec.beta, "data": data, "seed": cfg.seed}
        if spec.name in ("hardest", "window"):
            parts["scores"] = to_dict(cfg.scores)
        return stable_hash(parts)
    parts = {"recipe": dataclasses.asdict(recipe), "ipc": spec.ipc, "data": data, "seed": cfg.seed, **method_key(cfg)}
    if recipe.init == "window":
        parts["scores"] = to_dict(cfg.scores)
    return stable_hash(parts)


def set_path(spec: SetSpec, cfg: RunConfig, sets_dir: Path) -> Path:
    """Where the set of ``spec`` is cached: ``sets_dir/{kind}-ipc{N}-{set_key}.pt`` (methods with one recipe
    share the ``distilled`` file)."""
    kind = spec.name if distill_recipe(spec) is None else "distilled"
    stem = f"{kind if spec.ipc is None else f'{kind}-ipc{spec.ipc}'}-{set_key(spec, cfg)}"
    return sets_dir / f"{stem}.pt"


def _lock_of(path: Path) -> Path:
    """The lock file that guards the making of the set file ``path``."""
    return path.with_name(f".{path.stem}.lock")


def being_built(spec: SetSpec, cfg: RunConfig, sets_dir: Path) -> bool:
    """Whether another process is making the set of ``spec`` in ``sets_dir`` now: its file is not saved yet
    and its lock (:func:`load_or_build`) is held."""
    path = set_path(spec, cfg, sets_dir)
    if path.is_file() or not sets_dir.is_dir():
        return False
    with file_lock(_lock_of(path), blocking=False) as free:
        return not free


def load_or_build(inputs: _Inputs, spec: SetSpec, sets_dir: Path) -> BuiltSet:
    """The cached set of ``spec`` from ``sets_dir``, or build and save it (a set file: :mod:`autoselmatch.synset`).

    Processes that share ``sets_dir`` (the same command started twice) take turns on a lock per set: the
    first builds it, the others wait and load its file instead of distilling it again beside it.
    """
    path = set_path(spec, inputs.cfg, sets_dir)
    sets_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(_lock_of(path)):
        if path.is_file():
            cached = SyntheticSet.load(path)
            return BuiltSet(cached.images, cached.labels, cached.distill_mask, cached.settings)
        LOG.info("building set %s", spec.label)
        started = time.perf_counter()
        built = _builder(spec.name)(inputs, spec, sets_dir / path.stem)
        settings = {**built.settings, "ipc": spec.ipc, "alpha": spec.alpha, "beta": spec.beta,
                    "seconds": time.perf_counter() - started}
        if spec.name != "full":  # the full split is the dataset itself; not worth a copy on disk
            ds = inputs.ds
            SyntheticSet(built.images, built.labels, built.distill_mask, dataset=ds.name, classes=tuple(ds.classes),
                         mean=tuple(ds.mean), std=tuple(ds.std), settings=settings).save(path)
    return dataclasses.replace(built, settings=settings)
