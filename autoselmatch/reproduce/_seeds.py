"""Tables over pipeline seeds: `bench reproduce` runs that differ only in ``--seed``, combined.

One `bench reproduce` run fixes the pipeline's random draws (the split, the scores' and the experts'
networks, the distillations) by its ``--seed`` and varies only the evaluation networks (``--runs``).
Its spread is therefore the networks' alone. Rerunning with other seeds and combining the runs here
gives what the paper reports: each seed's mean over its networks, then the mean ± std across seeds,
and the paired differences against one method (same seed, so shared draws cancel).

    combine_seeds([Path("out-s0"), Path("out-s1"), Path("out-s2")], Path("out-seeds"), against="selmatch")
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import ReproduceConfig, RunConfig, from_dict, to_dict
from ..errors import InvalidArgument
from ..fileio import save_json, save_text
from ._tables import (_stats, ablation_markdown, barely_distilled, budget_markdown, coverage_markdown, read_results,
                      table_markdown)

#: Top-level settings that may differ between the runs combined: the seed, and where they ran.
FREE_SETTINGS = ("seed", "cache_dir", "device")


@dataclass
class SeedsResult:
    """What :func:`combine_seeds` wrote.

    Attributes:
        out: The output folder.
        table_md: ``seeds.md``: the combined table, the knobs per seed and the paired differences.
        files: Name -> path of every output file.
        results: The content of ``seeds.json``.
    """

    out: Path
    table_md: str
    files: dict[str, Path]
    results: dict[str, Any]


def combine_seeds(folders: Sequence[Path], out: Path, *, against: str | None = None) -> SeedsResult:
    """Combine the ``results.json`` of `bench reproduce` output ``folders`` made with different seeds.

    Args:
        folders: Two or more ``--out`` folders of finished (or partly finished) runs whose settings
            differ only in :data:`FREE_SETTINGS`.
        out: Folder for ``seeds.md`` and ``seeds.json`` (created).
        against: Method the paired differences are taken against (default: ``selmatch`` when the
            runs have it, else their first method).

    Returns:
        The files written and their content. A (method, IPC) that a run did not score is left out
        of that seed's numbers; each cell of the tables says how many seeds it has when fewer than all.
    """
    runs = [read_results(folder) for folder in folders]
    seeds = check_combinable(folders, runs)
    methods = list(dict.fromkeys(m for run in runs for m in run["methods"]))
    ipcs = list(dict.fromkeys(i for run in runs for i in run["ipcs"]))
    labels = {ipc: f" ({token})" for run in runs for ipc, token in zip(run["ipcs"], run["ipc_labels"])
              if token.endswith("%")}
    if against is None:
        against = "selmatch" if "selmatch" in methods else methods[0]
    elif against not in methods:
        raise InvalidArgument(f"--against {against!r} is not a method of these runs; they have: {', '.join(methods)}")
    rule = from_dict(ReproduceConfig, runs[0]["config"].get("reproduce", {}), "reproduce")
    rows = seed_rows(runs, seeds, methods, ipcs, rule)
    differences = paired_differences(runs, seeds, methods, ipcs, against)
    budgets = {budget_markdown(run["table"], {k: v for k, v in run["cells"].items() if v}) for run in runs}
    networks = sorted({run["runs"] for run in runs})
    heading = (f"Combined over {len(seeds)} pipeline seeds ({', '.join(map(str, seeds))}): each seed's mean over its "
               f"{' or '.join(map(str, networks))} network(s) per set, then the mean ± std across the seeds "
               "(population std, as for the networks).")
    base = runs[0].get("base")  # a base method's table (paper Table 7 / 8): its rows' names
    names = dict(base["rows"]) if base else {}
    if base:
        heading += f" Paper Table {base['paper_table']} layout, base method {base['method']}."
    md = table_markdown(rows, ipcs, labels, dataset=runs[0]["dataset"], runs=len(seeds),
                        budget=budgets.pop() if len(budgets) == 1 else "", rule=rule, heading=heading, names=names,
                        over="pipeline seeds")
    md += _short_rows_note(rows, len(seeds))
    md += "\n" + knobs_markdown(runs, seeds) + "\n" + differences_markdown(differences, ipcs, labels, against,
                                                                          len(seeds), names)
    ablation = seed_ablation(runs, seeds, rule)
    for ipc in dict.fromkeys(r["ipc"] for r in ablation):
        md += f"\nOver the {len(seeds)} pipeline seeds, as above. " + ablation_markdown(
            [r for r in ablation if r["ipc"] == ipc], ipc, rule=rule)
    coverage = seed_coverage(runs, seeds)
    if coverage:
        md += "\nMean over the seeds, each against its own reference network. " + coverage_markdown(coverage, seeds=True)
    results = {"dataset": runs[0]["dataset"], "seeds": seeds, "folders": [str(f) for f in folders],
               "ipcs": ipcs, "methods": methods, "against": against, "table": rows, "differences": differences,
               "ablation": ablation, "coverage": coverage,
               "knobs": {str(seed): run.get("knobs", []) for seed, run in zip(seeds, runs)}}
    files = {"seeds.md": out / "seeds.md", "seeds.json": out / "seeds.json"}
    save_text(md, files["seeds.md"])
    save_json(results, files["seeds.json"])
    return SeedsResult(out, md, files, results)


def check_combinable(folders: Sequence[Path], runs: Sequence[dict[str, Any]]) -> list[int]:
    """The runs' seeds, after checking that there are two or more runs, of distinct seeds, whose settings
    (and split) differ only in :data:`FREE_SETTINGS`; else a one-line :class:`InvalidArgument`. A setting
    that one run lacks (a run made before autoselmatch added it) counts as its built-in default."""
    if len(runs) < 2:
        raise InvalidArgument(f"combining seeds needs 2 or more `bench reproduce` folders, got {len(runs)}")
    seeds = [run["config"].get("seed") for run in runs]
    for i, seed in enumerate(seeds):
        if seed in seeds[:i]:
            first = seeds.index(seed)
            raise InvalidArgument(f"{folders[first]} and {folders[i]} were both run with --seed {seed}; combine runs "
                                  "of different seeds")
    defaults = _flat(json.loads(json.dumps(to_dict(RunConfig()))))  # as a results.json stores them: lists, not tuples
    reference = {**defaults, **_flat({**runs[0]["config"], "split": runs[0].get("split")})}
    for folder, run in zip(folders[1:], runs[1:]):
        flat = {**defaults, **_flat({**run["config"], "split": run.get("split")})}
        for key in sorted(set(reference) | set(flat)):
            if key not in FREE_SETTINGS and reference.get(key) != flat.get(key):
                raise InvalidArgument(f"{folders[0]} and {folder} differ in {key} ({reference.get(key)!r} vs "
                                      f"{flat.get(key)!r}); only {', '.join(FREE_SETTINGS)} may differ between "
                                      "the runs combined")
    return seeds


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"section.key": value}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "options":  # a model's options compare as one value
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _row(run: dict[str, Any], method: str, ipc: int | None) -> dict[str, Any] | None:
    """A run's main-table row of (method, IPC) with a finished mean (``full``: its one row), else None."""
    row = next((r for r in run["table"] if r["method"] == method and r["ipc"] in (ipc, None)), None)
    return row if row is not None and row.get("mean") is not None else None


