"""How the expert-derived difficulty scores relate to EL2N (bench/RESULTS.md, "Difficulty scores from the experts").

Computes (or loads from the cache) ``forgetting`` and ``learning-speed`` from the experts' correctness records
and ``el2n`` from its own networks, then prints, for every pair, the Spearman rank correlation over the training
pool (average ranks for ties) and the overlap of the hardest 10 %:

    OMP_NUM_THREADS=1 python bench/score_correlation.py --dataset fashion-mnist --cache-dir /tmp/asm-scores \\
        --set experts.num_experts=3 --set experts.epochs=4 --set scores.networks=4 --set scores.epochs=2

With ``--ipc``, also which score's best window beats random selection (issue 15): each score's beta sweep
(networks trained on the selection-only window with ``tune.beta_augment``, DSA by default, scored on the
validation split, as the tune's beta stage does) against class-balanced random draws of the same size, each
trained with the same augmentation, budget and network seeds as the windows' (draw ``s`` with seed ``s``):

    OMP_NUM_THREADS=1 python bench/score_correlation.py --dataset fashion-mnist --cache-dir /tmp/asm-scores \
        --set experts.num_experts=3 --set experts.epochs=4 --set scores.networks=4 --set scores.epochs=2 \
        --ipc 600 --betas 0:0.8:0.2 --seeds 2 --fraction 0.5

Scores are cached under ``--cache-dir``, so a second run only trains the windows.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from autoselmatch.config import apply_overrides, load_preset, parse_assignment, preset_for_dataset
from autoselmatch.data import load_configured
from autoselmatch.cli.scores import parse_betas
from autoselmatch.scores import get_scores
from autoselmatch.selection import sweep_beta, window_accuracy

NAMES = ("forgetting", "learning-speed", "el2n")


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` (float (n,)), ties sharing their average rank."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    first = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(x)]
    out = np.empty(len(x))
    out[order] = ((starts + ends - 1) / 2.0)[np.cumsum(first) - 1]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ipc", type=int, help="also sweep each score's window at this IPC against random draws")
    parser.add_argument("--betas", default="0:0.8:0.2", help="window starts, START:STOP:STEP or a list (0,0.4)")
    parser.add_argument("--seeds", type=int, default=2, help="networks per window, and random draws")
    parser.add_argument("--fraction", type=float, default=None,
                        help="share of the evaluation budget per network (default: evaluate.quick_fraction)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    overrides = dict(parse_assignment(a) for a in args.sets)
    cfg = apply_overrides(load_preset(preset_for_dataset(args.dataset)),
                          {**overrides, "data.name": args.dataset, "cache_dir": args.cache_dir, "device": "cpu",
                           "seed": args.seed})
    ds = load_configured(cfg.data)
    pool = ds.train_index.numpy()
    full, scores = {}, {}  # name -> float (N,) over the training split; its values on the pool
    for name in NAMES:
        run = apply_overrides(cfg, {"scores.name": name})
        full[name] = get_scores(ds, run.scores, cache_dir=run.cache_path, seed=run.seed, run=run)
        scores[name] = full[name].numpy()[pool].astype(np.float64)

    report = correlations(scores, len(pool))
    if args.ipc is not None:
        report["windows"] = windows(ds, cfg, full, ipc=args.ipc, betas=parse_betas(args.betas), seeds=args.seeds,
                                    fraction=args.fraction if args.fraction is not None else cfg.evaluate.quick_fraction)
    print(json.dumps(report, indent=1))


def correlations(scores: dict[str, np.ndarray], n_pool: int) -> dict:
    """Spearman correlation and hardest-10 % overlap of every pair of ``scores`` (name -> float (pool,))."""
    k = n_pool // 10
    hardest = {n: set(np.argsort(-v, kind="stable")[:k].tolist()) for n, v in scores.items()}
    pairs = [(a, b) for i, a in enumerate(NAMES) for b in NAMES[i + 1:]]
    return {
        "n_pool": n_pool,
        "spearman": {f"{a} vs {b}": round(float(np.corrcoef(ranks(scores[a]), ranks(scores[b]))[0, 1]), 4)
                     for a, b in pairs},
        "hardest_10pct_overlap": {f"{a} vs {b}": round(len(hardest[a] & hardest[b]) / k, 4) for a, b in pairs},
        "forgetting_distinct_values": int(len(np.unique(scores["forgetting"]))),
        "never_forgotten_share": round(float(np.mean(scores["forgetting"] == 0)), 4),
    }


def windows(ds, cfg, scores: dict[str, torch.Tensor], *, ipc: int, betas: list[float], seeds: int,
            fraction: float) -> dict:
    """Each score's best window at ``ipc`` against random selection, all on the validation split.

    Args:
        scores: name -> float (N,) difficulty over the training split.
        betas: Window starts swept per score.
        seeds: Networks per window (seeds ``cfg.seed + s``); also the number of random draws, draw ``s``
            trained with seed ``cfg.seed + s``.
        fraction: Share of ``cfg.evaluate``'s budget per network.
    """
    augment = cfg.tune.beta_augment
    random_acc = []
    for s in range(seeds):  # a random draw is the window at beta 0 of a random score
        noise = torch.rand(len(ds.train_labels), generator=torch.Generator().manual_seed(cfg.seed + s),
                           dtype=torch.float64)
        result = window_accuracy(ds, noise, ipc=ipc, beta=0.0, cfg=cfg.evaluate, fraction=fraction, seeds=1,
                                 seed=cfg.seed + s, augment=augment)
        random_acc.append(result.mean)
        steps = result.steps
    random_mean = float(np.mean(random_acc))
    out = {"ipc": ipc, "fraction": fraction, "steps": steps, "augment": augment, "split": "val", "seeds": seeds,
           "random": {"mean": round(random_mean, 4), "std": round(float(np.std(random_acc)), 4)}, "scores": {}}
    for name, values in scores.items():
        curve = sweep_beta(ds, values, ipc=ipc, betas=betas, cfg=cfg.evaluate, fraction=fraction, seeds=seeds,
                           seed=cfg.seed, augment=augment)
        best_beta, best_mean, best_std = max(curve, key=lambda point: point[1])
        out["scores"][name] = {
            "curve": {f"{b:g}": round(m, 4) for b, m, _ in curve},
            "best_beta": best_beta, "best": round(best_mean, 4), "best_std": round(best_std, 4),
            "best_minus_random": round(best_mean - random_mean, 4),
        }
    return out


if __name__ == "__main__":
    main()
