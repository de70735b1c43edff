#!/usr/bin/env bash
# Issue 15's reproduce tables with the active preset (configs/fashion-mnist-active.toml): per ratio, one
# `autoselmatch bench reproduce` of random and window (scored with DSA), plain MTT and SelMatch at a given
# (ALPHA, BETA) (combined augmentation), RUNS evaluation networks each, test split, coverage of the easy and
# hard test halves, and each distillation's activity (loss ratio, pixel change; "barely distilled" flag).
# The experts train 6 epochs and start rows are drawn from the whole trajectory (bench/RESULTS.md, "Why the
# active distillation loses to real images": later segments give the better MTT sets). Distillation
# iterations follow the set size so that each image is drawn about as often: 40 at 1 %, 200 from 5 % on
# (at 10 % and 20 % each distilled image is drawn less often than at 5 %; their tables say by how much).
#
#   bash bench/reproduce_active.sh OUT [RATIO...]      e.g. bash bench/reproduce_active.sh /tmp/ra 10 20
#       ratios in % of each class (default: 1 5 10 20); each lands in OUT/rRATIO/table.md
#   on 2 CPU cores one ratio took about 50 min (12 networks of 1,173 steps, 2-3.5 min each; 2 distillations,
#   11 min each at 200 iterations), with two ratios side by side as two calls of this script under
#   OMP_NUM_THREADS=1 (bench/RESULTS.md). Rerunning resumes: finished cells are reused; two calls on one OUT
#   and ratio share its cells out and distil MTT's and SelMatch's sets side by side (20 %: 27 min for both).
#   Other pipeline seeds (split draw, EL2N scores, experts, distillations, networks) go to their own OUT and
#   combine into mean ± std across seeds with paired differences:
#       SEED=1 bash bench/reproduce_active.sh OUT-s1 10; SEED=2 bash bench/reproduce_active.sh OUT-s2 10
#       autoselmatch bench combine OUT/r10 OUT-s1/r10 OUT-s2/r10 --out OUT/r10-seeds
#
# Knobs (environment): ALPHA (0.2), BETA (0.4), RUNS (3), SEED (0), METHODS (random,window,mtt,selmatch),
# DEVICE (cpu), CACHE (OUT/cache: experts, scores and the coverage reference network), DATASET
# (fashion-mnist), PRESET (configs/fashion-mnist-active.toml), SETS (more `--set KEY=VALUE`, space-separated),
# ITERS (iterations at every ratio, instead of 40 / 200), ABLATION (1: also the ablation table, Table 3, at
# each ratio; default 0).
set -euo pipefail
OUT=${1:?usage: bash bench/reproduce_active.sh OUT [RATIO...]}; shift
RATIOS=${*:-1 5 10 20}
ALPHA=${ALPHA:-0.2} BETA=${BETA:-0.4} RUNS=${RUNS:-3} SEED=${SEED:-0} DEVICE=${DEVICE:-cpu}
METHODS=${METHODS:-random,window,mtt,selmatch} CACHE=${CACHE:-$OUT/cache} DATASET=${DATASET:-fashion-mnist}
PRESET=${PRESET:-configs/fashion-mnist-active.toml} SETS=${SETS:-} ABLATION=${ABLATION:-0}
export AUTOSELMATCH_NO_PROGRESS=${AUTOSELMATCH_NO_PROGRESS:-1}
mkdir -p "$OUT"
COMMON=(-d "$DATASET" --preset "$PRESET" --cache-dir "$CACHE" --set experts.epochs=6 --set distill.max_start_epoch=50)
for setting in $SETS; do COMMON+=(--set "$setting"); done
for R in $RATIOS; do
  iterations=${ITERS:-$(( R < 5 ? 40 : 200 ))}
  python -m autoselmatch --device "$DEVICE" --seed "$SEED" bench reproduce "${COMMON[@]}" \
    --set distill.iterations="$iterations" --ipc "$R%" --methods "$METHODS" --alpha "$ALPHA" --beta "$BETA" \
    --runs "$RUNS" "$( (( ABLATION )) && echo --ablation || echo --no-ablation)" --out "$OUT/r$R"
done
