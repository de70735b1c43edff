"""One self-contained HTML page that shows what ``tune`` did for a dataset.

For every IPC that has studies (``{dataset}-ipc{N}-beta`` for stage 1,
``{dataset}-ipc{N}-alpha`` for stage 2) the page shows the beta curve, the
alpha curve with pruned trials marked, the intermediate validation
accuracies of every distillation trial (pruned ones dashed), whether each
distillation did anything (matching-loss ratio, eta and pixel change over
iterations, and the coverage of the easy and hard test halves when
``distill.coverage_every`` recorded it), the final test accuracy against the
other candidates (stage 1's window alone, random selection, MTT) on validation and test, the best set's
image grid and the settings; above them, the optimal alpha and beta against
IPC.

plotly.js is embedded once in the page (no CDN), images are embedded as
base64 PNG, so the file opens offline and can be mailed around::

    build_report("sqlite:///studies/digits.db", "digits", "studies/digits-report.html")

Read from the studies (keys from :mod:`autoselmatch.records`): trial params
(or user attrs) ``beta`` / ``alpha``, trial values and intermediate values; on
the alpha study (or its best trial) the user attr ``test_accuracy`` (a
number, or ``{"mean", "std"}``) and the :class:`~autoselmatch.records.FinalRecord`
(its ``chosen``, ``baselines`` and ``summary``); each study's ``settings``; the
``*grid.png`` artifact of the study (``best-grid.png``) or of its best trial; and
the activity record (:mod:`autoselmatch.synset`) of the set files that the
alpha trials' ``result_path`` and the final record's name, where they exist.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from . import records
from ._version import __version__
from .errors import DataError
from .fileio import save_text
from .records import ALPHA, BETA, SELMATCH, STAGES, FinalRecord, parse_study_name
from .runtime import LOG
from .storage import artifact_dir_of, close_storage, open_existing_storage, safe_name
from .synset import SyntheticSet

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go

FIGURE_HEIGHT = "380px"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; }
th { background: #f4f4f4; text-align: left; } .note { color: #777; font-style: italic; }
.grid img { image-rendering: pixelated; max-width: 100%; border: 1px solid #ddd; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


@dataclass
class IpcStudies:
    """The studies of one IPC (either may be missing).

    Attributes:
        ipc: Images per class.
        beta: Stage-1 study (window start beta).
        alpha: Stage-2 study (distillation portion alpha).
    """

    ipc: int
    beta: "optuna.Study | None" = None
    alpha: "optuna.Study | None" = None


def build_report(
    storage: str,
    dataset: str,
    out: str | os.PathLike,
    *,
    prefix: str | None = None,
    artifacts: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write the HTML report of ``dataset``'s studies in ``storage`` to ``out`` (atomically).

    Args:
        storage: Storage URL (``sqlite:///studies/digits.db``, ``journal:///F.log``, ``postgresql://...``).
        dataset: Dataset name (the title, and the default study prefix and artifact folder).
        out: The HTML file to write.
        prefix: Studies ``{prefix}-ipc{N}-beta|alpha`` are read (default: the dataset name).
        artifacts: Artifact folder holding the image grids (default: where ``tune`` puts it).

    Returns:
        ``{"out", "ipcs", "figures"}``.
    """
    import optuna

    prefix = prefix or safe_name(dataset)
    spec, source = open_existing_storage(storage)
    try:
        art_dir = Path(artifacts).expanduser() if artifacts is not None else artifact_dir_of(spec, dataset)
        groups = find_studies(source, prefix)
        if not groups:
            names = ", ".join(optuna.get_all_study_names(source)) or "none"
            raise DataError(f"storage {spec.display()} holds no study named {prefix}-ipc<N>-beta or "
                            f"{prefix}-ipc<N>-alpha; it holds: {names}")
        sections = [_ipc_section(group, source, art_dir) for group in groups]
        overview = _figure_html(_optimum_figure(groups), "optimum")
    finally:
        close_storage(source)
    figures = 1 + sum(section.count('class="plotly-graph-div"') for section in sections)
    page = _page(dataset, spec.display(), overview, sections)
    out = Path(out).expanduser()
    save_text(page, out)
    LOG.info("wrote the report of %d IPC(s) of %s to %s", len(groups), dataset, out)
    return {"out": str(out), "ipcs": [g.ipc for g in groups], "figures": figures}


