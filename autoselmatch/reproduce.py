"""Reproduce the paper's tables on any dataset: every method at the same IPC, one protocol.

One run of :func:`reproduce` fills a folder with the main table (SelMatch
Table 1 style: test accuracy per method and IPC), the ablation (Table 3:
selection-based init, partial update and combined augmentation on and off)
and the coverage of each set on the easy and hard halves of the test set
(Figure 1). Every number comes from a *cell*: one network trained from
scratch on one set with one seed, or one coverage measurement. A cell is
saved as its own JSON file (with its seed, wall time and the shell command
that reruns it alone) and is never recomputed once it is there, so an
interrupted run resumes where it stopped.

Methods (all at the same IPC; evaluated by the ``evaluate`` section of the
config on the **test** split, one network per seed):

==========  ================================================================
random      class-balanced random real samples (the seed ``cfg.seed`` draw,
            which is also MTT's initial set)
hardest     the IPC hardest samples of each class (the window at beta 0)
window      the selection-only window at beta (alpha 0)
mtt         distillation of the whole random set (alpha 1, random init)
mtt-init    distillation of the whole window (alpha 1, window init at beta)
merge       SelMatch's "merge" ablation: D_distill distilled alone, then
            concatenated with D_select (alpha, beta)
selmatch    SelMatch (window init at beta, partial update of alpha)
full        the whole training split (one row; ``reproduce.full_epochs``)
==========  ================================================================

alpha and beta per IPC are given, or read from finished tune studies
``{prefix}-ipc{N}-beta|alpha`` in a storage, or tuned into ``OUT/studies.db``
with :func:`autoselmatch.tune.tune`; each cell records where they came from.
Distilled sets are made once per (method, IPC) with seed ``cfg.seed`` and
cached in ``OUT/sets/`` (in the set-file format ``autoselmatch evaluate``
reads); seeds vary the evaluation network only. When a set's D_syn (or
D_distill in ``merge``) is smaller than ``distill.batch_syn``, the student
batch is the whole set (recorded in the set's settings).

Coverage is measured in the feature space of one reference network (the
evaluation model trained on the whole training split with the ``full``
budget, seed ``cfg.seed``); the test set is split into easy and hard halves
by that network's EL2N on each test sample, ``||softmax - onehot||_2``.

    plan = ReproducePlan(cfg=load_preset("digits"), ipcs=("5%", "10%"), out=Path("bench-out"),
                         alphas=(0.5,), betas=(0.2,))
    result = reproduce(plan)
    print(result.table_md)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .config import REPRODUCE_METHODS, RunConfig, load_preset, to_dict, toml_value
from .data import ImageDataset
from .errors import DataError, InvalidArgument
from .fileio import load_torch, save_json, save_text, save_torch, stable_hash
from .registry import Registry
from .runtime import LOG, progress, resolve_device
from .selection import select_count
from .storage import close_storage, open_existing_storage, safe_name

#: Sets of the ablation only: random init with the partial update (selection init off, partial update on).
ABLATION_SETS = ("mtt", "mtt-init", "partial", "selmatch")
#: (selection-based init, partial update) -> the set that has them (paper Table 3).
ABLATION_GRID = {(False, False): "mtt", (True, False): "mtt-init", (False, True): "partial", (True, True): "selmatch"}
NEEDS_ALPHA = frozenset({"merge", "selmatch", "partial"})
NEEDS_BETA = frozenset({"window", "mtt-init", "merge", "selmatch"})
DEFAULT_PREFIX = "reproduce"

# --------------------------------------------------------------------------------------------
# The plan and its pieces
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReproducePlan:
    """What one ``bench reproduce`` run computes.

    Args:
        cfg: Run settings; ``evaluate`` is the protocol of every cell, ``reproduce``
            the defaults (ratios, methods, full-data epochs, ablation IPC).
        out: Output folder (cells, sets, tables).
        ipcs: IPCs as integers (``"60"``) or shares of each class of the whole
            training split (``"1%"``); empty: ``cfg.reproduce.ratios``.
        methods: Methods of the main table (empty: ``cfg.reproduce.methods``).
        runs: Seeds per (method, IPC): ``cfg.seed, cfg.seed + 1, ...``.
        alphas: Given alpha: one value for every IPC, or one per IPC in the
            order of ``ipcs`` (empty: read from ``storage`` or tuned).
        betas: Given beta, same rules.
        storage: Optuna storage URL holding finished tune studies (read only).
        study_prefix: Studies are ``{prefix}-ipc{N}-beta|alpha`` (default: the
            dataset name for ``storage``, ``reproduce`` for the studies tuned into OUT).
        ablation: Also compute the ablation table.
        coverage: Also compute the coverage table and figure.
        only: Compute just this cell (recomputed even if it is saved).
        preset: The preset as given on the command line (for the rerun commands;
            default ``cfg.preset``).
    """

    cfg: RunConfig
    out: Path
    ipcs: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    runs: int = 3
    alphas: tuple[float, ...] = ()
    betas: tuple[float, ...] = ()
    storage: str | None = None
    study_prefix: str | None = None
    ablation: bool = True
    coverage: bool = True
    only: str | None = None
    preset: str | None = None


@dataclass(frozen=True)
class Knobs:
    """alpha and beta of one IPC, and where each came from (``given``, a study, or ``tuned``)."""

    ipc: int
    alpha: float | None = None
    beta: float | None = None
    alpha_source: str | None = None
    beta_source: str | None = None


@dataclass(frozen=True)
class SetSpec:
    """One set to build: a method (or ``partial``) at one IPC with its knobs (``ipc`` None: ``full``)."""

    name: str
    ipc: int | None
    knobs: Knobs | None = None

    @property
    def alpha(self) -> float | None:
        return self.knobs.alpha if self.knobs is not None and self.name in NEEDS_ALPHA else None

    @property
    def beta(self) -> float | None:
        return self.knobs.beta if self.knobs is not None and self.name in NEEDS_BETA else None

    @property
    def label(self) -> str:
        return self.name if self.ipc is None else f"{self.name}-ipc{self.ipc}"


@dataclass(frozen=True)
class Cell:
    """One saved number: an evaluation (``kind`` ``eval``) or a coverage measurement (``coverage``)."""

    id: str
    kind: str
    set: SetSpec
    seed: int
    augment: str | None = None


@dataclass
class ReproduceResult:
    """What :func:`reproduce` wrote, and how much it computed.

    Attributes:
        out: The output folder.
        table_md: The main table in Markdown.
        files: Name -> path of every output file.
        computed: Cells computed by this call.
        reused: Cells found finished on disk.
        results: The content of ``results.json``.
    """

    out: Path
    table_md: str
    files: dict[str, Path]
    computed: int
    reused: int
    results: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Up-front checks
# --------------------------------------------------------------------------------------------


def parse_ipc_tokens(text: str) -> tuple[str, ...]:
    """``"60,300"`` or ``"1%,5%"`` -> checked tokens; each is a positive integer or a percentage."""
    tokens = tuple(t.strip() for t in text.split(","))
    if not tokens or any(not t for t in tokens):
        raise InvalidArgument(f"--ipc must be a comma list of integers or percentages such as 60,300 or 1%,5%, got {text!r}")
    for token in tokens:
        _token_value(token)
    return tokens


def _token_value(token: str) -> int | float:
    """An IPC (int) or a ratio (float in (0, 1]) from one ``--ipc`` token."""
    if token.endswith("%"):
        try:
            percent = float(token[:-1])
        except ValueError:
            raise InvalidArgument(f"--ipc ratio must be a number followed by %, got {token!r}") from None
        if not 0.0 < percent <= 100.0:
            raise InvalidArgument(f"--ipc ratio must be in (0%, 100%], got {token}")
        return percent / 100.0
    try:
        value = int(token)
    except ValueError:
        raise InvalidArgument(f"--ipc values must be integers or percentages such as 60 or 1%, got {token!r}") from None
    if value < 1:
        raise InvalidArgument(f"--ipc values must be >= 1, got {value}")
    return value


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    """``"0.6,0.4"`` -> (0.6, 0.4), each in [0, 1]."""
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise InvalidArgument(f"{option} must be a number in [0, 1] or a comma list of them, got {text!r}") from None
        if not 0.0 <= value <= 1.0:
            raise InvalidArgument(f"{option} values must be in [0, 1], got {value}")
        values.append(value)
    return tuple(values)


def parse_methods(text: str) -> tuple[str, ...]:
    """``"random,selmatch"`` -> checked method names (an unknown one lists the known ones)."""
    names = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    if not names:
        raise InvalidArgument(f"--methods must name at least one of: {', '.join(REPRODUCE_METHODS)}")
    for name in names:
        METHODS.get(name)
    return names


def _check_plan(plan: ReproducePlan) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Every argument check that needs no data; returns (ipc tokens, methods)."""
    tokens = plan.ipcs or tuple(f"{100 * r:g}%" for r in plan.cfg.reproduce.ratios)
    for token in tokens:
        _token_value(token)
    methods = plan.methods or plan.cfg.reproduce.methods
    for name in methods:
        METHODS.get(name)
    if plan.runs < 1:
        raise InvalidArgument(f"--runs must be >= 1, got {plan.runs}")
    for option, values in (("--alpha", plan.alphas), ("--beta", plan.betas)):
        if len(values) not in (0, 1, len(tokens)):
            raise InvalidArgument(f"{option} takes one value or one per IPC ({len(tokens)}), got {len(values)}")
        for value in values:
            if not 0.0 <= value <= 1.0:
                raise InvalidArgument(f"{option} values must be in [0, 1], got {value}")
    return tokens, tuple(dict.fromkeys(methods))


