#!/usr/bin/env bash
# Issue 17's base-method tables on Fashion-MNIST: the paper's Table 8 (SRe2L) and Table 7 (DSA) layouts
# at reduced settings. Per pipeline seed and base method, one `autoselmatch bench reproduce --method M`
# at the given ratios: the method's own baseline (SRe2L: noise init and random real init; DSA: random
# real init), select init (the window at BETA, alpha 1) and SelMatch at (ALPHA, BETA), RUNS networks
# each on the test split, scored by the method's protocol (SRe2L: students learn the teacher's soft
# outputs). Then `autoselmatch bench combine` over the seeds: mean ± std across seeds and each row's
# paired difference against SelMatch.
#
#   bash bench/bases_fashion.sh OUT [METHOD...]       methods: sre2l dsa (default: both)
#       OUT/M-sS/ per method M and seed S (table.md, results.json), OUT/M-seeds/seeds.md across the seeds
#   Seeds run outermost, so an interrupted run has every method at the first seeds; rerunning resumes
#   (finished cells are reused).
#
# Reduced settings (the paper: 1,000 iterations of each method, DSA with 10 x 10 matching loops):
#   - the active preset's experts (6 epochs; the SRe2L teacher is the first expert's last snapshot,
#     `distill.sre2l_teacher=expert`, so no teacher is trained) and its evaluation budget (5 % of the
#     paper's rule);
#   - SRe2L ITERS_SRE2L (200) recover iterations; DSA ITERS_DSA (20) iterations of GM_OUTER (2) matching
#     updates and GM_INNER (1) inner epochs, at pixel lr LR_DSA (5). No pixel lr makes these 40 image updates
#     an active distillation at IPC 300 (bench/RESULTS.md, "DSA at CPU scale"): at 0.1 (the paper's, for its
#     10,000 updates) and 1 the pixels barely move, at 5 they move 0.02 std with the matching loss flat, and at
#     25 they move 0.09 std, the loss rises and the set loses 10-15 points.
# Costs (bench/RESULTS.md, "Base methods" and "The Table 8 layout (SRe2L) on Fashion-MNIST"): one SRe2L
# iteration at IPC 300 is ~5 CPU s, one reduced DSA iteration ~55 CPU s. Timed on 2 CPU cores, two calls of
# this script on one OUT (they share experts, scores and cells): one seed of SRe2L at 5 and 10 % takes about
# 2.5 h (200 recover iterations: 13-19 min at IPC 300, 25-28 min at IPC 600; a KD student: 3.6-4.6 min), so
# the 3-seed tables of both methods take several sessions of those cores, or DEVICE=cuda.
#
# Knobs (environment): RATIOS ("5 10", % of each class), IPCS (absolute images per class, comma-separated,
# e.g. "25,50"; replaces RATIOS), SEEDS ("0 1 2"), ALPHA (0.5), BETA (0.4), RUNS (3),
# ITERS_SRE2L, ITERS_DSA, GM_OUTER, GM_INNER, LR_DSA, DEVICE (cpu), DATA_ROOT (the dataset's folder, if not the
# default), CACHE (OUT/cache), DATASET (fashion-mnist), PRESET (configs/fashion-mnist-active.toml),
# SETS (more `--set KEY=VALUE`, space-separated, for every command).
set -euo pipefail
OUT=${1:?usage: bash bench/bases_fashion.sh OUT [METHOD...]}; shift
METHODS=${*:-sre2l dsa}
RATIOS=${RATIOS:-5 10} SEEDS=${SEEDS:-0 1 2} ALPHA=${ALPHA:-0.5} BETA=${BETA:-0.4} RUNS=${RUNS:-3}
ITERS_SRE2L=${ITERS_SRE2L:-200} ITERS_DSA=${ITERS_DSA:-20} GM_OUTER=${GM_OUTER:-2} GM_INNER=${GM_INNER:-1} LR_DSA=${LR_DSA:-5}
DEVICE=${DEVICE:-cpu} CACHE=${CACHE:-$OUT/cache} DATASET=${DATASET:-fashion-mnist}
PRESET=${PRESET:-configs/fashion-mnist-active.toml} SETS=${SETS:-}
export AUTOSELMATCH_NO_PROGRESS=${AUTOSELMATCH_NO_PROGRESS:-1}
mkdir -p "$OUT"
if [ -z "${IPCS:-}" ]; then IPCS=$(printf '%s%%,' $RATIOS); IPCS=${IPCS%,}; fi
DATA=(-d "$DATASET" --preset "$PRESET" --cache-dir "$CACHE" --set experts.epochs=6)
[ -n "${DATA_ROOT:-}" ] && DATA+=(--data-root "$DATA_ROOT")
for setting in $SETS; do DATA+=(--set "$setting"); done
COMMON=("${DATA[@]}" --ipc "$IPCS" --alpha "$ALPHA" --beta "$BETA" --runs "$RUNS" --no-ablation --no-coverage)
settings_of() {  # the method's reduced settings
  case $1 in
    sre2l) echo "--set distill.sre2l_teacher=expert --set distill.iterations=$ITERS_SRE2L" ;;
    dsa) echo "--set distill.iterations=$ITERS_DSA --set distill.gm_outer_loop=$GM_OUTER --set distill.gm_inner_loop=$GM_INNER"\
              "--set distill.gm_lr_img=$LR_DSA" ;;
    *) echo "unknown base method '$1' (sre2l, dsa)" >&2; exit 2 ;;
  esac
}
for method in $METHODS; do settings_of "$method" > /dev/null; done
for seed in $SEEDS; do
  if [[ " $METHODS " == *" sre2l "* ]]; then  # the SRe2L teacher is an expert: train them (or find them cached)
    python -m autoselmatch --device "$DEVICE" --seed "$seed" experts "${DATA[@]}"
  fi
  for method in $METHODS; do
    # shellcheck disable=SC2046  # the method's settings are words by design
    python -m autoselmatch --device "$DEVICE" --seed "$seed" bench reproduce "${COMMON[@]}" --method "$method" \
        $(settings_of "$method") --out "$OUT/$method-s$seed"
  done
done
for method in $METHODS; do
  runs=(); for seed in $SEEDS; do [ -f "$OUT/$method-s$seed/results.json" ] && runs+=("$OUT/$method-s$seed"); done
  if (( ${#runs[@]} >= 2 )); then
    python -m autoselmatch bench combine "${runs[@]}" --out "$OUT/$method-seeds"
  fi
done
