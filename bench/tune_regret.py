"""Regret of tune's searches (issue 16): how far each search's chosen (beta, alpha) falls below the grid's best.

1. A table: every point of the beta grid (window accuracy, stage 1) and of the
   beta x alpha grid (a distillation scored like an alpha trial, stage 2),
   each with ``--replicates`` replicates (the seeds ``tune`` gives replicate r),
   computed once by the real objectives on digits and cached in ``OUT/table.json``
   (a rerun resumes). Each alpha replicate's set is also evaluated on the test
   split: a point's reference accuracy is the mean over its replicates.
2. Each search runs the real :class:`~autoselmatch.tune.SearchController`
   on a fresh study whose objective looks the table up, with several
   controller seeds: seed ``s`` reads replicate ``(s + r) % replicates`` for
   its replicate ``r``, so every seed sees other noise.
3. Per search: regret = reference accuracy of the grid's best point minus that
   of the chosen point (test split, percentage points), median and worst over
   seeds, and compute = the table's trial seconds the search used, as a share of
   the grid search's.

    OMP_NUM_THREADS=1 nice -n 5 python bench/tune_regret.py --out /tmp/regret --replicates 4 --seeds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import optuna

from autoselmatch.config import apply_overrides, load_preset
from autoselmatch.storage import open_storage, parse_storage
from autoselmatch.tune import SEARCHES, SearchController, SelMatchObjectives, StageContext

SMALL = {  # digits, small enough for a CPU: a trial distils the full (short) budget, so its set is the final one
    "distill.iterations": 40, "tune.trial_iterations": 40, "distill.eval_every": 20, "distill.checkpoint_every": 20,
    "tune.beta_grid": [0.0, 0.2, 0.4, 0.6], "tune.alpha_grid": [0.2, 0.4, 0.6, 0.8, 1.0],
}
#: name -> (strategy, z, max_seeds)
SEARCH_SETTINGS = {
    "line, z 0, 1 seed (the walk before issue 16)": ("line", 0.0, 1),
    "line, z 1, 1 seed (default)": ("line", 1.0, 1),
    "line, z 1, max 2 seeds": ("line", 1.0, 2),
    "line, z 1, max 3 seeds": ("line", 1.0, 3),
    "grid": ("grid", 0.0, 1),
    "tpe": ("tpe", 0.0, 1),
}


def build_table(out: Path, replicates: int, ipc: int, device: str) -> dict:
    """The cached table ``{"beta": {b: [[val, seconds, accuracies], ...]}, "alpha": {"b,a": [[val, seconds, test],
    ...]}}``, filled where missing."""
    from autoselmatch.distill import DistillResult
    from autoselmatch.evaluate import evaluate_set

    path = out / "table.json"
    table = json.loads(path.read_text()) if path.is_file() else {"beta": {}, "alpha": {}}
    cfg = apply_overrides(load_preset("digits"), {**SMALL, "cache_dir": str(out / "cache"), "device": device,
                                                  "tune.pruner": "none"})
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
    return table


def run_search(table: dict, name: str, seed: int, replicates: int, db: Path) -> tuple[float, float, float]:
    """(chosen beta, chosen alpha, trial seconds) of one search with controller seed ``seed``."""
    strategy_name, z, max_seeds = SEARCH_SETTINGS[name]
    spec = parse_storage(f"sqlite:///{db}")
    storage = open_storage(spec)
    spent = 0.0

    def lookup(rows: list, trial: optuna.Trial) -> tuple[float, list]:
        nonlocal spent
        row = rows[(seed + trial.user_attrs.get("replicate", 0)) % replicates]
        spent += row[1]
        if len(row) > 2 and isinstance(row[2], list):
            trial.set_user_attr("val_accuracy", {"mean": row[0], "accuracies": row[2]})
        return row[0]

    chosen = {}
    for stage in ("beta", "alpha"):
        if stage == "beta":
            grid = [float(b) for b in table["beta"]]
            objective = lambda x, t: lookup(table["beta"][str(x)], t)  # noqa: E731
        else:
            b = chosen["beta"]
            grid = sorted({float(k.split(",")[1]) for k in table["alpha"] if float(k.split(",")[0]) == b})
            objective = lambda x, t: lookup(table["alpha"][f"{b},{x}"], t)  # noqa: E731
        start = None if stage == "beta" else 0.6
        strategy = SEARCHES.get(strategy_name)(grid, start=start, seed=seed, z=z, max_seeds=max_seeds)
        study = optuna.create_study(storage=storage, study_name=stage, direction="maximize",
                                    sampler=strategy.sampler())
        outcome = SearchController(study, spec, strategy, param=stage, objective=objective).run()
        chosen[stage] = outcome.best_point
    return chosen["beta"], chosen["alpha"], spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/tune-regret"))
    parser.add_argument("--replicates", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = build_table(args.out, args.replicates, args.ipc, args.device)
    reference = {tuple(map(float, k.split(","))): statistics.fmean(r[2] for r in rows[:args.replicates])
                 for k, rows in table["alpha"].items()}
    best = max(reference.values())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(SEARCH_SETTINGS):
            results[name] = [run_search(table, name, s, args.replicates, Path(tmp) / f"{i}-{s}.db")
                             for s in range(args.seeds)]
    grid_seconds = [spent for _, _, spent in results["grid"]]
    print(f"\ndigits ipc {args.ipc}: reference best {100 * best:.2f} % at "
          f"{max(reference, key=reference.get)} (beta, alpha), {args.replicates} replicates, {args.seeds} seeds\n")
    print("| search | regret: median | worst | alpha regret at the chosen beta: median | worst "
          "| compute (share of grid's trial seconds) | chosen (beta, alpha) per seed |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        regrets = [100 * (best - reference[(b, a)]) for b, a, _ in runs]
        within = [100 * (max(v for (rb, _), v in reference.items() if rb == b) - reference[(b, a)])
                  for b, a, _ in runs]
        shares = [spent / g for (_, _, spent), g in zip(runs, grid_seconds)]
        picks = ", ".join(f"({b:g}, {a:g})" for b, a, _ in runs)
        print(f"| {name} | {statistics.median(regrets):.2f} | {max(regrets):.2f} | {statistics.median(within):.2f} "
              f"| {max(within):.2f} | {100 * statistics.median(shares):.0f} % | {picks} |")
    (args.out / "results.json").write_text(json.dumps({"reference": {str(k): v for k, v in reference.items()},
                                                       "runs": results}, indent=1))


if __name__ == "__main__":
    main()
