"""Regret of tune's searches (issue 16): how far each search's chosen (beta, alpha) falls below the grid's best.

1. A table: every point of the beta grid (window accuracy, stage 1) and of the
   beta x alpha grid (a distillation scored like an alpha trial, stage 2),
   each with ``--replicates`` replicates (the seeds ``tune`` gives replicate r),
   computed once by the real objectives (digits by default; ``--preset`` and
   ``--set`` for another dataset) and cached in ``OUT/table.json``
   (a rerun resumes). Each alpha replicate's set is also evaluated on the test
   split: a point's reference accuracy is the mean over its replicates.
2. Each search runs the real pipeline (:func:`autoselmatch.tune.tune`: both
   stages, the optional beta refinement, the controller and the final choice)
   on a fresh study, with objectives that look the table up, for several
   controller seeds: seed ``s`` reads the replicates in the ``s``-th of their
   orders (permutations), the same order at every point (so paired points stay
   paired), so every seed sees other noise and ``replicates!`` seeds see every
   order once (6 for 3 replicates).
   With ``--alpha-fraction F``, every search runs again with ``tune.alpha_fraction = F``:
   the alpha trials' sets are rescored on validation after F of the final budget.
3. Per search: regret = reference accuracy of the grid's best point minus that
   of the chosen point (test split, percentage points), median and worst over
   seeds, and compute = the table's trial seconds the search used, as a share of
   the two-stage grid search's (``--search grid``: the beta grid, then the alpha
   grid at its beta) and of the full beta x alpha grid's (every alpha point
   once, no beta stage: what finding the reference best without a search costs).

    OMP_NUM_THREADS=1 nice -n 5 python bench/tune_regret.py --out /tmp/regret --replicates 3 --seeds 6
    python bench/tune_regret.py --preset fashion-mnist --set distill.iterations=40 ... --cache-dir C
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import optuna

from autoselmatch.config import apply_overrides, load_preset, parse_assignment
from autoselmatch.tune import SelMatchObjectives, StageContext

SMALL = {  # digits, small enough for a CPU: a trial distils the full (short) budget, so its set is the final one
    "distill.iterations": 40, "tune.trial_iterations": 40, "distill.eval_every": 20, "distill.checkpoint_every": 20,
    "tune.beta_grid": [0.0, 0.2, 0.4, 0.6], "tune.alpha_grid": [0.2, 0.4, 0.6, 0.8, 1.0],
}
#: name -> (strategy, z, max_seeds, refine_beta, patience, the beta stage's strategy)
SEARCH_SETTINGS = {
    "line, z 0, 1 seed (the walk before issue 16)": ("line", 0.0, 1, False, 0, "line"),
    "line, z 1, 1 seed": ("line", 1.0, 1, False, 0, "line"),
    "line, z 1, max 2 seeds": ("line", 1.0, 2, False, 0, "line"),
    "line, z 1, max 3 seeds": ("line", 1.0, 3, False, 0, "line"),
    "line, z 1, 1 seed, patience 1 (default)": ("line", 1.0, 1, False, 1, "line"),
    "grid": ("grid", 0.0, 1, False, 0, "grid"),
    "line, beta grid, z 1, 1 seed, patience 1 (default since 2026-12-01)": ("line", 1.0, 1, False, 1, "grid"),
    "tpe": ("tpe", 0.0, 1, False, 0, "tpe"),
    "line + refine beta, z 1, 1 seed": ("line", 1.0, 1, True, 0, "line"),
    "line + refine beta, z 1, max 2 seeds": ("line", 1.0, 2, True, 0, "line"),
    "line + refine beta, z 1, 1 seed, patience 1": ("line", 1.0, 1, True, 1, "line"),
    "line + refine beta, z 1, max 2 seeds, patience 1": ("line", 1.0, 2, True, 1, "line"),
    "grid + refine beta": ("grid", 0.0, 1, True, 0, "grid"),
    "line + refine beta, beta grid, z 1, max 2 seeds (large-validation presets since 2026-12-01)":
        ("line", 1.0, 2, True, 0, "grid"),
}


def table_config(preset: str, assignments: list[str], out: Path, cache_dir: Path | None, device: str):
    """The run settings of the table: ``preset`` (:data:`SMALL` on top of ``digits``), then the ``--set``
    assignments; trials are never pruned."""
    overrides = dict(SMALL) if preset == "digits" else {}
    overrides.update(parse_assignment(a) for a in assignments)
    overrides.update({"cache_dir": str(cache_dir or out / "cache"), "device": device, "tune.pruner": "none"})
    return apply_overrides(load_preset(preset), overrides)


def build_table(out: Path, replicates: int, ipc: int, cfg, alpha_fraction: float | None = None) -> dict:
    """The cached table ``{"beta": {b: [[val, seconds, accuracies], ...]}, "alpha": {"b,a": [[val, seconds, test],
    ...]}}``, filled where missing; with ``alpha_fraction`` also ``"alpha@F": {"b,a": [[val, seconds], ...]}``:
    each replicate's set scored as ``tune.alpha_fraction = F`` scores it (validation, F of the final budget)."""
    from autoselmatch.distill import DistillResult
    from autoselmatch.evaluate import evaluate_set

    path = out / "table.json"
    table = json.loads(path.read_text()) if path.is_file() else {"beta": {}, "alpha": {}}
    objs = SelMatchObjectives(cfg)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    (out / "art").mkdir(parents=True, exist_ok=True)

    def trial(r: int) -> optuna.Trial:
        study.enqueue_trial({}, user_attrs={"replicate": r})
        return study.ask()

    def save() -> None:
        path.write_text(json.dumps(table, indent=1))

    beta_ctx = StageContext(cfg, ipc, "bench-beta", out / "runs" / "beta", out / "art")
    beta_objective = objs.beta(beta_ctx)
    betas = [b for b in cfg.tune.beta_grid if b <= objs.max_beta(ipc) + 1e-9]
    for beta in betas:
        rows = table["beta"].setdefault(str(beta), [])
        while len(rows) < replicates:
            t = trial(len(rows))
            started = time.perf_counter()
            value = beta_objective(beta, t)
            rows.append([value, time.perf_counter() - started, t.user_attrs["val_accuracy"]["accuracies"]])
            save()
    for beta in betas:
        alpha_ctx = StageContext(cfg, ipc, "bench-alpha", out / "runs" / f"alpha-beta{beta:g}", out / "art")
        alpha_objective = objs.alpha(alpha_ctx, beta)
        for alpha in cfg.tune.alpha_grid:
            rows = table["alpha"].setdefault(f"{beta},{alpha}", [])
            while len(rows) < replicates:
                t = trial(len(rows))
                started = time.perf_counter()
                value = alpha_objective(alpha, t)
                seconds = time.perf_counter() - started
                result = DistillResult.load(t.user_attrs["result_path"])
                test = evaluate_set(objs.ds, result.images.to(objs.device), result.labels.to(objs.device),
                                    cfg=cfg.evaluate, distill_mask=result.distill_mask.to(objs.device), split="test",
                                    runs=1, seed=cfg.seed)
                rows.append([value, seconds, test.mean])
                save()
                print(f"beta {beta} alpha {alpha} replicate {len(rows) - 1}: val {value:.4f} test {test.mean:.4f} "
                      f"({seconds:.1f} s)", flush=True)
    if alpha_fraction is not None:
        score_at_fraction(table, out, replicates, cfg, objs, alpha_fraction, betas, save)
    return table