def find_studies(storage: "optuna.storages.BaseStorage", prefix: str) -> list[IpcStudies]:
    """The studies ``{prefix}-ipc{N}-beta|alpha`` grouped by IPC, smallest IPC first."""
    import optuna

    groups: dict[int, IpcStudies] = {}
    for name in optuna.get_all_study_names(storage):
        parsed = parse_study_name(name)
        if parsed is not None and parsed.prefix == prefix:
            group = groups.setdefault(parsed.ipc, IpcStudies(parsed.ipc))
            setattr(group, parsed.stage, optuna.load_study(study_name=name, storage=storage))
    return [groups[ipc] for ipc in sorted(groups)]


# --------------------------------------------------------------------------------------------
# Reading trials
# --------------------------------------------------------------------------------------------


def _knob(trial: "optuna.trial.FrozenTrial", name: str) -> float | None:
    """A trial's alpha or beta: its param, else its user attr."""
    value = trial.params.get(name, trial.user_attrs.get(name))
    return None if value is None else float(value)


def _trials(study: "optuna.Study | None", *states: str) -> list["optuna.trial.FrozenTrial"]:
    if study is None:
        return []
    return [t for t in study.get_trials(deepcopy=False) if t.state.name in states]


def _best(study: "optuna.Study | None") -> "optuna.trial.FrozenTrial | None":
    """The best finished grid trial (baseline trials aside)."""
    return max((t for t in _trials(study, "COMPLETE") if t.user_attrs.get(records.BASELINE) is None),
               key=lambda t: t.value, default=None)


def _final(group: IpcStudies) -> FinalRecord | None:
    return None if group.alpha is None else FinalRecord.from_attrs(group.alpha.user_attrs)


def _mean_std(value: Any) -> tuple[float, float | None] | None:
    """A recorded accuracy: a number, or ``{"mean": m, "std": s}``."""
    if isinstance(value, Mapping) and "mean" in value:
        return float(value["mean"]), None if value.get("std") is None else float(value["std"])
    if isinstance(value, (int, float)):
        return float(value), None
    return None


def _result_attrs(group: IpcStudies) -> dict[str, Any]:
    """User attrs of the final result: the alpha study's, overridden by its best trial's."""
    best = _best(group.alpha)
    return {**(group.alpha.user_attrs if group.alpha else {}), **(best.user_attrs if best else {})}


def _grid_image(group: IpcStudies, storage: "optuna.storages.BaseStorage", art_dir: Path | None) -> bytes | None:
    """PNG bytes of the best set's image grid: the alpha study's artifact, else its best trial's."""
    from optuna.artifacts import get_all_artifact_meta

    if art_dir is None or group.alpha is None:
        return None
    best = _best(group.alpha)
    metas = get_all_artifact_meta(group.alpha) + (get_all_artifact_meta(best, storage=storage) if best else [])
    for meta in metas:
        file = art_dir / meta.artifact_id
        if meta.filename.endswith("grid.png") and file.parent == art_dir and file.is_file():
            return file.read_bytes()
    return None


def _activity(path: Any) -> list[dict[str, Any]]:
    """The activity record of the set file at ``path`` (empty when there is no such readable file)."""
    if not isinstance(path, str) or not Path(path).is_file():
        return []
    try:
        return SyntheticSet.load(path).activity
    except DataError as exc:
        LOG.warning("no activity record from %s: %s", path, exc)
        return []


