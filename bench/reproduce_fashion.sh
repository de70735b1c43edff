#!/usr/bin/env bash
# Fashion-MNIST reproduce table (bench/RESULTS.md): tune alpha and beta at 1 %, 5 % and 10 % (IPC 60, 300, 600),
# then every method of `autoselmatch bench reproduce` at those IPCs (3 seeds, ablation at IPC 600, coverage).
# CPU, reduced `fashion-mnist` preset: el2n scores of 1 network x 2 epochs, 3 experts of 6 epochs, N = 10,
# 100 distillation iterations (alpha trials 40), evaluation 300 steps per network, full-data row 2 epochs.
#
#   bash bench/reproduce_fashion.sh [OUT]      (default OUT=/tmp/repro-fmnist; about 2.5 h on 2 busy CPU cores)
#
# Both commands resume when rerun.
set -euo pipefail
OUT=${1:-/tmp/repro-fmnist}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 AUTOSELMATCH_NO_PROGRESS=1
COMMON=(
  --cache-dir "$OUT/cache"
  --set experts.num_experts=3 --set distill.max_start_epoch=4 --set distill.expert_epochs=2
  --set scores.epochs=2 --set scores.networks=1 --set distill.syn_steps=10 --set distill.iterations=100
)
autoselmatch --device cpu --seed 0 tune -d fashion-mnist --ipc 60,300,600 "${COMMON[@]}" \
  --set distill.eval_every=20 --set distill.checkpoint_every=20 --set evaluate.epochs=50 --set evaluate.runs=2 \
  --set tune.trial_iterations=40 \
  --set "tune.beta_grid=[0.0, 0.2, 0.4, 0.6, 0.8]" --set "tune.alpha_grid=[0.2, 0.4, 0.6, 0.8, 1.0]" \
  --storage "sqlite:///$OUT/studies.db" --study-prefix fmnist-repro --no-prior --patience 1 --output json > "$OUT/tune.json"
autoselmatch --device cpu --seed 0 bench reproduce -d fashion-mnist --ipc 1%,5%,10% --runs 3 "${COMMON[@]}" \
  --set distill.eval_every=0 --set distill.checkpoint_every=20 --set evaluate.steps=300 --set reproduce.full_epochs=2 \
  --storage "sqlite:///$OUT/studies.db" --study-prefix fmnist-repro --out "$OUT/bench"