def seed_rows(runs: Sequence[dict[str, Any]], seeds: Sequence[int], methods: Sequence[str], ipcs: Sequence[int],
              rule: ReproduceConfig) -> list[dict[str, Any]]:
    """One row per (method, IPC) in the main table's format (:func:`table_markdown`), over the seeds.

    ``accuracies``: each seed's mean over its networks; ``mean``/``std``: across them; ``loss_ratio`` and
    ``pixel_change``: the seeds' means (distilled sets); ``barely_distilled``: by ``rule`` on those means.
    """
    rows = []
    for method in methods:
        for ipc in ([None] if method == "full" else ipcs):
            found = [(seed, row) for seed, row in ((s, _row(run, method, ipc)) for s, run in zip(seeds, runs))
                     if row is not None]
            rows.append({"method": method, "ipc": ipc, "augment": found[0][1].get("augment") if found else None,
                         **_across(found, rule)})
    return rows


def _across(found: Sequence[tuple[int, dict[str, Any]]], rule: ReproduceConfig) -> dict[str, Any]:
    """What one row of several seeds (``(seed, row)`` pairs with finished means) holds: ``seeds``,
    ``accuracies`` (each seed's mean), ``mean``/``std`` across them, the seeds' mean ``loss_ratio`` and
    ``pixel_change``, and ``barely_distilled`` by ``rule`` on those."""
    means = [row["mean"] for _, row in found]
    ratio = _mean_of(row.get("loss_ratio") for _, row in found)
    pixels = _mean_of(row.get("pixel_change") for _, row in found)
    mean, std = _stats(means) if means else (None, None)
    return {"seeds": [seed for seed, _ in found], "accuracies": means, "mean": mean, "std": std,
            "loss_ratio": ratio, "pixel_change": pixels, "barely_distilled": barely_distilled(ratio, pixels, rule)}


def _mean_of(values: Any) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def paired_differences(runs: Sequence[dict[str, Any]], seeds: Sequence[int], methods: Sequence[str],
                       ipcs: Sequence[int], against: str) -> list[dict[str, Any]]:
    """Per (method, IPC), method minus ``against``, seed by seed: ``{"method", "ipc", "seeds", "diffs", "mean", "se"}``
    (points of accuracy as fractions; ``se``: std with one degree of freedom over sqrt(n), None for one seed)."""
    out = []
    for method in methods:
        if method in (against, "full"):
            continue
        for ipc in ipcs:
            pairs = [(seed, _row(run, method, ipc), _row(run, against, ipc)) for seed, run in zip(seeds, runs)]
            diffs = [(seed, a["mean"] - b["mean"]) for seed, a, b in pairs if a is not None and b is not None]
            values = [d for _, d in diffs]
            out.append({"method": method, "ipc": ipc, "seeds": [s for s, _ in diffs], "diffs": values,
                        "mean": float(np.mean(values)) if values else None,
                        "se": float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None})
    return out


