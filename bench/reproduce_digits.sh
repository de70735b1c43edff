#!/usr/bin/env bash
# Issue 15 on a second real dataset, at the paper's evaluation budget and at a short one: every method of
# `autoselmatch bench reproduce` on scikit-learn's digits at 1 %, 5 %, 10 % and 20 % of each class, with a
# distillation that is active (400 iterations: matching-loss ratio ~0.45, pixels moved ~0.3 std) and
# alpha and beta tuned per IPC and per budget. Two runs, each with its own tune:
#   OUT/paper   evaluate.budget_fraction 1.0: the paper's rule, 25 % of the steps of 200 full-data epochs
#               (600 steps of 128 per network on digits); beta trials and quick alpha scores 20 % of it
#   OUT/short   evaluate.budget_fraction 0.05: 30 steps per network (beta trials 6 steps)
# Coverage of the easy and hard test halves is recorded every 50 distillation iterations (the paper's
# Figure 7: OUT/*/coverage.html). 5 networks per cell, test split. About 45 min on one CPU core.
# Results and what they say: bench/RESULTS.md, "Digits at the paper's budget".
#
#   bash bench/reproduce_digits.sh [OUT]        (default OUT=/tmp/repro-digits; rerunning resumes)
set -euo pipefail
OUT=${1:-/tmp/repro-digits}
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} AUTOSELMATCH_NO_PROGRESS=1
COMMON=(
  -d digits --ipc 1%,5%,10%,20% --runs 5 --cache-dir "$OUT/cache"
  --set distill.iterations=400 --set tune.trial_iterations=200 --set distill.coverage_every=50
)
for RUN in paper:1.0 short:0.05; do
  NAME=${RUN%%:*} FRACTION=${RUN##*:}
  autoselmatch --device cpu --seed 0 bench reproduce "${COMMON[@]}" --set evaluate.budget_fraction="$FRACTION" \
    --out "$OUT/$NAME" > "$OUT/$NAME.log" 2>&1
  echo "== $NAME (evaluate.budget_fraction $FRACTION) =="; cat "$OUT/$NAME/table.md"
done
