#!/usr/bin/env bash
# Fashion-MNIST reproduce table (bench/RESULTS.md): tune alpha and beta at 1 %, 5 % and 10 % (IPC 60, 300, 600),
# then every method of `autoselmatch bench reproduce` at those IPCs (3 seeds, ablation at IPC 600, coverage).
# CPU, reduced `fashion-mnist` preset: el2n scores of 1 network x 2 epochs, 3 experts of 6 epochs, N = 10,
# 100 distillation iterations (alpha trials 40), full-data row 2 epochs.
# Evaluation follows the paper's rule (25 % of the steps of 200 full-data epochs = 22,300 steps) scaled by
# BUDGET_FRACTION (default 0.05: 1,115 steps per network, ~1.5-2.7 min each on one thread); tune's final set,
# its beta trials (tune.beta_augment = dsa, evaluate.quick_fraction 0.2 of that budget) and every reproduce
# cell use it. Random, hardest and window are scored with DSA, the other sets with combined augmentation;
# table.md states the budget and each row's augmentation.
#
#   bash bench/reproduce_fashion.sh [OUT] [BUDGET_FRACTION]
#       (default OUT=/tmp/repro-fmnist; at 0.05 several hours on 2 busy CPU cores: ~90 evaluation networks)
#
# Both commands resume when rerun.
set -euo pipefail
OUT=${1:-/tmp/repro-fmnist}
BUDGET_FRACTION=${2:-0.05}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 AUTOSELMATCH_NO_PROGRESS=1
COMMON=(
  --cache-dir "$OUT/cache"
  --set experts.num_experts=3 --set distill.max_start_epoch=4 --set distill.expert_epochs=2
  --set scores.epochs=2 --set scores.networks=1 --set distill.syn_steps=10 --set distill.iterations=100
  --set evaluate.budget_fraction="$BUDGET_FRACTION"
)
autoselmatch --device cpu --seed 0 tune -d fashion-mnist --ipc 60,300,600 "${COMMON[@]}" \
  --set distill.eval_every=20 --set distill.checkpoint_every=20 --set evaluate.runs=2 \
  --set tune.trial_iterations=40 \
  --set "tune.beta_grid=[0.0, 0.2, 0.4, 0.6, 0.8]" --set "tune.alpha_grid=[0.2, 0.4, 0.6, 0.8, 1.0]" \
  --storage "sqlite:///$OUT/studies.db" --study-prefix fmnist-repro --no-prior --patience 1 --output json > "$OUT/tune.json"
autoselmatch --device cpu --seed 0 bench reproduce -d fashion-mnist --ipc 1%,5%,10% --runs 3 "${COMMON[@]}" \
  --set distill.eval_every=0 --set distill.checkpoint_every=20 --set reproduce.full_epochs=2 \
  --storage "sqlite:///$OUT/studies.db" --study-prefix fmnist-repro --out "$OUT/bench"
