"""Tables and figures: the main table, the cross-architecture table, the ablation and the coverage, from the saved
cells."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import synset
from ..config import ReproduceConfig, RunConfig, to_dict
from ..errors import InvalidArgument
from ..fileio import save_json, save_text
from ._cells import _ablation_augment, _spec, cross_model, eval_cell_id, main_augment
from ._command import rerun_command
from ._plan import ABLATION_GRID, BASE_LAYOUTS, BaseLayout, Cell, Knobs, ReproducePlan, ReproduceResult, set_label


def _stats(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std (as :func:`autoselmatch.evaluate.evaluate_set` reports)."""
    return float(np.mean(values)), float(np.std(values))


def _fmt(row: dict[str, Any]) -> str:
    """A row's accuracy in %: ``mean ± std`` over its seeds, the value alone for one seed (no spread)."""
    if len(row["accuracies"]) == 1:
        return f"{100 * row['mean']:.2f}"
    return f"{100 * row['mean']:.2f} ± {100 * row['std']:.2f}"


def main_rows(cfg: RunConfig, methods: Sequence[str], ipcs: Sequence[int], cells: Sequence[Cell],
              records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, IPC) (``full``: one row, ipc None) with the seeds' accuracies."""
    rows = []
    for method in methods:
        for ipc in ([None] if method == "full" else ipcs):
            augment = main_augment(method, cfg.evaluate.augment)
            ids = [c.id for c in cells if c.kind == "eval" and c.set.name == method and c.set.ipc == ipc
                   and c.augment == augment and c.model is None]
            done = [records[i] for i in ids if i in records]
            row: dict[str, Any] = {"method": method, "ipc": ipc, "cells": ids, "augment": augment,
                                   "accuracies": [r["accuracy"] for r in done], "seeds": [r["seed"] for r in done]}
            row["mean"], row["std"] = _stats(row["accuracies"]) if done else (None, None)
            first = done[0] if done else {}
            for knob in ("alpha", "beta", "alpha_source", "beta_source"):
                row[knob] = first.get(knob)
            row.update(activity(done, cfg.reproduce))
            rows.append(row)
    return rows


BARELY_MARK = "‡"


def activity(done: Sequence[dict[str, Any]], rule: ReproduceConfig) -> dict[str, Any]:
    """``{"loss_ratio", "pixel_change", "barely_distilled"}`` of a row from its finished cells' records.

    ``loss_ratio``: the final matching-loss ratio (end / start, see
    :func:`autoselmatch.synset.loss_ratio`) of the row's distilled set, None for a set
    that was not distilled (or saved before the ratio was recorded); ``pixel_change``: its
    last activity entry's (mean |x - x0| of the D_distill pixels, in std units; None if not
    recorded); ``barely_distilled``: :func:`barely_distilled` under ``rule``'s thresholds.
    """
    made = next((r["set"] for r in done if (r.get("set") or {}).get("loss_ratio") is not None), None)
    ratio = None if made is None else made["loss_ratio"]
    pixels = None if made is None else ((made.get("activity") or [{}])[-1].get("pixel_change"))
    return {"loss_ratio": ratio, "pixel_change": pixels, "barely_distilled": barely_distilled(ratio, pixels, rule)}


def barely_distilled(ratio: float | None, pixels: float | None, rule: ReproduceConfig) -> bool:
    """:func:`autoselmatch.synset.barely_distilled` under ``rule``'s thresholds (``reproduce.barely_moved``,
    ``reproduce.barely_distilled``)."""
    return synset.barely_distilled(ratio, pixels, moved=rule.barely_moved, ratio_above=rule.barely_distilled)


def barely_note(rows: Sequence[dict[str, Any]], rule: ReproduceConfig) -> str:
    """The legend of the activity column and of the mark (empty when no row has a loss ratio)."""
    if not any(r.get("loss_ratio") is not None for r in rows):
        return ""
    return (f"Loss ratio: the distillation's final matching loss over its initial one (mean of the last and first "
            f"iterations), with the pixel change in brackets: the mean |x - x0| of the distilled pixels, in units "
            f"of the data's std; {BARELY_MARK} barely distilled: the pixels moved less than {rule.barely_moved:g} std "
            f"(reproduce.barely_moved), or, for a set without a recorded pixel change, the ratio stayed above "
            f"{rule.barely_distilled:g} (reproduce.barely_distilled).")


