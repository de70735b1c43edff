#!/usr/bin/env bash
# The reduced Fashion-MNIST regret table of bench/RESULTS.md (IPC 10, 5 betas x 5 alphas, 3 replicates),
# built in two shares on two cores, then merged and searched. Resumes: rerun it after an interruption.
#   bash bench/tune_regret_fashion.sh [OUT] [CACHE]     (CACHE: scores and experts, e.g. bench/tune_fashion.sh's)
set -euo pipefail
OUT=${1:-/tmp/regret-fashion}
CACHE=${2:-$OUT/cache}
export AUTOSELMATCH_NO_PROGRESS=1 OMP_NUM_THREADS=1
cd "$(dirname "$0")/.."
SETTINGS=(--ipc 10 --preset fashion-mnist --cache-dir "$CACHE" --alpha-fraction 1.0
  --set experts.num_experts=3 --set distill.max_start_epoch=4 --set distill.expert_epochs=2
  --set distill.syn_steps=10 --set distill.iterations=40 --set distill.eval_every=20 --set distill.checkpoint_every=20
  --set scores.epochs=2 --set scores.networks=1 --set evaluate.epochs=50 --set evaluate.runs=2
  --set tune.trial_iterations=40 --set "tune.alpha_grid=[0.2, 0.4, 0.6, 0.8, 1.0]")
share() {  # share OUT BETAS
  python bench/tune_regret.py --out "$1" --replicates 3 --table-only "${SETTINGS[@]}" --set "tune.beta_grid=$2"
}
mkdir -p "$OUT"
share "$OUT/share-a" "[0.0, 0.2, 0.4]" > "$OUT/share-a.log" 2>&1 &
share "$OUT/share-b" "[0.6, 0.8]" > "$OUT/share-b.log" 2>&1
wait
python bench/tune_regret.py --out "$OUT" --replicates 3 --seeds 6 "${SETTINGS[@]}" \
  --set "tune.beta_grid=[0.0, 0.2, 0.4, 0.6, 0.8]" --merge "$OUT/share-a/table.json" "$OUT/share-b/table.json"