def score_at_fraction(table: dict, out: Path, replicates: int, cfg, objs, fraction: float, betas: list, save) -> None:
    """Fill ``table["alpha@F"]``: each alpha replicate's saved set on validation after ``fraction`` of the
    final budget, with the replicate's seeds and ``tune.alpha_seeds`` networks (as the objective does
    under ``tune.alpha_fraction``)."""
    from autoselmatch.distill import RESULT_FILE, DistillResult, evaluate_distilled
    from autoselmatch.tune._objectives import _point_dir
    from autoselmatch.tune._stage import replicate_seeds

    scored = table.setdefault(f"alpha@{fraction:g}", {})
    for beta in betas:
        ctx = StageContext(cfg, 0, "bench-alpha", out / "runs" / f"alpha-beta{beta:g}", out / "art")
        for alpha in cfg.tune.alpha_grid:
            rows = scored.setdefault(f"{beta},{alpha}", [])
            while len(rows) < replicates:
                r = len(rows)
                result = DistillResult.load(_point_dir(ctx, beta, alpha, None, r) / RESULT_FILE)
                started = time.perf_counter()
                val = evaluate_distilled(objs.ds, result.images.to(objs.device), result.labels.to(objs.device), cfg,
                                         distill_mask=result.distill_mask.to(objs.device), split="val",
                                         runs=cfg.tune.alpha_seeds, fraction=fraction,
                                         seed=replicate_seeds(cfg, "alpha", r)["seed"]).mean
                rows.append([val, time.perf_counter() - started])
                save()
                print(f"beta {beta} alpha {alpha} replicate {r}: val at {fraction:g} of the budget {val:.4f}", flush=True)