def _ratio_text(row: dict[str, Any] | None) -> str:
    if row is None or row.get("loss_ratio") is None:
        return "—"
    pixels = "" if row.get("pixel_change") is None else f" ({row['pixel_change']:.3f})"
    return f"{row['loss_ratio']:.3f}{pixels}" + (f" {BARELY_MARK}" if row.get("barely_distilled") else "")


def budget_markdown(rows: Sequence[dict[str, Any]], records: dict[str, dict[str, Any]]) -> str:
    """One line: the evaluation budget the main table's cells used (steps, share of the paper's rule)."""
    from ..evaluate import budget_text

    def used(full: bool) -> str:
        done = [records[i] for row in rows if (row.get("method") == "full") == full for i in row["cells"]
                if "evaluation" in records.get(i, {})]
        seen = {(r["evaluation"]["steps"], r["evaluation"].get("paper_share")) for r in done}
        return "; ".join(budget_text(steps, share) for steps, share in sorted(seen, key=lambda s: s[0]))

    sets, full = used(False), used(True)
    if not sets and not full:
        return ""
    return "Evaluation budget: " + "; ".join(part for part in (sets and f"sets {sets}",
                                                               full and f"full split {full}") if part) + "."


def table_markdown(rows: Sequence[dict[str, Any]], ipcs: Sequence[int], labels: dict[int, str], *, dataset: str,
                   runs: int, budget: str = "", rule: ReproduceConfig = ReproduceConfig(), heading: str = "",
                   names: dict[str, str] | None = None, over: str = "networks") -> str:
    """Methods x IPCs, mean ± std (%), the best method of each IPC in bold; ``full`` as the last row.

    Each row names the training augmentation of its cells; ``budget`` (:func:`budget_markdown`) follows the title.
    When some set was distilled, a last column gives each IPC's final loss ratio and pixel change
    (:func:`activity`), and the accuracy of a set that ``rule`` calls barely distilled (:func:`barely_distilled`)
    is marked.
    ``heading``: a first line (a base table's, :func:`base_heading`); ``names``: row labels by method; ``over``:
    what the ``runs`` values of a cell are (the networks of one run; the pipeline seeds of a combined table).
    """
    ratios = bool(barely_note(rows, rule))
    header = "| method | augmentation | " + " | ".join(f"IPC {ipc}{labels.get(ipc, '')}" for ipc in ipcs) + " |"
    header += " loss ratio (pixel change), per IPC |" if ratios else ""
    spread = f"one {over.removesuffix('s')}" if runs == 1 else f"mean ± std over {runs} {over}"
    lines = [*([heading] if heading else []), f"Test accuracy (%) on {dataset}, {spread}; best per IPC in bold.",
             *([budget] if budget else []), *([barely_note(rows, rule)] if ratios else []), "", header,
             "|---|---|" + "---:|" * (len(ipcs) + ratios)]
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
            text = _fmt(row)
            text = f"**{text}**" if best.get(ipc) == method else text
            cells.append(f"{text} {BARELY_MARK}" if row.get("barely_distilled") else text)
        name = "full (whole training split)" if method == "full" else (names or {}).get(method, method)
        augment = next((r.get("augment") or "" for r in rows if r["method"] == method), "")
        if ratios:  # blank for a method that distils nothing
            mine = [next((r for r in rows if r["method"] == method and r["ipc"] == ipc), None) for ipc in ipcs]
            distilled = any(r is not None and r.get("loss_ratio") is not None for r in mine)
            cells.append(" / ".join(_ratio_text(r) for r in mine) if distilled else "")
        lines.append(f"| {name} | {augment} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def base_heading(cfg: RunConfig, layout: BaseLayout) -> str:
    """The first line of a base method's table: the paper's table, the method and its evaluation protocol."""
    from ..choices import DISTILL_METHOD_TITLES
    from ..distill import METHODS as BASES

    method = cfg.distill.method
    protocol = ("students learn the teacher's soft outputs on the augmented set images (KD at temperature "
                f"{cfg.distill.sre2l_temperature:g}; hard labels unused)"
                if BASES.get(method).evaluation == "teacher-kd" else "a fresh network trains on the set's images "
                "and hard labels")
    return (f"Paper Table {layout.table} layout: base method {DISTILL_METHOD_TITLES[method]} ({method}); "
            f"evaluation protocol: {protocol}.")


def table_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The main table as CSV: one line per (method, IPC)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "augment", "ipc", "mean", "std", "runs", "accuracies", "alpha", "beta", "alpha_source",
                     "beta_source", "loss_ratio", "pixel_change", "barely_distilled"])
    for r in rows:
        writer.writerow([r["method"], r.get("augment") or "", "" if r["ipc"] is None else r["ipc"],
                         "" if r["mean"] is None else f"{r['mean']:.6f}", "" if r["std"] is None else f"{r['std']:.6f}",
                         len(r["accuracies"]), ";".join(f"{a:.6f}" for a in r["accuracies"]),
                         "" if r["alpha"] is None else r["alpha"], "" if r["beta"] is None else r["beta"],
                         r["alpha_source"] or "", r["beta_source"] or "",
                         "" if r.get("loss_ratio") is None else f"{r['loss_ratio']:.6f}",
                         "" if r.get("pixel_change") is None else f"{r['pixel_change']:.6f}",
                         int(bool(r.get("barely_distilled")))])
    return buffer.getvalue()


