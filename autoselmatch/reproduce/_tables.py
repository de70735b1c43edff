"""Tables and figures: the main table, the ablation and the coverage, from the saved cells."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..config import RunConfig, to_dict
from ..fileio import save_json, save_text
from ._cells import _ablation_augment, _spec, eval_cell_id
from ._command import rerun_command
from ._plan import ABLATION_GRID, Cell, Knobs, ReproducePlan, ReproduceResult


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


@dataclass(frozen=True)
class RunOutcome:
    """What a run computed, as the output files need it.

    Attributes:
        dataset: Dataset name.
        methods: Methods of the main table.
        ipcs: IPCs of the run, one per ``--ipc`` token.
        tokens: The ``--ipc`` tokens (a ratio such as ``5%`` labels its column).
        knobs: IPC -> alpha and beta, and where they came from.
        ablation_ipc: IPC of the ablation table (``None``: no ablation).
        cells: Every cell of the run.
        records: Cell id -> saved record, for the cells that are finished.
        computed: Cells computed by this call.
        reused: Cells found finished on disk.
    """

    dataset: str
    methods: tuple[str, ...]
    ipcs: list[int]
    tokens: tuple[str, ...]
    knobs: dict[int, Knobs]
    ablation_ipc: int | None
    cells: list[Cell]
    records: dict[str, dict[str, Any]]
    computed: int
    reused: int


def write_outputs(plan: ReproducePlan, run: RunOutcome) -> ReproduceResult:
    """Write ``table.md``, ``table.csv``, ``results.json`` and, as planned, the ablation and coverage files."""
    out, cfg, ipcs, records = plan.out, plan.cfg, run.ipcs, run.records
    labels = {ipc: f" ({t})" for ipc, t in zip(ipcs, run.tokens) if t.endswith("%")}
    rows = main_rows(cfg, run.methods, ipcs, run.cells, records)
    table_md = table_markdown(rows, ipcs, labels, dataset=run.dataset, runs=plan.runs)
    files = {"table.md": out / "table.md", "table.csv": out / "table.csv", "results.json": out / "results.json"}
    save_text(table_md, files["table.md"])
    save_text(table_csv(rows), files["table.csv"])
    results: dict[str, Any] = {
        "dataset": run.dataset, "ipcs": ipcs, "ipc_labels": list(run.tokens), "methods": list(run.methods),
        "runs": plan.runs, "split": "test", "command": rerun_command(plan), "config": to_dict(cfg),
        "knobs": [dataclasses.asdict(run.knobs[ipc]) for ipc in ipcs if ipc in run.knobs],
        "table": rows, "cells": {c.id: records.get(c.id) for c in run.cells},
    }
    if run.ablation_ipc is not None:
        rows_ab = ablation_rows(cfg, run.ablation_ipc, run.knobs, records, plan.runs)
        results["ablation"] = rows_ab
        files["ablation.md"] = out / "ablation.md"
        save_text(ablation_markdown(rows_ab, run.ablation_ipc), files["ablation.md"])
    if plan.coverage:
        rows_cov = coverage_rows(run.cells, records)
        results["coverage"] = rows_cov
        files["coverage.md"] = out / "coverage.md"
        files["coverage.html"] = out / "coverage.html"
        save_text(coverage_markdown(rows_cov), files["coverage.md"])
        save_text(coverage_html(rows_cov, run.dataset), files["coverage.html"])
    save_json(results, files["results.json"])
    return ReproduceResult(out, table_md, files, run.computed, run.reused, results)
