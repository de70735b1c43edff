#!/usr/bin/env bash
# Does the beta stage's strategy decide the tuned set? `bench reproduce` on digits at the paper's budget
# (the settings of bench/reproduce_digits.sh: 400 distillation iterations, alpha trials of 200, 5 networks
# per cell, test split), window and tuned selmatch at 1/5/10/20 %, with the beta stage walking
# (tune.beta_search line) or sweeping every window start (grid, the default since 2026-12-01), the alpha
# stage a line search in both, for several seeds of the whole run (scores, experts, tune and evaluation).
# Results: bench/RESULTS.md, "The tuner on digits at the paper's budget". About 10 min per run on one core.
#
#   bash bench/beta_search_digits.sh [OUT] [SEEDS]     (default OUT=/tmp/beta-search, SEEDS="0 1 2")
set -euo pipefail
OUT=${1:-/tmp/beta-search}
SEEDS=${2:-0 1 2}
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} AUTOSELMATCH_NO_PROGRESS=1
for SEED in $SEEDS; do
  for SEARCH in line grid; do
    RUN="$OUT/$SEARCH-s$SEED"
    autoselmatch --device cpu --seed "$SEED" bench reproduce -d digits --ipc 1%,5%,10%,20% --runs 5 \
      --methods window,selmatch --no-ablation --no-coverage --cache-dir "$OUT/cache-s$SEED" \
      --set distill.iterations=400 --set tune.trial_iterations=200 --set evaluate.budget_fraction=1.0 \
      --set tune.beta_search="$SEARCH" --out "$RUN" > "$RUN.log" 2>&1
    echo "== seed $SEED, beta stage: $SEARCH =="; cat "$RUN/table.md"
    python -c 'import json, sys; r = json.load(open(sys.argv[1]))
print("tuned (alpha, beta):", ", ".join("ipc %(ipc)s: (%(alpha)s, %(beta)s)" % k for k in r["knobs"]))' "$RUN/results.json"
  done
done
