#!/usr/bin/env bash
# Active distillation on a CPU (bench/RESULTS.md, "Active distillation on a CPU"): the
# configs/fashion-mnist-active.toml preset at IPC 60 (1 %), alpha 1, --init random (plain MTT).
# Trains its 2 experts (row every 25 SGD steps), distils 40 iterations, then evaluates the distilled
# set and the random-selection set it started from (same seed, same images: a 0-iteration run) on the
# test split with DSA, 2 networks x 1,000 steps each, and prints the activity of the distillation:
# loss ratio (mean of the last 10 iterations / first 10), final eta, mean |x - x0| of D_distill in std units.
#
#   bash bench/active_fashion.sh [OUT]      (default OUT=/tmp/asm-active/run; ~30-40 min on 2 busy cores)
set -euo pipefail
OUT=${1:-/tmp/asm-active/run}
PRESET=configs/fashion-mnist-active.toml
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
A=(--device cpu --seed 0)
D=(-d fashion-mnist --preset "$PRESET" --cache-dir "$OUT/cache")
autoselmatch "${A[@]}" experts "${D[@]}"
autoselmatch "${A[@]}" distill "${D[@]}" --ipc 60 --alpha 1 --init random --iterations 0 --out "$OUT/random" --overwrite
time autoselmatch "${A[@]}" distill "${D[@]}" --ipc 60 --alpha 1 --init random --out "$OUT/mtt" --overwrite
python - "$OUT/mtt/result.pt" "$OUT/random/result.pt" <<'PY'
import sys
from autoselmatch.synset import SyntheticSet
s, s0 = SyntheticSet.load(sys.argv[1]), SyntheticSet.load(sys.argv[2])
assert (s.indices == s0.indices).all(), "the distilled set did not start from the random-selection set"
h, k, m = s.loss_history, 10, s.distill_mask
ratio = (sum(h[-k:]) / k) / (sum(h[:k]) / k)
pixels = (s.images[m] - s0.images[m]).abs().mean().item()
eta0 = s.settings["config"]["distill"]["lr_teacher"]
print(f"loss ratio {ratio:.3f}  eta {eta0} -> {s.eta:.4f}  pixel change {pixels:.3f} std over {int(m.sum())} rows")
PY
for SET in random mtt; do
  autoselmatch "${A[@]}" evaluate "$OUT/$SET/result.pt" "${D[@]}" --split test --augment dsa --steps 1000 --runs 2 \
    -o "$OUT/eval_$SET.json"
done