def cross_arch_rows(cfg: RunConfig, methods: Sequence[str], ipcs: Sequence[int], models: Sequence[str],
                    cells: Sequence[Cell], records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per main-table set (method, IPC; ``full``: ipc None) with, under ``"models"``, each network's
    cells, seeds' accuracies, mean and std (the evaluation model's are the main table's cells)."""
    rows = []
    for method in methods:
        for ipc in ([None] if method == "full" else ipcs):
            augment = main_augment(method, cfg.evaluate.augment)
            per_model = {}
            for name in models:
                model = cross_model(cfg, name)
                ids = [c.id for c in cells if c.kind == "eval" and c.set.name == method and c.set.ipc == ipc
                       and c.augment == augment and c.model == model]
                done = [records[i] for i in ids if i in records]
                accuracies = [r["accuracy"] for r in done]
                mean, std = _stats(accuracies) if done else (None, None)
                per_model[name] = {"cells": ids, "accuracies": accuracies, "seeds": [r["seed"] for r in done],
                                   "mean": mean, "std": std}
            rows.append({"method": method, "ipc": ipc, "augment": augment, "models": per_model})
    return rows


def cross_arch_markdown(rows: Sequence[dict[str, Any]], models: Sequence[str], cfg: RunConfig, *, dataset: str,
                        runs: int, budget: str = "") -> str:
    """Sets x networks (paper Table 2), mean ± std (%); the best set of each IPC and network in bold."""
    spread = "one network" if runs == 1 else f"mean ± std over {runs} networks"
    evaluation = cfg.evaluate.model
    options = ", ".join(f"{k}={v}" for k, v in sorted(evaluation.options.items()))
    named = [f"{name} (the evaluation model, {options or 'builder defaults'}: the main table's cells)"
             if cross_model(cfg, name) is None else f"{name} (builder defaults)" for name in models]
    lines = [f"Cross-architecture generalisation (paper Table 2): test accuracy (%) on {dataset} of each network "
             f"trained from scratch on each set, {spread}; best set per IPC and network in bold.",
             "Networks: " + ", ".join(named) + ". Protocol, budget and augmentation as in the main table.",
             *([budget] if budget else []), "",
             "| method | IPC | augmentation | " + " | ".join(models) + " |", "|---|---:|---|" + "---:|" * len(models)]
    best: dict[tuple[int, str], str] = {}
    for ipc in dict.fromkeys(r["ipc"] for r in rows if r["ipc"] is not None):
        for name in models:
            scored = [r for r in rows if r["ipc"] == ipc and r["models"][name]["mean"] is not None]
            if scored:
                best[(ipc, name)] = max(scored, key=lambda r: r["models"][name]["mean"])["method"]
    for r in rows:
        cells = []
        for name in models:
            entry = r["models"][name]
            text = "—" if entry["mean"] is None else _fmt(entry)
            cells.append(f"**{text}**" if best.get((r["ipc"], name)) == r["method"] else text)
        method = "full (whole training split)" if r["method"] == "full" else r["method"]
        ipc = "all" if r["ipc"] is None else r["ipc"]
        lines.append(f"| {method} | {ipc} | {r['augment']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cross_arch_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The cross-architecture table as CSV: one line per (method, IPC, network)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "augment", "ipc", "model", "mean", "std", "runs", "accuracies"])
    for r in rows:
        for name, e in r["models"].items():
            writer.writerow([r["method"], r["augment"], "" if r["ipc"] is None else r["ipc"], name,
                             "" if e["mean"] is None else f"{e['mean']:.6f}",
                             "" if e["std"] is None else f"{e['std']:.6f}",
                             len(e["accuracies"]), ";".join(f"{a:.6f}" for a in e["accuracies"])])
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
                         "set": name, "label": set_label(name, cfg.distill.method), "ipc": ipc,
                         "alpha": spec.alpha if partial else 1.0, "beta": spec.beta if select_init else None,
                         "cells": ids, "accuracies": accuracies, "mean": mean, "std": std,
                         **activity([records[i] for i in ids if i in records], cfg.reproduce)})
    return rows