def resolve_ipcs(tokens: Sequence[str], ds: ImageDataset) -> list[int]:
    """IPCs of ``tokens`` on ``ds`` (ratios: round(ratio * training samples per class)), checked against the pool."""
    per_class = len(ds.train_labels) / ds.num_classes
    smallest = int(ds.class_counts().min())
    ipcs = []
    for token in tokens:
        value = _token_value(token)
        ipc = max(1, round(value * per_class)) if isinstance(value, float) else value
        if ipc > smallest:
            raise InvalidArgument(f"--ipc {token} is {ipc} images per class, more than the smallest class of "
                                  f"{ds.name}'s training pool ({smallest}); use at most {smallest}")
        ipcs.append(ipc)
    return ipcs


# --------------------------------------------------------------------------------------------
# alpha and beta
# --------------------------------------------------------------------------------------------


def given_knobs(ipcs: Sequence[int], alphas: Sequence[float], betas: Sequence[float]) -> dict[int, Knobs]:
    """Knobs from ``--alpha``/``--beta`` (one value, or one per IPC in the order of ``ipcs``)."""

    def pick(values: Sequence[float], i: int) -> float | None:
        if not values:
            return None
        return values[0] if len(values) == 1 else values[i]

    knobs = {}
    for i, ipc in enumerate(ipcs):
        alpha, beta = pick(alphas, i), pick(betas, i)
        knobs[ipc] = Knobs(ipc, alpha, beta, "given" if alpha is not None else None,
                           "given" if beta is not None else None)
    return knobs


