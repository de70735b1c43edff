"""The run: compute every missing cell of a plan, save each as it finishes, then write the tables."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..config import RunConfig
from ..coverage import distill_reference
from ..errors import InvalidArgument
from ..fileio import file_lock, save_json
from ..runtime import LOG, progress, resolve_device
from ._cells import cell_key, plan_cells, run_eval_cell
from ._checks import _check_plan, resolve_ipcs
from ._command import rerun_command
from ._extras import extra_set, extra_specs
from ._coverage import run_coverage_cell
from ._knobs import resolve_knobs
from ._plan import NEEDS_ALPHA, NEEDS_BETA, Cell, ReproducePlan, ReproduceResult
from ._sets import BuiltSet, _Inputs, being_built, load_or_build
from ._tables import RunOutcome, write_outputs


def reproduce(plan: ReproducePlan) -> ReproduceResult:
    """Compute every missing cell of ``plan`` and write the tables (see :mod:`autoselmatch.reproduce`).

    Raises:
        InvalidArgument: An unknown method, an IPC or ratio out of range, a bad alpha/beta list, an unknown ``only``.
        DataError: Unfinished studies in ``plan.storage``, unreadable data or score files.
    """
    from ..data import load_configured
    from ..selection import class_sizes, max_beta

    tokens, methods = _check_plan(plan)
    cfg = plan.cfg
    device = resolve_device(cfg.device)
    ds = load_configured(cfg.data, device=device)
    ipcs = resolve_ipcs(tokens, ds)
    ablation_ipc = _ablation_ipc(cfg, ipcs) if plan.ablation else None
    needs_knobs = bool(set(methods) & (NEEDS_ALPHA | NEEDS_BETA)) or ablation_ipc is not None
    knobs = resolve_knobs(plan, ipcs, needs_knobs, ds.num_classes)
    sizes = class_sizes(ds.train_labels, ds.train_index)
    for knob in knobs.values():
        if knob.beta is not None and knob.beta > max_beta(knob.ipc, sizes):
            raise InvalidArgument(f"beta must be in [0, {max_beta(knob.ipc, sizes):.3f}] for ipc={knob.ipc} "
                                  f"(1 - ipc / smallest class), got {knob.beta} ({knob.beta_source})")
    extras = extra_specs(plan.extras, ds, ipcs, cfg)
    cells = plan_cells(cfg, methods, ipcs, knobs, runs=plan.runs, ablation_ipc=ablation_ipc, coverage=plan.coverage,
                       extras=extras, models=plan.models)
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
    computed = 0
    cells_dir.mkdir(parents=True, exist_ok=True)

    def set_busy(cell: Cell) -> bool:  # another run on this OUT is making the cell's set now
        return cell.set.source is None and being_built(cell.set, cfg, sets_dir)

    for cell, claimed in _claim(todo, cells_dir, set_busy):
        done = None if cell.id == plan.only and claimed else _load_cell(cells_dir / f"{cell.id}.json",
                                                                          cell_key(cell, cfg), quiet=True)
        if done is not None:  # another run on this OUT finished it while this one planned or waited
            records[cell.id], reused = done, reused + 1
            continue
        started = time.perf_counter()
        if cell.set.source is not None:  # made elsewhere (--extra): read from its folder
            built = extra_set(cell.set, ds, cfg)
        else:
            built = load_or_build(inputs, cell.set, sets_dir)
        if cell.kind == "coverage":
            reference = reference or distill_reference(inputs.ds, inputs.cfg, device)
            outcome = run_coverage_cell(inputs, reference, built, device)
        else:
            outcome = run_eval_cell(inputs, cell, built, device)
        record = _cell_record(plan, cell, cfg, outcome, built, time.perf_counter() - started)
        save_json(record, cells_dir / f"{cell.id}.json")
        records[cell.id] = record
        computed += 1
        LOG.info("cell %d/%d %s: %s (%.1f s)", computed, len(todo), cell.id, _outcome_text(record), record["seconds"])

    run = RunOutcome(dataset=ds.name, methods=methods + tuple(e.name for e in extras), ipcs=ipcs, tokens=tokens, knobs=knobs, ablation_ipc=ablation_ipc,
                     cells=cells, records=records, computed=computed, reused=reused)
    return write_outputs(plan, run)


def _ablation_ipc(cfg: RunConfig, ipcs: Sequence[int]) -> int:
    wanted = cfg.reproduce.ablation_ipc
    if wanted is None:
        return max(ipcs)
    if wanted not in ipcs:
        raise InvalidArgument(f"reproduce.ablation_ipc must be one of this run's IPCs "
                              f"({', '.join(map(str, ipcs))}), got {wanted}")
    return wanted


def _claim(todo: Sequence[Cell], cells_dir: Path, set_busy: Callable[[Cell], bool]) -> Iterator[tuple[Cell, bool]]:
    """Each cell of ``todo`` while this process holds its lock in ``cells_dir``, so that runs started on one
    OUT share the cells out instead of computing each twice or waiting beside each other's distillations.

    First the cells no other run holds and whose set no other run is making (``set_busy``), then the cells
    whose set was being made (saved by now, or waited for by ``load_or_build``), then, waiting for each, the
    cells another run held. Yields each cell with whether no other run held it when this one first met it
    (``False``: another run did, and may have saved it).
    """
    deferred = []
    for cell in progress(todo, desc="reproduce cells", total=len(todo)):
        with file_lock(cells_dir / f".{cell.id}.lock", blocking=False) as free:
            if free and not set_busy(cell):
                yield cell, True
                continue
        deferred.append((not free, cell))
    for another_held_it, cell in sorted(deferred, key=lambda pair: pair[0]):  # stable: set-waiting cells first
        lock = cells_dir / f".{cell.id}.lock"
        with file_lock(lock, blocking=False) as free:
            if free:
                yield cell, not another_held_it
                continue
        LOG.info("cell %s: another run on this folder holds it; waiting", cell.id)
        with file_lock(lock):
            yield cell, False


def _load_cell(path: Path, key: str, *, quiet: bool = False) -> dict[str, Any] | None:
    """A saved cell if it exists, parses and was made with the same settings; else None (it is recomputed,
    with a warning unless ``quiet``)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        if not quiet:
            LOG.warning("cell file %s is unreadable; recomputing it", path)
        return None
    if record.get("key") != key:
        if not quiet:
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