def merge_tables(out: Path, parts: list[Path]) -> None:
    """Write ``out/table.json``: per point, the longest list of rows among ``parts`` (tables built in shares
    from one common table, so their lists agree where they overlap)."""
    merged: dict = {}
    for part in parts:
        for section, points in json.loads(part.read_text()).items():
            for key, rows in points.items():
                have = merged.setdefault(section, {}).setdefault(key, [])
                n = min(len(have), len(rows))
                if rows[:n] != have[:n]:
                    raise SystemExit(f"{part}: {section} {key} differs from the other tables' rows; "
                                     "not one table's shares")
                if len(rows) > len(have):
                    merged[section][key] = rows
    (out / "table.json").write_text(json.dumps(merged, indent=1))


class TableObjectives:
    """:class:`autoselmatch.tune.Objectives` that look each trial up in the table instead of training:
    replicate ``r`` of a point reads the table's replicate ``order[r % replicates]``, ``order`` being the
    ``seed``-th permutation of the replicates (the first row, at a point with only one), and every
    lookup adds that row's trial seconds to ``spent``. The final set's "test accuracy" is the point's
    reference accuracy."""

    def __init__(self, table: dict, seed: int, replicates: int, reference: dict, alpha_fraction: float | None) -> None:
        self.table, self.reference = table, reference
        orders = list(itertools.permutations(range(replicates)))
        self.order = orders[seed % len(orders)]
        self.scored = None if alpha_fraction is None else table[f"alpha@{alpha_fraction:g}"]
        self.spent = 0.0

    def _row(self, rows: list, trial: optuna.Trial) -> list:
        r = self.order[trial.user_attrs.get("replicate", 0) % len(self.order)]
        row = rows[r if r < len(rows) else 0]
        self.spent += row[1]
        return row

    def max_beta(self, ipc: int) -> float:
        return 1.0

    def beta(self, ctx):
        def objective(beta: float, trial: optuna.Trial) -> float:
            row = self._row(self.table["beta"][str(beta)], trial)
            trial.set_user_attr("val_accuracy", {"mean": row[0], "accuracies": row[2]})
            return row[0]
        return objective

    def alpha(self, ctx, beta: float):
        def objective(alpha: float, trial: optuna.Trial) -> float:
            row = self._row(self.table["alpha"][f"{beta},{alpha}"], trial)
            if self.scored is None:
                return row[0]
            rescored = self._row(self.scored[f"{beta},{alpha}"], trial)  # its seconds count too
            return rescored[0]
        return objective

    def finish(self, ctx, *, alpha, beta, trial, validate=False) -> dict:
        return {"result_path": "", "test_accuracy": {"mean": self.reference[(beta, alpha)], "std": 0.0}}