def study_knobs(storage: str, prefix: str, ipcs: Sequence[int]) -> dict[int, Knobs]:
    """alpha and beta of each IPC from finished tune studies (the alpha study's ``final`` record), read only."""
    import optuna

    spec, source = open_existing_storage(storage)
    try:
        names = set(optuna.get_all_study_names(source))
        knobs = {}
        for ipc in ipcs:
            alpha_name, beta_name = f"{prefix}-ipc{ipc}-alpha", f"{prefix}-ipc{ipc}-beta"
            if alpha_name not in names:
                raise DataError(f"storage {spec.display()} has no study {alpha_name}; tune ipc={ipc} first, pass "
                                f"--alpha/--beta, or leave out --storage to tune into the output folder")
            final = optuna.load_study(study_name=alpha_name, storage=source).user_attrs.get("final")
            if not isinstance(final, dict) or "alpha" not in final or "beta" not in final:
                raise DataError(f"study {alpha_name} in {spec.display()} is not finished (no final set yet); "
                                f"finish the tune run, pass --alpha/--beta, or leave out --storage")
            knobs[ipc] = Knobs(ipc, float(final["alpha"]), float(final["beta"]),
                               f"study {alpha_name} ({spec.display()})", f"study {beta_name} ({spec.display()})")
    finally:
        close_storage(source)
    return knobs


def resolve_knobs(plan: ReproducePlan, ipcs: Sequence[int], needed: bool) -> dict[int, Knobs]:
    """Given values first; the rest from ``plan.storage``, else tuned into ``OUT/studies.db``."""
    knobs = given_knobs(ipcs, plan.alphas, plan.betas)
    missing = [ipc for ipc in ipcs if knobs[ipc].alpha is None or knobs[ipc].beta is None]
    if not needed or not missing:
        return knobs
    if plan.storage is not None:
        prefix = plan.study_prefix or safe_name(plan.cfg.data.name)
        found = study_knobs(plan.storage, prefix, missing)
    else:
        found = _tuned_knobs(plan, missing)
    for ipc in missing:
        have, new = knobs[ipc], found[ipc]
        knobs[ipc] = Knobs(ipc, have.alpha if have.alpha is not None else new.alpha,
                           have.beta if have.beta is not None else new.beta,
                           have.alpha_source or new.alpha_source, have.beta_source or new.beta_source)
    return knobs


def _tuned_knobs(plan: ReproducePlan, ipcs: Sequence[int]) -> dict[int, Knobs]:
    """Run (or resume) ``autoselmatch tune`` into ``OUT/studies.db`` and read its optima."""
    from .tune import tune

    storage = f"sqlite:///{(plan.out / 'studies.db').resolve()}"
    prefix = plan.study_prefix or DEFAULT_PREFIX
    LOG.info("no alpha/beta given for ipc %s: tuning into %s (prefix %s)", ",".join(map(str, ipcs)), storage, prefix)
    result = tune(plan.cfg, list(ipcs), storage=storage, study_prefix=prefix)
    if not result.complete:
        raise DataError(f"tuning into {storage} did not finish; rerun the same command to resume it")
    knobs = study_knobs(storage, prefix, ipcs)
    return {ipc: dataclasses.replace(k, alpha_source=f"tuned: {k.alpha_source}", beta_source=f"tuned: {k.beta_source}")
            for ipc, k in knobs.items()}


# --------------------------------------------------------------------------------------------
# Building sets (one function per method)
# --------------------------------------------------------------------------------------------


class _Inputs:
    """The dataset and, loaded on first use, its difficulty scores and expert trajectories."""

    def __init__(self, ds: ImageDataset, cfg: RunConfig) -> None:
        self.ds, self.cfg = ds, cfg

    @functools.cached_property
    def scores(self) -> torch.Tensor:
        from .scores import get_scores

        return get_scores(self.ds, self.cfg.scores, cache_dir=self.cfg.cache_path, seed=self.cfg.seed)

    @functools.cached_property
    def experts(self) -> Any:
        from .experts import train_experts

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
    from .selection import select

    ds = inputs.ds
    index = select("random", None, ds.train_labels, ds.train_index, ipc=spec.ipc, seed=inputs.cfg.seed)
    return _selected(inputs, index, {"method": "random"})


