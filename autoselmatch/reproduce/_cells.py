"""Cells: the saved numbers of a run (one evaluation network, or one coverage measurement) and their keys."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from ..augment import augment_of_set
from ..config import EvalConfig, RunConfig, key_dict
from ..fileio import stable_hash
from ..models import ModelSpec
from ._plan import ABLATION_SETS, SELECTION_ONLY, Cell, Knobs, SetSpec
from ._sets import BuiltSet, _Inputs, set_key


def eval_cell_id(spec: SetSpec, seed: int, augment: str, default_augment: str, model: str | None = None) -> str:
    """``{set}-ipc{N}-s{seed}``; ``{set}-ipc{N}-{augment}-s{seed}`` when not the config's augmentation;
    ``...-{model}-s{seed}`` for a cross-architecture cell (``model`` not None)."""
    middle = "" if augment == default_augment else f"-{augment}"
    suffix = "" if model is None else f"-{model}"
    return f"{spec.label}{middle}{suffix}-s{seed}"


def main_augment(method: str, default: str) -> str:
    """Augmentation of ``method``'s cells in the main table, as in the paper's Table 1.

    Selection-only sets (random, hardest, window) train with DSA on every image
    (:func:`~autoselmatch.augment.augment_of_set`); other sets use ``default``.
    """
    return augment_of_set(default, distilled=method not in SELECTION_ONLY)


def plan_cells(cfg: RunConfig, methods: Sequence[str], ipcs: Sequence[int], knobs: dict[int, Knobs], *, runs: int,
               ablation_ipc: int | None, coverage: bool, extras: Sequence[SetSpec] = (),
               models: Sequence[str] = ()) -> list[Cell]:
    """Every cell of the run: main table, cross-architecture (each main-table set with each of ``models``),
    ablation (at ``ablation_ipc``), coverage; no duplicates.

    ``extras``: sets made elsewhere (``--extra``), main-table cells only.
    """
    seeds = [cfg.seed + k for k in range(runs)]
    default = cfg.evaluate.augment
    cells: dict[str, Cell] = {}

    def add(spec: SetSpec, augment: str, model: str | None = None) -> None:
        for seed in seeds:
            cell_id = eval_cell_id(spec, seed, augment, default, model)
            cells.setdefault(cell_id, Cell(cell_id, "eval", spec, seed, augment, model))

    specs = [_spec(m, ipc, knobs) for m in methods if m != "full" for ipc in ipcs]
    if "full" in methods:
        specs.append(SetSpec("full", None))
    for spec in [*specs, *extras]:
        add(spec, main_augment(spec.name, default))
    for spec in specs:
        for model in models:
            add(spec, main_augment(spec.name, default), cross_model(cfg, model))
    if ablation_ipc is not None:
        for name in ABLATION_SETS:
            for augment in ("combined", "dsa"):
                add(_spec(name, ablation_ipc, knobs), _ablation_augment(name, augment))
    if coverage:
        for spec in specs:
            cell_id = f"coverage-{spec.label}"
            cells[cell_id] = Cell(cell_id, "coverage", spec, cfg.seed)
    return list(cells.values())


def cross_model(cfg: RunConfig, name: str) -> str | None:
    """A cross-architecture cell's ``model``: None for the evaluation model's name (its cells are the main table's)."""
    return None if name == cfg.evaluate.model.name else name


def cell_evaluate(cfg: RunConfig, cell: Cell) -> EvalConfig:
    """``cfg.evaluate`` with the cell's network: ``cell.model`` with its builder's defaults, if set."""
    return cfg.evaluate if cell.model is None else dataclasses.replace(cfg.evaluate, model=ModelSpec(cell.model))


def _ablation_augment(name: str, augment: str) -> str:
    """Sets without D_select (alpha 1) get DSA on every image under ``combined`` too: one cell serves both rows."""
    return "combined" if name in ("mtt", "mtt-init") else augment


def _spec(name: str, ipc: int, knobs: dict[int, Knobs]) -> SetSpec:
    return SetSpec(name, ipc, knobs.get(ipc))


def cell_key(cell: Cell, cfg: RunConfig) -> str:
    """Hash of what a cell's number depends on; a saved cell with another key is recomputed."""
    evaluate = {k: v for k, v in key_dict("evaluate", cell_evaluate(cfg, cell)).items()
                if k not in ("runs", "stack_runs")}  # one network
    parts = {"set": set_key(cell.set, cfg), "kind": cell.kind, "seed": cell.seed, "augment": cell.augment,
             "evaluate": evaluate, "split": "test"}
    if cell.set.name == "full" or cell.kind == "coverage":
        parts["full_epochs"] = cfg.reproduce.full_epochs
    if cell.kind == "eval" and _protocol(cfg) != "hard-labels":  # e.g. SRe2L's KD: its teacher and temperature
        parts["protocol"] = {"evaluation": _protocol(cfg), "distill": key_dict("distill", cfg.distill),
                             "experts": key_dict("experts", cfg.experts)}
    return stable_hash(parts)


def _protocol(cfg: RunConfig) -> str:
    """How the run's cells score a set: the evaluation of the base method ``distill.method``."""
    from ..distill import METHODS as BASES

    return BASES.get(cfg.distill.method).evaluation


def _eval_config(cfg: RunConfig, cell: Cell):
    """The ``evaluate`` section for this cell: its augmentation, and the full-data budget for ``full``."""
    ec = dataclasses.replace(cell_evaluate(cfg, cell), augment=cell.augment or cfg.evaluate.augment)
    if cell.set.name == "full" and cfg.reproduce.full_epochs is not None:
        ec = dataclasses.replace(ec, epochs=cfg.reproduce.full_epochs, steps=None)
    return ec


def run_eval_cell(inputs: _Inputs, cell: Cell, built: BuiltSet, device: torch.device) -> dict[str, Any]:
    """Train one network on the set (seed ``cell.seed``) and measure its test accuracy, by the protocol of the
    base method ``distill.method`` (hard labels; SRe2L: KD from its teacher)."""
    from ..distill import evaluate_distilled

    cfg = dataclasses.replace(inputs.cfg, evaluate=_eval_config(inputs.cfg, cell))
    result = evaluate_distilled(inputs.ds, built.images.to(device), built.labels.to(device), cfg,
                                distill_mask=built.distill_mask, split="test", runs=1, seed=cell.seed)
    return {"accuracy": result.mean, "evaluation": result.to_dict()}