def run_search(table: dict, name: str, seed: int, replicates: int, reference: dict, out: Path,
               preset: str, alpha_fraction: float | None = None) -> tuple[float, float, float]:
    """(chosen beta, chosen alpha, trial seconds) of ``autoselmatch.tune`` with search ``name`` and seed
    ``seed`` on the table's look-ups (the real pipeline: stages, refinement, controller, choice)."""
    from autoselmatch.tune import tune

    strategy, z, max_seeds, refine, patience, beta_strategy = SEARCH_SETTINGS[name]
    betas = sorted(float(b) for b in table["beta"])
    alphas = sorted({float(k.split(",")[1]) for k in table["alpha"]})
    cfg = apply_overrides(load_preset(preset), {
        "seed": seed, "tune.search": strategy, "tune.beta_search": beta_strategy, "tune.z": z,
        "tune.max_seeds": max_seeds, "tune.refine_beta": refine, "tune.patience": patience,
        "tune.beta_grid": betas, "tune.alpha_grid": alphas, "tune.alpha_start": 0.6, "tune.prior": False,
        "tune.baselines": False, "tune.pruner": "none", "device": "cpu"})
    objs = TableObjectives(table, seed, replicates, reference, alpha_fraction)
    result = tune(cfg, [10], storage=f"sqlite:///{out / 'search.db'}", artifacts=out / "art",
                  objectives=lambda cfg: objs)
    point = result.ipcs[0].optimum
    return point["beta"], point["alpha"], objs.spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/tune-regret"))
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=6, help="controller seeds (replicates! covers every order)")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="digits", help="preset of the table's runs (digits: with SMALL)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a preset value, as `autoselmatch --set` (repeatable)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="scores and experts cache (default OUT/cache)")
    parser.add_argument("--alpha-fraction", type=float, default=None,
                        help="also run every search with tune.alpha_fraction = F (the sets rescored, not redistilled)")
    parser.add_argument("--table-only", action="store_true",
                        help="fill the table and stop (to build it in shares: one process per --set tune.beta_grid)")
    parser.add_argument("--merge", type=Path, nargs="+", default=[], metavar="TABLE",
                        help="first write OUT/table.json from these tables (shares built with --table-only)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        merge_tables(args.out, args.merge)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = table_config(args.preset, args.assignments, args.out, args.cache_dir, args.device)
    table = build_table(args.out, args.replicates, args.ipc, cfg, args.alpha_fraction)
    if args.table_only:
        return
    reference = {tuple(map(float, k.split(","))): statistics.fmean(r[2] for r in rows[:args.replicates])
                 for k, rows in table["alpha"].items()}
    best = max(reference.values())
    results = {}
    fractions = [None] + ([args.alpha_fraction] if args.alpha_fraction is not None else [])
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, fraction) in enumerate((n, f) for f in fractions for n in SEARCH_SETTINGS):
            label = name if fraction is None else f"{name}, alpha_fraction {fraction:g}"
            results[label] = []
            for s in range(args.seeds):
                (Path(tmp) / f"{i}-{s}").mkdir()
                results[label].append(run_search(table, name, s, args.replicates, reference, Path(tmp) / f"{i}-{s}",
                                                 args.preset, fraction))
    grid_seconds = [spent for _, _, spent in results["grid"]]
    full_grid = sum(statistics.fmean(r[1] for r in rows[:args.replicates]) for rows in table["alpha"].values())
    print(f"\n{cfg.data.name} ipc {args.ipc}: reference best {100 * best:.2f} % at "
          f"{max(reference, key=reference.get)} (beta, alpha), {args.replicates} replicates, {args.seeds} seeds\n")
    print("| search | regret: median | worst | alpha regret at the chosen beta: median | worst "
          "| compute: share of the two-stage grid's trial seconds | share of the full beta x alpha grid's "
          "| chosen (beta, alpha) per seed |")
    print("|---|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        regrets = [100 * (best - reference[(b, a)]) for b, a, _ in runs]
        within = [100 * (max(v for (rb, _), v in reference.items() if rb == b) - reference[(b, a)])
                  for b, a, _ in runs]
        shares = [spent / g for (_, _, spent), g in zip(runs, grid_seconds)]
        picks = ", ".join(f"({b:g}, {a:g})" for b, a, _ in runs)
        print(f"| {name} | {statistics.median(regrets):.2f} | {max(regrets):.2f} | {statistics.median(within):.2f} "
              f"| {max(within):.2f} | {100 * statistics.median(shares):.0f} % "
              f"| {100 * statistics.median(spent for _, _, spent in runs) / full_grid:.0f} % | {picks} |")
    (args.out / "results.json").write_text(json.dumps({"reference": {str(k): v for k, v in reference.items()},
                                                       "runs": results}, indent=1))


if __name__ == "__main__":
    main()