@METHODS.register("hardest")
def hardest_set(inputs: _Inputs, spec: SetSpec, workdir: Path) -> BuiltSet:
    """The IPC hardest samples of each class by the difficulty score."""
    from .selection import select

    ds = inputs.ds
    index = select("hardest", inputs.scores, ds.train_labels, ds.train_index, ipc=spec.ipc)
    return _selected(inputs, index, {"method": "hardest", "score": inputs.cfg.scores.name})


@METHODS.register("window")
def window_set(inputs: _Inputs, spec: SetSpec, workdir: Path) -> BuiltSet:
    """The selection-only window at beta."""
    from .selection import select

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
    if spec.name == "mtt-init":
        return Recipe("window", "selmatch", 1.0, spec.beta)
    if spec.name == "partial":
        return Recipe("random", "selmatch", spec.alpha, 0.0)
    if spec.name in ("merge", "selmatch"):  # at alpha 1 merge distils the whole set, as selmatch does
        return Recipe("window", spec.name if spec.alpha < 1.0 else "selmatch", spec.alpha, spec.beta)
    return None


def distilled_set(inputs: _Inputs, spec: SetSpec, workdir: Path) -> BuiltSet:
    """A distilled set: :func:`autoselmatch.distill.selmatch` per the spec's recipe, checkpoints in ``workdir``.

    Builds ``mtt``, ``mtt-init``, ``merge``, ``selmatch`` and the ablation's
    ``partial``; :func:`distill_recipe` tells them apart. An interrupted
    distillation resumes from its checkpoint.
    """
    from .distill import selmatch

    recipe = distill_recipe(spec)
    cfg = _distill_config(inputs, spec.ipc, recipe)
    scores = inputs.scores if recipe.init == "window" else None
    result = selmatch(inputs.ds, cfg, ipc=spec.ipc, alpha=recipe.alpha, beta=recipe.beta, scores=scores,
                      experts=inputs.experts if recipe.alpha > 0 else None, checkpoint_dir=workdir, resume=True)
    settings = {"method": spec.name, **result.settings, "batch_syn": cfg.distill.batch_syn,
                "iterations": result.iterations, "eta": result.eta,
                "final_loss": result.loss_history[-1] if result.loss_history else None}
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
    return distilled_set if name == "partial" else METHODS.get(name)  # partial: ablation only, not a method


def set_key(spec: SetSpec, cfg: RunConfig) -> str:
    """Hash of everything a set depends on (its cache file name carries it)."""
    data = {k: v for k, v in to_dict(cfg.data).items() if k not in ("root", "download")}
    recipe = distill_recipe(spec)
    if recipe is None:
        parts: dict[str, Any] = {"name": spec.name, "ipc": spec.ipc, "beta": spec.beta, "data": data, "seed": cfg.seed}
        if spec.name in ("hardest", "window"):
            parts["scores"] = to_dict(cfg.scores)
        return stable_hash(parts)
    parts = {"recipe": dataclasses.asdict(recipe), "ipc": spec.ipc, "data": data, "seed": cfg.seed,
             "experts": to_dict(cfg.experts), "distill": to_dict(cfg.distill)}
    if recipe.init == "window":
        parts["scores"] = to_dict(cfg.scores)
    return stable_hash(parts)


def load_or_build(inputs: _Inputs, spec: SetSpec, sets_dir: Path) -> BuiltSet:
    """The cached set of ``spec`` from ``sets_dir``, or build and save it (set-file format of ``evaluate``)."""
    kind = spec.name if distill_recipe(spec) is None else "distilled"  # methods with one recipe share the file
    stem = f"{kind if spec.ipc is None else f'{kind}-ipc{spec.ipc}'}-{set_key(spec, inputs.cfg)}"
    path = sets_dir / f"{stem}.pt"
    if path.is_file():
        blob = load_torch(path)
        return BuiltSet(blob["images"], blob["labels"], blob["distill_mask"], json.loads(blob["settings"]))
    LOG.info("building set %s", spec.label)
    started = time.perf_counter()
    built = _builder(spec.name)(inputs, spec, sets_dir / stem)
    settings = {**built.settings, "ipc": spec.ipc, "alpha": spec.alpha, "beta": spec.beta,
                "seconds": time.perf_counter() - started}
    if spec.name != "full":  # the full split is the dataset itself; not worth a copy on disk
        save_torch({"images": built.images, "labels": built.labels, "distill_mask": built.distill_mask,
                    "dataset": inputs.ds.name, "settings": json.dumps(settings, sort_keys=True, default=str)}, path)
    return dataclasses.replace(built, settings=settings)


# --------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------


def eval_cell_id(spec: SetSpec, seed: int, augment: str, default_augment: str) -> str:
    """``{set}-ipc{N}-s{seed}``; ``{set}-ipc{N}-{augment}-s{seed}`` when not the config's augmentation."""
    middle = "" if augment == default_augment else f"-{augment}"
    return f"{spec.label}{middle}-s{seed}"