#: What identifies an ablation row (paper Table 3) across runs.
_ABLATION_KEY = ("ipc", "select_init", "partial_update", "combined_augmentation")


def seed_ablation(runs: Sequence[dict[str, Any]], seeds: Sequence[int], rule: ReproduceConfig) -> list[dict[str, Any]]:
    """The ablation rows (:func:`~._tables.ablation_rows`) of the runs that computed one, over the seeds: each
    seed's mean, then their mean ± std; a row finished in fewer seeds than all says so in its label. The set's
    alpha and beta are the first seed's (tuned knobs may differ by seed: see the knobs per seed)."""
    found: dict[tuple[Any, ...], list[tuple[int, dict[str, Any]]]] = {}
    for seed, run in zip(seeds, runs):
        for row in run.get("ablation") or []:
            if row.get("mean") is not None:
                found.setdefault(tuple(row[k] for k in _ABLATION_KEY), []).append((seed, row))
    rows = []
    for entries in found.values():
        first = entries[0][1]
        label = first["label"] + ("" if len(entries) == len(seeds) else f" ({len(entries)} of {len(seeds)} seeds)")
        rows.append({**{k: first[k] for k in (*_ABLATION_KEY, "set", "alpha", "beta")}, "label": label,
                     **_across(entries, rule)})
    return rows


def seed_coverage(runs: Sequence[dict[str, Any]], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Per (method, IPC) with coverage in any run: the mean ``coverage``, ``easy`` and ``hard`` over the seeds
    that measured it, and those ``seeds``."""
    found: dict[tuple[str, int | None], list[tuple[int, dict[str, Any]]]] = {}
    for seed, run in zip(seeds, runs):
        for row in run.get("coverage") or []:
            found.setdefault((row["method"], row["ipc"]), []).append((seed, row))
    return [{"method": method, "ipc": ipc, "seeds": [seed for seed, _ in entries],
             **{key: float(np.mean([row[key] for _, row in entries])) for key in ("coverage", "easy", "hard")}}
            for (method, ipc), entries in found.items()]


def _short_rows_note(rows: Sequence[dict[str, Any]], total: int) -> str:
    short = [r["method"] + ("" if r["ipc"] is None else f" at IPC {r['ipc']}") + f" ({len(r['seeds'])})"
             for r in rows if r["mean"] is not None and len(r["seeds"]) < total]
    return f"\nFewer than {total} seeds (their count): {', '.join(short)}.\n" if short else ""


def knobs_markdown(runs: Sequence[dict[str, Any]], seeds: Sequence[int]) -> str:
    """One line per IPC: each seed's (alpha, beta) and where it came from (given, a study, tuned)."""
    lines = []
    by_ipc: dict[int, list[str]] = {}
    for seed, run in zip(seeds, runs):
        for k in run.get("knobs", []):
            sources = " / ".join(dict.fromkeys(str(k[f"{knob}_source"]) for knob in ("alpha", "beta")
                                               if k[knob] is not None))
            by_ipc.setdefault(k["ipc"], []).append(f"seed {seed} ({_knob(k['alpha'])}, {_knob(k['beta'])}; {sources})")
    for ipc, parts in by_ipc.items():
        lines.append(f"- IPC {ipc}: " + ", ".join(parts))
    return ("SelMatch's (alpha, beta) per seed:\n" + "\n".join(lines) + "\n") if lines else ""


def _knob(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"


def differences_markdown(differences: Sequence[dict[str, Any]], ipcs: Sequence[int], labels: dict[int, str],
                         against: str, total: int, names: dict[str, str] | None = None) -> str:
    """Methods x IPCs: the mean paired difference against ``against`` in points, ± its standard error;
    ``names``: row labels by method (a base method's table)."""
    names = names or {}
    lines = [f"Paired differences against {names.get(against, against)} (points): each seed's difference of the "
             f"two means, then the mean ± standard error across the seeds (sample std / sqrt(n); a cell with fewer "
             f"than {total} seeds shows its n in brackets).", "",
             "| method | " + " | ".join(f"IPC {ipc}{labels.get(ipc, '')}" for ipc in ipcs) + " |",
             "|---|" + "---:|" * len(ipcs)]
    for method in dict.fromkeys(d["method"] for d in differences):
        cells = []
        for ipc in ipcs:
            d = next(d for d in differences if d["method"] == method and d["ipc"] == ipc)
            if d["mean"] is None:
                cells.append("—")
                continue
            text = f"{100 * d['mean']:+.2f}" + ("" if d["se"] is None else f" ± {100 * d['se']:.2f}")
            cells.append(text + (f" ({len(d['diffs'])})" if len(d["diffs"]) < total else ""))
        lines.append(f"| {names.get(method, method)} − {names.get(against, against)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