def _activities(group: IpcStudies) -> list[tuple[str, list[dict[str, Any]]]]:
    """(label, activity record) of every alpha trial's set and of the final set that has one."""
    found = []
    for t in _trials(group.alpha, "COMPLETE", "PRUNED", "FAIL"):
        alpha = _knob(t, ALPHA)
        label = f"trial {t.number}" + (f", alpha={alpha:g}" if alpha is not None else "")
        found.append((label, _activity(t.user_attrs.get(records.RESULT_PATH))))
    final = FinalRecord.from_attrs(group.alpha.user_attrs) if group.alpha is not None else None
    if final is not None:
        found.append((f"final set, alpha={final.alpha:g}", _activity(final.result_path)))
    return [(label, points) for label, points in found if points]


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _layout(fig: "go.Figure", title: str, x: str, y: str) -> "go.Figure":
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, template="plotly_white",
                      margin=dict(l=60, r=20, t=50, b=50), legend=dict(orientation="h", y=-0.2))
    return fig


def _on_line(trial: "optuna.trial.FrozenTrial", line: Mapping[str, float]) -> bool:
    """Whether ``trial`` lies on ``line`` (``{"beta": b}``: the alpha search at b; ``{"alpha": a}``: the
    beta refinement at a); a trial without a knob of it lies on it (older trials)."""
    return all(_knob(trial, k) is None or abs(_knob(trial, k) - v) < 1e-6 for k, v in line.items())


def _curve_figure(study: "optuna.Study", knob: str, ipc: int, line: Mapping[str, float] | None = None,
                  stage: str | None = None) -> "go.Figure":
    """Validation accuracy against ``knob`` on ``line`` (default: the study's fixed knobs): finished
    trials joined by a line, pruned ones as crosses; ``stage`` names the search in the title."""
    import plotly.graph_objects as go

    line = study.user_attrs.get(records.FIXED) or {} if line is None else line
    mine = [t for t in _trials(study, "COMPLETE", "PRUNED") if _knob(t, knob) is not None and _on_line(t, line)
            and t.user_attrs.get(records.BASELINE) is None]
    done = sorted((t for t in mine if t.state.name == "COMPLETE"), key=lambda t: _knob(t, knob))
    pruned = [t for t in mine if t.state.name == "PRUNED" and t.intermediate_values]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[_knob(t, knob) for t in done], y=[t.value for t in done], mode="lines+markers", name="finished",
        text=[f"trial {t.number}" for t in done],
    ))
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        fig.add_trace(go.Scatter(
            x=[_knob(t, knob) for t in pruned], y=last, mode="markers", name="pruned (last report)",
            marker=dict(symbol="x", size=10, color="#d62728"), text=[f"trial {t.number}" for t in pruned],
        ))
    best = max(done, key=lambda t: t.value, default=None)
    if best is not None:
        fig.add_trace(go.Scatter(x=[_knob(best, knob)], y=[best.value], mode="markers", name=f"best {knob}",
                                 marker=dict(symbol="star", size=16, color="#2ca02c")))
    stage = stage or ("stage 1" if knob == BETA else "stage 2")
    return _layout(fig, f"IPC {ipc}, {stage}: validation accuracy vs {knob}", knob, "validation accuracy")


def _intermediate_figure(study: "optuna.Study", ipc: int) -> "go.Figure":
    """Every distillation trial's reported accuracies by step; pruned trials dashed and red."""
    import plotly.graph_objects as go

    fig = go.Figure()
    method = records.study_method(study.user_attrs)  # names the "mtt" baseline
    for t in _trials(study, "COMPLETE", "PRUNED", "FAIL"):
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        alpha, baseline = _knob(t, ALPHA), t.user_attrs.get(records.BASELINE)
        label = f"trial {t.number}" + (f", {records.label(baseline, method)}" if baseline is not None
                                       else f", alpha={alpha:g}" if alpha is not None else "")
        pruned = t.state.name != "COMPLETE"
        fig.add_trace(go.Scatter(
            x=steps, y=[t.intermediate_values[s] for s in steps], mode="lines+markers",
            name=label + (f" ({t.state.name.lower()})" if pruned else ""),
            line=dict(dash="dash", color="#d62728") if pruned else None,
        ))
    return _layout(fig, f"IPC {ipc}, stage 2: intermediate validation accuracy", "step", "validation accuracy")