def plan_cells(cfg: RunConfig, methods: Sequence[str], ipcs: Sequence[int], knobs: dict[int, Knobs], *, runs: int,
               ablation_ipc: int | None, coverage: bool) -> list[Cell]:
    """Every cell of the run: main table, ablation (at ``ablation_ipc``), coverage; no duplicates."""
    seeds = [cfg.seed + k for k in range(runs)]
    default = cfg.evaluate.augment
    cells: dict[str, Cell] = {}

    def add(spec: SetSpec, augment: str) -> None:
        for seed in seeds:
            cell_id = eval_cell_id(spec, seed, augment, default)
            cells.setdefault(cell_id, Cell(cell_id, "eval", spec, seed, augment))

    specs = [_spec(m, ipc, knobs) for m in methods if m != "full" for ipc in ipcs]
    if "full" in methods:
        specs.append(SetSpec("full", None))
    for spec in specs:
        add(spec, default)
    if ablation_ipc is not None:
        for name in ABLATION_SETS:
            for augment in ("combined", "dsa"):
                add(_spec(name, ablation_ipc, knobs), _ablation_augment(name, augment))
    if coverage:
        for spec in specs:
            cell_id = f"coverage-{spec.label}"
            cells[cell_id] = Cell(cell_id, "coverage", spec, cfg.seed)
    return list(cells.values())


def _ablation_augment(name: str, augment: str) -> str:
    """Sets without D_select (alpha 1) get DSA on every image under ``combined`` too: one cell serves both rows."""
    return "combined" if name in ("mtt", "mtt-init") else augment


def _spec(name: str, ipc: int, knobs: dict[int, Knobs]) -> SetSpec:
    return SetSpec(name, ipc, knobs.get(ipc))


def cell_key(cell: Cell, cfg: RunConfig) -> str:
    """Hash of what a cell's number depends on; a saved cell with another key is recomputed."""
    evaluate = {k: v for k, v in to_dict(cfg.evaluate).items() if k not in ("runs", "stack_runs")}  # one network
    parts = {"set": set_key(cell.set, cfg), "kind": cell.kind, "seed": cell.seed, "augment": cell.augment,
             "evaluate": evaluate, "split": "test"}
    if cell.set.name == "full" or cell.kind == "coverage":
        parts["full_epochs"] = cfg.reproduce.full_epochs
    return stable_hash(parts)


def _eval_config(cfg: RunConfig, cell: Cell):
    """The ``evaluate`` section for this cell: its augmentation, and the full-data budget for ``full``."""
    ec = dataclasses.replace(cfg.evaluate, augment=cell.augment or cfg.evaluate.augment)
    if cell.set.name == "full" and cfg.reproduce.full_epochs is not None:
        ec = dataclasses.replace(ec, epochs=cfg.reproduce.full_epochs, steps=None)
    return ec


def run_eval_cell(inputs: _Inputs, cell: Cell, built: BuiltSet, device: torch.device) -> dict[str, Any]:
    """Train one network on the set (seed ``cell.seed``) and measure its test accuracy."""
    from .evaluate import evaluate_set

    result = evaluate_set(inputs.ds, built.images.to(device), built.labels.to(device),
                          cfg=_eval_config(inputs.cfg, cell), distill_mask=built.distill_mask, split="test", runs=1,
                          seed=cell.seed, device=device)
    return {"accuracy": result.mean, "evaluation": result.to_dict()}


# --------------------------------------------------------------------------------------------
# Coverage: one reference network, its features of the training pool and test set
# --------------------------------------------------------------------------------------------


@dataclass
class _Reference:
    model: torch.nn.Module
    radius: float
    test_features: torch.Tensor  # (M, F)
    difficulty: torch.Tensor  # (M,) EL2N of each test sample, higher = harder
    key: str


