"""How the expert-derived difficulty scores relate to EL2N (bench/RESULTS.md, "Difficulty scores from the experts").

Computes (or loads from the cache) ``forgetting`` and ``learning-speed`` from the experts' correctness records
and ``el2n`` from its own networks, then prints, for every pair, the Spearman rank correlation over the training
pool (average ranks for ties) and the overlap of the hardest 10 %:

    OMP_NUM_THREADS=1 python bench/score_correlation.py --dataset fashion-mnist --cache-dir /tmp/asm-scores \\
        --set experts.num_experts=3 --set experts.epochs=4 --set scores.networks=4 --set scores.epochs=2

Scores are cached under ``--cache-dir``, so a second run only prints.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from autoselmatch.config import apply_overrides, load_preset, parse_assignment, preset_for_dataset
from autoselmatch.data import load_configured
from autoselmatch.scores import get_scores

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
    args = parser.parse_args()
    torch.set_num_threads(1)

    overrides = dict(parse_assignment(a) for a in args.sets)
    cfg = apply_overrides(load_preset(preset_for_dataset(args.dataset)),
                          {**overrides, "data.name": args.dataset, "cache_dir": args.cache_dir, "device": "cpu",
                           "seed": args.seed})
    ds = load_configured(cfg.data)
    pool = ds.train_index.numpy()
    scores = {}
    for name in NAMES:
        run = apply_overrides(cfg, {"scores.name": name})
        values = get_scores(ds, run.scores, cache_dir=run.cache_path, seed=run.seed, run=run)
        scores[name] = values.numpy()[pool].astype(np.float64)

    k = len(pool) // 10
    hardest = {n: set(np.argsort(-v, kind="stable")[:k].tolist()) for n, v in scores.items()}
    pairs = [(a, b) for i, a in enumerate(NAMES) for b in NAMES[i + 1:]]
    print(json.dumps({
        "n_pool": len(pool),
        "spearman": {f"{a} vs {b}": round(float(np.corrcoef(ranks(scores[a]), ranks(scores[b]))[0, 1]), 4)
                     for a, b in pairs},
        "hardest_10pct_overlap": {f"{a} vs {b}": round(len(hardest[a] & hardest[b]) / k, 4) for a, b in pairs},
        "forgetting_distinct_values": int(len(np.unique(scores["forgetting"]))),
        "never_forgotten_share": round(float(np.mean(scores["forgetting"] == 0)), 4),
    }, indent=1))


if __name__ == "__main__":
    main()