ACTIVITY_PANELS = (("loss_ratio", "loss ratio (end / start)"), ("eta", "eta"),
                   ("pixel_change", "pixel change (std units)"))
COVERAGE_PANELS = (("coverage_easy", "coverage, easy half"), ("coverage_hard", "coverage, hard half"))


def activity_figure(series: list[tuple[str, list[dict[str, Any]]]], title: str) -> "go.Figure":
    """Whether distillations did anything: one panel per activity quantity against iteration, one line per set.

    Args:
        series: (label, activity record) per set (see :mod:`autoselmatch.synset`).
        title: The figure's title.

    Coverage panels (easy and hard test halves) are added when some record holds them.
    """
    import plotly.graph_objects as go
    from plotly.colors import DEFAULT_PLOTLY_COLORS
    from plotly.subplots import make_subplots

    panels = list(ACTIVITY_PANELS)
    panels += [p for p in COVERAGE_PANELS if any(p[0] in point for _, points in series for point in points)]
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        subplot_titles=[name for _, name in panels])
    for k, (label, points) in enumerate(series):
        colour = DEFAULT_PLOTLY_COLORS[k % len(DEFAULT_PLOTLY_COLORS)]
        for row, (key, _) in enumerate(panels, start=1):
            shown = [p for p in points if p.get(key) is not None]
            if shown:
                fig.add_trace(go.Scatter(x=[p["iteration"] for p in shown], y=[p[key] for p in shown],
                                         mode="lines+markers", name=label, legendgroup=label, showlegend=row == 1,
                                         line=dict(color=colour)), row=row, col=1)
    _layout(fig, title, "", "")
    fig.update_xaxes(title_text="iteration", row=len(panels), col=1)
    fig.update_layout(height=220 * len(panels) + 120)
    return fig


def _accuracy_figure(group: IpcStudies) -> "go.Figure | None":
    """Test accuracy of the chosen set beside each baseline's (``None`` when none was recorded)."""
    import plotly.graph_objects as go

    test = _mean_std(_result_attrs(group).get(records.TEST_ACCURACY))
    if test is None:
        return None
    final = _final(group)
    chosen = final.chosen if final is not None else None
    method = records.study_method(group.alpha.user_attrs) if group.alpha is not None else "mtt"
    bars = {f"chosen: {records.label(chosen, method)}" if chosen else "autoselmatch": test}
    made = _mean_std((final.selmatch or {}).get(records.TEST_ACCURACY)) if final is not None else None
    if made is not None and chosen != SELMATCH:  # tune.choose_on = final makes SelMatch's set when it loses too
        bars[records.label(SELMATCH, method)] = made
    for name, baseline in ((final.baselines or {}) if final is not None else {}).items():
        value = _mean_std(baseline.get(records.TEST_ACCURACY))
        if value is not None and name != chosen:
            bars[records.label(name, method)] = value
    fig = go.Figure(go.Bar(x=list(bars), y=[v[0] for v in bars.values()],
                           error_y=dict(type="data", array=[v[1] or 0.0 for v in bars.values()]),
                           marker_color=["#2ca02c"] + ["#7f7f7f"] * (len(bars) - 1)))
    title = "test accuracy vs baselines" if len(bars) > 1 else "test accuracy"
    return _layout(fig, f"IPC {group.ipc}: {title}", "", "test accuracy")


def _optimum(group: IpcStudies, knob: str) -> float | None:
    """The best SelMatch point's ``knob``: the final record's (after any refinement), else the best
    trial's of the knob's own stage."""
    final = _final(group)
    if final is not None and final.selmatch and final.selmatch.get(knob) is not None:
        return float(final.selmatch[knob])
    best = _best(getattr(group, knob))
    return None if best is None else _knob(best, knob)