def reference_network(inputs: _Inputs, sets_dir: Path, device: torch.device) -> _Reference:
    """The coverage feature space: the evaluation model trained on the whole training split (cached)."""
    from .evaluate import budget_steps, embed, nearest_distances, train_network

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
    from .evaluate import coverage, embed

    images = built.images.to(device)
    images = inputs.ds.normalize(images) if images.dtype == torch.uint8 else images.float()
    syn = embed(reference.model, images)
    result = coverage(syn[:0], reference.test_features, syn, difficulty=reference.difficulty, radius=reference.radius)
    return {"coverage": result.to_dict(), "reference": reference.key}


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def reproduce(plan: ReproducePlan) -> ReproduceResult:
    """Compute every missing cell of ``plan`` and write the tables (see the module docstring).

    Raises:
        InvalidArgument: An unknown method, an IPC or ratio out of range, a bad alpha/beta list, an unknown ``only``.
        DataError: Unfinished studies in ``plan.storage``, unreadable data or score files.
    """
    from .data import load_configured
    from .selection import class_sizes, max_beta

    tokens, methods = _check_plan(plan)
    cfg = plan.cfg
    device = resolve_device(cfg.device)
    ds = load_configured(cfg.data, device=device)
    ipcs = resolve_ipcs(tokens, ds)
    ablation_ipc = _ablation_ipc(cfg, ipcs) if plan.ablation else None
    needs_knobs = bool(set(methods) & (NEEDS_ALPHA | NEEDS_BETA)) or ablation_ipc is not None
    knobs = resolve_knobs(plan, ipcs, needs_knobs)
    sizes = class_sizes(ds.train_labels, ds.train_index)
    for knob in knobs.values():
        if knob.beta is not None and knob.beta > max_beta(knob.ipc, sizes):
            raise InvalidArgument(f"beta must be in [0, {max_beta(knob.ipc, sizes):.3f}] for ipc={knob.ipc} "
                                  f"(1 - ipc / smallest class), got {knob.beta} ({knob.beta_source})")
    cells = plan_cells(cfg, methods, ipcs, knobs, runs=plan.runs, ablation_ipc=ablation_ipc, coverage=plan.coverage)
    if plan.only is not None and plan.only not in {c.id for c in cells}:
        shown = ", ".join(c.id for c in cells[:6])
        raise InvalidArgument(f"--only {plan.only!r} is not a cell of this run; cells are named like {shown}, ...")

    out = plan.out
    cells_dir, sets_dir = out / "cells", out / "sets"
    inputs = _Inputs(ds, cfg)
    if cfg.scores.file is not None:  # a given score file is cheap to read: a bad one fails before any cell runs
        inputs.scores  # noqa: B018
    records: dict[str, dict[str, Any]] = {}
    todo = []
    for cell in cells:
        record = _load_cell(cells_dir / f"{cell.id}.json", cell_key(cell, cfg))
        if record is not None and cell.id != plan.only:
            records[cell.id] = record
        elif plan.only is None or cell.id == plan.only:
            todo.append(cell)
    reused = len(records)
    LOG.info("%d cells: %d finished, %d to compute", len(cells), reused, len(todo))

    reference = None
    for n, cell in enumerate(progress(todo, desc="reproduce cells", total=len(todo)), start=1):
        started = time.perf_counter()
        built = load_or_build(inputs, cell.set, sets_dir)
        if cell.kind == "coverage":
            reference = reference or reference_network(inputs, sets_dir, device)
            outcome = run_coverage_cell(inputs, reference, built, device)
        else:
            outcome = run_eval_cell(inputs, cell, built, device)
        record = _cell_record(plan, cell, cfg, outcome, built, time.perf_counter() - started)
        save_json(record, cells_dir / f"{cell.id}.json")
        records[cell.id] = record
        LOG.info("cell %d/%d %s: %s (%.1f s)", n, len(todo), cell.id, _outcome_text(record), record["seconds"])

    return _write_outputs(plan, cfg, ds, methods, ipcs, tokens, knobs, ablation_ipc, cells, records,
                          computed=len(todo), reused=reused)


def _ablation_ipc(cfg: RunConfig, ipcs: Sequence[int]) -> int:
    wanted = cfg.reproduce.ablation_ipc
    if wanted is None:
        return max(ipcs)
    if wanted not in ipcs:
        raise InvalidArgument(f"reproduce.ablation_ipc must be one of this run's IPCs "
                              f"({', '.join(map(str, ipcs))}), got {wanted}")
    return wanted


def _load_cell(path: Path, key: str) -> dict[str, Any] | None:
    """A saved cell if it exists, parses and was made with the same settings; else None (it is recomputed)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        LOG.warning("cell file %s is unreadable; recomputing it", path)
        return None
    if record.get("key") != key:
        LOG.warning("cell %s was made with other settings; recomputing it", path.stem)
        return None
    return record


def _cell_record(plan: ReproducePlan, cell: Cell, cfg: RunConfig, outcome: dict[str, Any], built: BuiltSet,
                 seconds: float) -> dict[str, Any]:
    knobs = cell.set.knobs
    return {
        "id": cell.id,
        "kind": cell.kind,
        "method": cell.set.name,
        "ipc": cell.set.ipc,
        "seed": cell.seed,
        "augment": cell.augment,
        "alpha": cell.set.alpha,
        "beta": cell.set.beta,
        "alpha_source": knobs.alpha_source if knobs is not None and cell.set.alpha is not None else None,
        "beta_source": knobs.beta_source if knobs is not None and cell.set.beta is not None else None,
        **outcome,
        "set": {k: v for k, v in built.settings.items() if k != "indices"},
        "seconds": seconds,
        "command": rerun_command(plan, only=cell.id),
        "key": cell_key(cell, cfg),
    }


def _outcome_text(record: dict[str, Any]) -> str:
    if record["kind"] == "coverage":
        c = record["coverage"]
        return f"coverage {c['coverage']:.3f} (easy {c['easy']:.3f}, hard {c['hard']:.3f})"
    return f"test accuracy {100 * record['accuracy']:.2f} %"


# --------------------------------------------------------------------------------------------
# The command that reruns a cell (or the whole run)
# --------------------------------------------------------------------------------------------


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
    for key, value in _changed_settings(to_dict(base), to_dict(cfg)):
        argv += ["--set", f"{key}={toml_value(value)}"]
    if only is not None:
        argv += ["--only", only]
    return shlex.join(argv)


_FLAG_SETTINGS = frozenset({"preset", "seed", "device", "cache_dir", "data.name", "data.root", "data.download",
                            "scores.file"})


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


# --------------------------------------------------------------------------------------------
# Tables and figures
# --------------------------------------------------------------------------------------------


def _stats(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std (as :func:`autoselmatch.evaluate.evaluate_set` reports)."""
    return float(np.mean(values)), float(np.std(values))