def ablation_markdown(rows: Sequence[dict[str, Any]], ipc: int, budget: str = "",
                      rule: ReproduceConfig = ReproduceConfig()) -> str:
    def mark(flag: bool) -> str:
        return "✓" if flag else "–"

    lines = [f"Ablation at IPC {ipc} (paper Table 3): test accuracy (%), mean ± std over the seeds (the value alone for one seed). Combined augmentation off = "
             "DSA on every image, which is what combined gives a set without D_select (alpha 1): those rows share "
             "their cells.", *([budget] if budget else []),
             *([note] if (note := barely_note(rows, rule)) else []), "",
             "| selection init | partial update | combined augmentation | set | alpha | beta | accuracy "
             "| loss ratio (pixel change) |",
             "|:-:|:-:|:-:|---|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["select_init"], r["partial_update"], r["combined_augmentation"])):
        acc = "—" if r["mean"] is None else _fmt(r)
        alpha = "" if r["alpha"] is None else f"{r['alpha']:g}"
        beta = "" if r["beta"] is None else f"{r['beta']:g}"
        lines.append(f"| {mark(r['select_init'])} | {mark(r['partial_update'])} | {mark(r['combined_augmentation'])} "
                     f"| {r['label']} | {alpha} | {beta} | {acc} | {_ratio_text(r)} |")
    return "\n".join(lines) + "\n"


def coverage_rows(cells: Sequence[Cell], records: dict[str, dict[str, Any]], method: str) -> list[dict[str, Any]]:
    """Coverage of each set with a coverage cell, named as the tables of base method ``method`` name it."""
    rows = []
    for cell in cells:
        if cell.kind == "coverage" and cell.id in records:
            c = records[cell.id]["coverage"]
            rows.append({"method": set_label(cell.set.name, method), "ipc": cell.set.ipc, **c})
    return rows


def coverage_markdown(rows: Sequence[dict[str, Any]], *, seeds: bool = False) -> str:
    """Coverage per set; ``seeds``: rows combined over pipeline seeds, with how many (``len(row["seeds"])``)."""
    lines = ["Coverage of the test set (fraction within radius r of a set sample, in the feature space of the "
             "evaluation model trained on the whole training split); easy/hard halves by that network's EL2N.", "",
             "| method | IPC | coverage | easy half | hard half |" + (" seeds |" if seeds else ""),
             "|---|---:|---:|---:|---:|" + ("---:|" if seeds else "")]
    for r in rows:
        ipc = "all" if r["ipc"] is None else r["ipc"]
        lines.append(f"| {r['method']} | {ipc} | {r['coverage']:.3f} | {r['easy']:.3f} | {r['hard']:.3f} |"
                     + (f" {len(r['seeds'])} |" if seeds else ""))
    return "\n".join(lines) + "\n"


def coverage_activities(rows: Sequence[dict[str, Any]],
                        records: dict[str, dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(``"{method}, IPC {ipc}"``, activity record) of each main-table set whose distillation recorded coverage."""
    found = []
    for row in rows:
        sets = [records[i].get("set") or {} for i in row["cells"] if i in records]
        points = next((s["activity"] for s in sets if s.get("activity")), [])
        if any("coverage_easy" in p for p in points):
            found.append((f"{row['method']}, IPC {row['ipc']}", points))
    return found


def coverage_html(rows: Sequence[dict[str, Any]], dataset: str,
                  activities: Sequence[tuple[str, list[dict[str, Any]]]] = ()) -> str:
    """A self-contained page (plotly.js inline): easy and hard coverage per method, one figure per IPC, and,
    for the sets in ``activities`` (:func:`coverage_activities`), their coverage over the distillation's iterations."""
    import html

    import plotly.graph_objects as go
    from plotly.colors import DEFAULT_PLOTLY_COLORS
    from plotly.offline import get_plotlyjs

    figures = []
    if activities:
        fig = go.Figure()
        for k, (label, points) in enumerate(activities):
            shown = [p for p in points if p.get("coverage_easy") is not None]
            colour = DEFAULT_PLOTLY_COLORS[k % len(DEFAULT_PLOTLY_COLORS)]
            for half, dash in (("easy", None), ("hard", "dash")):
                fig.add_trace(go.Scatter(x=[p["iteration"] for p in shown], y=[p[f"coverage_{half}"] for p in shown],
                                         mode="lines+markers", name=f"{label}: {half} half",
                                         line=dict(color=colour, dash=dash)))
        fig.update_layout(title="Coverage of easy (solid) and hard (dashed) test samples during distillation",
                          xaxis_title="iteration", yaxis_title="coverage", yaxis_range=[0, 1],
                          template="plotly_white")
        figures.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id="coverage-iterations",
                                   config={"displaylogo": False, "responsive": True}))
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
    layout = BASE_LAYOUTS.get(cfg.distill.method)  # None: MTT, the main table of every method
    table_md = table_markdown(rows, ipcs, labels, dataset=run.dataset, runs=plan.runs,
                              budget=budget_markdown(rows, records), rule=cfg.reproduce,
                              heading="" if layout is None else base_heading(cfg, layout),
                              names=None if layout is None else dict(layout.rows))
    files = {"table.md": out / "table.md", "table.csv": out / "table.csv", "results.json": out / "results.json"}
    save_text(table_md, files["table.md"])
    save_text(table_csv(rows), files["table.csv"])
    results: dict[str, Any] = {
        "dataset": run.dataset, "ipcs": ipcs, "ipc_labels": list(run.tokens), "methods": list(run.methods),
        "runs": plan.runs, "split": "test", "command": rerun_command(plan), "config": to_dict(cfg),
        "knobs": [dataclasses.asdict(run.knobs[ipc]) for ipc in ipcs if ipc in run.knobs],
        "table": rows, "cells": {c.id: records.get(c.id) for c in run.cells},
    }
    if layout is not None:
        results["base"] = {"method": cfg.distill.method, "paper_table": layout.table, "rows": dict(layout.rows)}
    if run.ablation_ipc is not None:
        rows_ab = ablation_rows(cfg, run.ablation_ipc, run.knobs, records, plan.runs)
        results["ablation"] = rows_ab
        files["ablation.md"] = out / "ablation.md"
        save_text(ablation_markdown(rows_ab, run.ablation_ipc, budget_markdown(rows_ab, records), cfg.reproduce),
                  files["ablation.md"])
    activities = coverage_activities(rows, records)
    if plan.coverage or activities:
        rows_cov = coverage_rows(run.cells, records, cfg.distill.method)
        results["coverage"] = rows_cov
        files["coverage.html"] = out / "coverage.html"
        save_text(coverage_html(rows_cov, run.dataset, activities), files["coverage.html"])
    if plan.coverage:
        files["coverage.md"] = out / "coverage.md"
        save_text(coverage_markdown(rows_cov), files["coverage.md"])
    cross_md = ""
    if plan.models:
        rows_x = cross_arch_rows(cfg, run.methods, ipcs, plan.models, run.cells, records)
        results["cross_arch"] = {"models": list(plan.models), "rows": rows_x}
        flat = [{"method": r["method"], "cells": [i for e in r["models"].values() for i in e["cells"]]} for r in rows_x]
        cross_md = cross_arch_markdown(rows_x, plan.models, cfg, dataset=run.dataset, runs=plan.runs,
                                       budget=budget_markdown(flat, records))
        files["cross_arch.md"], files["cross_arch.csv"] = out / "cross_arch.md", out / "cross_arch.csv"
        save_text(cross_md, files["cross_arch.md"])
        save_text(cross_arch_csv(rows_x), files["cross_arch.csv"])
    save_json(results, files["results.json"])
    return ReproduceResult(out, table_md, files, run.computed, run.reused, results, cross_md)


#: Keys every ``results.json`` has (:func:`write_outputs`); :func:`read_results` checks them.
RESULTS_KEYS = ("dataset", "ipcs", "ipc_labels", "methods", "runs", "config", "knobs", "table", "cells")


def read_results(folder: str | Path) -> dict[str, Any]:
    """The ``results.json`` that :func:`write_outputs` left in a `bench reproduce` ``--out`` folder.

    Raises :class:`InvalidArgument` (one line) when the folder has none, or the file is not one.
    """
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise InvalidArgument(f"{folder} has no results.json: expected the --out folder of a `bench reproduce` run")
    try:
        results = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{path} is not valid JSON ({exc})") from None
    missing = [key for key in RESULTS_KEYS if not isinstance(results, dict) or key not in results]
    if missing:
        raise InvalidArgument(f"{path} is not a `bench reproduce` results file: it has no {', '.join(missing)}")
    return results