def _optimum_figure(groups: list[IpcStudies]) -> "go.Figure":
    """Best alpha and best beta against IPC."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for knob, colour in ((BETA, "#1f77b4"), (ALPHA, "#ff7f0e")):
        points = [(g.ipc, _optimum(g, knob)) for g in groups]
        points = [(ipc, value) for ipc, value in points if value is not None]
        fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers",
                                 name=f"best {knob}", line=dict(color=colour)))
    fig.update_xaxes(type="category")
    return _layout(fig, "Optimal alpha and beta vs IPC", "IPC", "value")


def _figure_html(fig: "go.Figure", div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, default_height=FIGURE_HEIGHT, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


# --------------------------------------------------------------------------------------------
# Page
# --------------------------------------------------------------------------------------------


def _summary_table(group: IpcStudies) -> str:
    rows: list[tuple[str, str]] = []
    for stage in STAGES:
        study = getattr(group, stage)
        if study is None:
            rows.append((f"stage {STAGES.index(stage) + 1} ({stage})", "not run"))
            continue
        counts = {s: len(_trials(study, s)) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
        best = _best(study)
        value = f"best {stage} = {_knob(best, stage):g}, validation accuracy {100 * best.value:.2f} % " \
            f"(trial {best.number})" \
            if best is not None and _knob(best, stage) is not None else "no finished trial"
        rows.append((f"stage {STAGES.index(stage) + 1}: {study.study_name}",
                     f"{value}; trials: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)))
    recorded = _result_attrs(group).get(records.TEST_ACCURACY)
    test = _mean_std(recorded)
    if test is not None:  # a percentage as everywhere; no spread for a single run
        runs = len(recorded.get("accuracies") or []) if isinstance(recorded, Mapping) else 1
        spread = f" ± {100 * test[1]:.2f}" if test[1] is not None and runs != 1 else ""
        count = f" ({runs} run{'' if runs == 1 else 's'})" if runs else ""
        rows.append(("test accuracy", f"{100 * test[0]:.2f}{spread} %{count}"))
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _percent(value: Any) -> str:
    shown = _mean_std(value)
    if shown is None:
        return "-"
    spread = f" ± {100 * shown[1]:.2f}" if shown[1] and len(value.get("accuracies") or []) != 1 else ""
    return f"{100 * shown[0]:.2f}{spread} %"


def _baselines_table(group: IpcStudies) -> str:
    """Every candidate of the final choice: validation score (of its trials, and of its final set under
    ``tune.choose_on = final``), test accuracy, which one was exported."""
    final = _final(group)
    if final is None or final.baselines is None:
        return ""
    best = _best(group.alpha)
    grid = final.selmatch or {}
    point = f": alpha {grid[ALPHA]:g}, beta {grid[BETA]:g}" if ALPHA in grid and BETA in grid else ""
    if grid.get(records.FINAL_AUGMENTS):  # tune.final_augments: the augmentation its final set kept
        point += f"; trained with {(grid.get(records.EVALUATION) or {}).get('augment', '?')}"
    val = grid.get(records.VAL_ACCURACY, None if best is None else best.value)
    test = final.test_accuracy if final.chosen == SELMATCH else grid.get(records.TEST_ACCURACY)
    rows = [(SELMATCH, f" (best grid point{point})", val, grid.get(records.FINAL_VAL_ACCURACY), test, "")]
    for name, baseline in final.baselines.items():
        state = baseline.get("state")
        detail = f" (beta {baseline[BETA]:g})" if BETA in baseline else ""  # the window's start
        rows.append((name, detail, baseline.get(records.VAL_ACCURACY), baseline.get(records.FINAL_VAL_ACCURACY),
                     baseline.get(records.TEST_ACCURACY), "" if state == "complete" else f" ({state})"))
    method = records.study_method(group.alpha.user_attrs) if group.alpha is not None else "mtt"
    on_final = final.choose_on == "final"
    body = "".join(
        f"<tr><td>{html.escape(records.label(name, method) + detail)}</td><td>{html.escape(_percent(val) + note)}</td>"
        + (f"<td>{html.escape(_percent(final_val))}</td>" if on_final else "")
        + f"<td>{html.escape(_percent(test) if test is not None else 'not evaluated (not chosen)')}</td>"
        f"<td>{'exported' if name == final.chosen else ''}</td></tr>"
        for name, detail, val, final_val, test, note in rows)
    summary = f"<p>{html.escape(final.summary)}</p>" if final.summary else ""
    final_head = "<th>validation accuracy (final set, compared)</th>" if on_final else ""
    return (f'<h3>Baselines</h3>{summary}<table id="ipc{group.ipc}-baselines"><tr><th>candidate</th>'
            f"<th>validation accuracy (trials)</th>{final_head}<th>test accuracy</th><th></th></tr>{body}</table>")


def _ipc_section(group: IpcStudies, storage: "optuna.storages.BaseStorage", art_dir: Path | None) -> str:
    parts = [f'<section id="ipc-{group.ipc}"><h2>IPC {group.ipc}</h2>', _summary_table(group)]
    if group.beta is not None:
        parts.append(_figure_html(_curve_figure(group.beta, BETA, group.ipc), f"ipc{group.ipc}-beta"))
    if group.alpha is not None:
        parts.append(_figure_html(_curve_figure(group.alpha, ALPHA, group.ipc), f"ipc{group.ipc}-alpha"))
        refine = group.alpha.user_attrs.get(records.REFINE_ATTR)
        if isinstance(refine, Mapping) and refine.get(ALPHA) is not None:
            line = {ALPHA: float(refine[ALPHA])}
            parts.append(_figure_html(_curve_figure(group.alpha, BETA, group.ipc, line,
                                                    f"beta refined at alpha {refine[ALPHA]:g}"),
                                      f"ipc{group.ipc}-refine"))
        parts.append(_figure_html(_intermediate_figure(group.alpha, group.ipc), f"ipc{group.ipc}-steps"))
        activities = _activities(group)
        if activities:
            fig = activity_figure(activities, f"IPC {group.ipc}, stage 2: did the distillation move the set?")
            parts.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"ipc{group.ipc}-activity",
                                     config={"displaylogo": False, "responsive": True}))
        else:
            parts.append('<p class="note">No activity record found (no readable set file of a distillation '
                         'trial for this IPC).</p>')
    accuracy = _accuracy_figure(group)
    parts.append(_baselines_table(group))
    if accuracy is not None:
        parts.append(_figure_html(accuracy, f"ipc{group.ipc}-test"))
    else:
        parts.append('<p class="note">No test accuracy recorded for this IPC yet.</p>')
    grid = _grid_image(group, storage, art_dir)
    if grid is not None:
        data = base64.b64encode(grid).decode("ascii")
        image = f'<img alt="image grid, IPC {group.ipc}" src="data:image/png;base64,{data}">'
        parts.append(f'<h3>Best set (blue: D_select, orange: D_distill)</h3><div class="grid">{image}</div>')
    else:
        parts.append('<p class="note">No image grid artifact found for this IPC.</p>')
    for stage in STAGES:
        study = getattr(group, stage)
        settings = None if study is None else study.user_attrs.get(records.SETTINGS)
        if settings is not None:
            text = html.escape(json.dumps(settings, indent=2, sort_keys=True, default=str))
            summary = f"Settings of {html.escape(study.study_name)}"
            parts.append(f"<details><summary>{summary}</summary><pre>{text}</pre></details>")
    parts.append("</section>")
    return "\n".join(parts)


def _page(dataset: str, storage: str, overview: str, sections: list[str]) -> str:
    from plotly.offline import get_plotlyjs

    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    title = f"autoselmatch report: {html.escape(dataset)}"
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title><style>{STYLE}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>{title}</h1>",
        f'<p class="note">Storage {html.escape(storage)}; autoselmatch {__version__}; generated {created}.</p>',
        overview,
        *sections,
        "</body></html>",
    ])


__all__ = ["IpcStudies", "activity_figure", "build_report", "find_studies"]