def _fmt(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def main_rows(cfg: RunConfig, methods: Sequence[str], ipcs: Sequence[int], cells: Sequence[Cell],
              records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, IPC) (``full``: one row, ipc None) with the seeds' accuracies."""
    rows = []
    for method in methods:
        for ipc in ([None] if method == "full" else ipcs):
            ids = [c.id for c in cells if c.kind == "eval" and c.set.name == method and c.set.ipc == ipc
                   and c.augment == cfg.evaluate.augment]
            done = [records[i] for i in ids if i in records]
            row: dict[str, Any] = {"method": method, "ipc": ipc, "cells": ids,
                                   "accuracies": [r["accuracy"] for r in done], "seeds": [r["seed"] for r in done]}
            row["mean"], row["std"] = _stats(row["accuracies"]) if done else (None, None)
            first = done[0] if done else {}
            for knob in ("alpha", "beta", "alpha_source", "beta_source"):
                row[knob] = first.get(knob)
            rows.append(row)
    return rows


def table_markdown(rows: Sequence[dict[str, Any]], ipcs: Sequence[int], labels: dict[int, str], *, dataset: str,
                   runs: int) -> str:
    """Methods x IPCs, mean ± std (%), the best method of each IPC in bold; ``full`` as the last row."""
    header = "| method | " + " | ".join(f"IPC {ipc}{labels.get(ipc, '')}" for ipc in ipcs) + " |"
    lines = [f"Test accuracy (%) on {dataset}, mean ± std over {runs} seed(s); best per IPC in bold.", "",
             header, "|---|" + "---:|" * len(ipcs)]
    best = {}
    for ipc in ipcs:
        scored = [r for r in rows if r["ipc"] == ipc and r["mean"] is not None]
        if scored:
            best[ipc] = max(scored, key=lambda r: r["mean"])["method"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for method in methods:
        cells = []
        for ipc in ipcs:
            row = next((r for r in rows if r["method"] == method and r["ipc"] in (ipc, None)), None)
            if row is None or row["mean"] is None:
                cells.append("—")
                continue
            text = _fmt(row["mean"], row["std"])
            cells.append(f"**{text}**" if best.get(ipc) == method else text)
        name = "full (whole training split)" if method == "full" else method
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The main table as CSV: one line per (method, IPC)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "ipc", "mean", "std", "runs", "accuracies", "alpha", "beta", "alpha_source",
                     "beta_source"])
    for r in rows:
        writer.writerow([r["method"], "" if r["ipc"] is None else r["ipc"],
                         "" if r["mean"] is None else f"{r['mean']:.6f}", "" if r["std"] is None else f"{r['std']:.6f}",
                         len(r["accuracies"]), ";".join(f"{a:.6f}" for a in r["accuracies"]),
                         "" if r["alpha"] is None else r["alpha"], "" if r["beta"] is None else r["beta"],
                         r["alpha_source"] or "", r["beta_source"] or ""])
    return buffer.getvalue()


def ablation_rows(cfg: RunConfig, ipc: int, knobs: dict[int, Knobs],
                  records: dict[str, dict[str, Any]], runs: int) -> list[dict[str, Any]]:
    """The eight rows of Table 3 at ``ipc``: selection init x partial update x combined augmentation."""
    rows = []
    seeds = [cfg.seed + k for k in range(runs)]
    for (select_init, partial), name in ABLATION_GRID.items():
        for combined in (False, True):
            augment = _ablation_augment(name, "combined" if combined else "dsa")
            spec = _spec(name, ipc, knobs)
            ids = [eval_cell_id(spec, s, augment, cfg.evaluate.augment) for s in seeds]
            accuracies = [records[i]["accuracy"] for i in ids if i in records]
            mean, std = _stats(accuracies) if accuracies else (None, None)
            rows.append({"select_init": select_init, "partial_update": partial, "combined_augmentation": combined,
                         "set": name, "ipc": ipc, "alpha": spec.alpha if partial else 1.0,
                         "beta": spec.beta if select_init else None, "cells": ids, "accuracies": accuracies,
                         "mean": mean, "std": std})
    return rows


def ablation_markdown(rows: Sequence[dict[str, Any]], ipc: int) -> str:
    def mark(flag: bool) -> str:
        return "✓" if flag else "–"

    lines = [f"Ablation at IPC {ipc} (paper Table 3): test accuracy (%), mean ± std. Combined augmentation off = "
             "DSA on every image, which is what combined gives a set without D_select (alpha 1): those rows share "
             "their cells.", "",
             "| selection init | partial update | combined augmentation | set | alpha | beta | accuracy |",
             "|:-:|:-:|:-:|---|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["select_init"], r["partial_update"], r["combined_augmentation"])):
        acc = "—" if r["mean"] is None else _fmt(r["mean"], r["std"])
        alpha = "" if r["alpha"] is None else f"{r['alpha']:g}"
        beta = "" if r["beta"] is None else f"{r['beta']:g}"
        lines.append(f"| {mark(r['select_init'])} | {mark(r['partial_update'])} | {mark(r['combined_augmentation'])} "
                     f"| {r['set']} | {alpha} | {beta} | {acc} |")
    return "\n".join(lines) + "\n"


def coverage_rows(cells: Sequence[Cell], records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for cell in cells:
        if cell.kind == "coverage" and cell.id in records:
            c = records[cell.id]["coverage"]
            rows.append({"method": cell.set.name, "ipc": cell.set.ipc, **c})
    return rows


def coverage_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["Coverage of the test set (fraction within radius r of a set sample, in the feature space of the "
             "evaluation model trained on the whole training split); easy/hard halves by that network's EL2N.", "",
             "| method | IPC | coverage | easy half | hard half |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        ipc = "all" if r["ipc"] is None else r["ipc"]
        lines.append(f"| {r['method']} | {ipc} | {r['coverage']:.3f} | {r['easy']:.3f} | {r['hard']:.3f} |")
    return "\n".join(lines) + "\n"


def coverage_html(rows: Sequence[dict[str, Any]], dataset: str) -> str:
    """A self-contained page (plotly.js inline): easy and hard coverage per method, one figure per IPC."""
    import html

    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs

    figures = []
    for ipc in dict.fromkeys(r["ipc"] for r in rows if r["ipc"] is not None):
        group = [r for r in rows if r["ipc"] in (ipc, None)]
        fig = go.Figure([go.Bar(name=half, x=[r["method"] for r in group], y=[r[half] for r in group])
                         for half in ("easy", "hard")])
        fig.update_layout(barmode="group", title=f"Coverage of easy and hard test samples, IPC {ipc}",
                          xaxis_title="method", yaxis_title="coverage", yaxis_range=[0, 1], template="plotly_white")
        figures.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"coverage-ipc{ipc}",
                                   config={"displaylogo": False, "responsive": True}))
    title = f"autoselmatch coverage: {html.escape(dataset)}"
    return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{title}</title>",
                      f'<script type="text/javascript">{get_plotlyjs()}</script>', "</head><body>",
                      f"<h1>{title}</h1>", *figures, "</body></html>"])


def _write_outputs(plan: ReproducePlan, cfg: RunConfig, ds: ImageDataset, methods: Sequence[str], ipcs: list[int],
                   tokens: Sequence[str], knobs: dict[int, Knobs], ablation_ipc: int | None, cells: list[Cell],
                   records: dict[str, dict[str, Any]], *, computed: int, reused: int) -> ReproduceResult:
    out = plan.out
    labels = {ipc: f" ({t})" for ipc, t in zip(ipcs, tokens) if t.endswith("%")}
    rows = main_rows(cfg, methods, ipcs, cells, records)
    table_md = table_markdown(rows, ipcs, labels, dataset=ds.name, runs=plan.runs)
    files = {"table.md": out / "table.md", "table.csv": out / "table.csv", "results.json": out / "results.json"}
    save_text(table_md, files["table.md"])
    save_text(table_csv(rows), files["table.csv"])
    results: dict[str, Any] = {
        "dataset": ds.name, "ipcs": ipcs, "ipc_labels": list(tokens), "methods": list(methods), "runs": plan.runs,
        "split": "test", "command": rerun_command(plan), "config": to_dict(cfg),
        "knobs": [dataclasses.asdict(knobs[ipc]) for ipc in ipcs if ipc in knobs],
        "table": rows, "cells": {c.id: records.get(c.id) for c in cells},
    }
    if ablation_ipc is not None:
        rows_ab = ablation_rows(cfg, ablation_ipc, knobs, records, plan.runs)
        results["ablation"] = rows_ab
        files["ablation.md"] = out / "ablation.md"
        save_text(ablation_markdown(rows_ab, ablation_ipc), files["ablation.md"])
    if plan.coverage:
        rows_cov = coverage_rows(cells, records)
        results["coverage"] = rows_cov
        files["coverage.md"] = out / "coverage.md"
        files["coverage.html"] = out / "coverage.html"
        save_text(coverage_markdown(rows_cov), files["coverage.md"])
        save_text(coverage_html(rows_cov, ds.name), files["coverage.html"])
    save_json(results, files["results.json"])
    return ReproduceResult(out, table_md, files, computed, reused, results)


__all__ = [
    "ABLATION_GRID",
    "METHODS",
    "Cell",
    "Knobs",
    "Recipe",
    "ReproducePlan",
    "ReproduceResult",
    "SetSpec",
    "distill_recipe",
    "given_knobs",
    "parse_floats",
    "parse_ipc_tokens",
    "parse_methods",
    "plan_cells",
    "rerun_command",
    "reproduce",
    "resolve_ipcs",
    "resolve_knobs",
    "study_knobs",
]
