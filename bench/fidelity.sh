#!/usr/bin/env bash
# Issue 15's question at one budget: does SelMatch (window init + partial distillation) beat random
# selection, the window alone and plain MTT? Per IPC it builds and scores, with the same seed, evaluation
# networks and test split:
#   random    random class-balanced real images (alpha 0, --init random, no distillation)
#   window    the difficulty window at BETA (alpha 0, no distillation)
#   mtt       plain MTT: every image distilled from random real init (alpha 1, --init random)
#   selmatch  window init at BETA, the easier ALPHA share distilled (one row per ALPHA)
# and prints a table: activity of each distillation (matching-loss ratio, pixel change) and test accuracy.
# Every step is cut to what is left of FIDELITY_BUDGET seconds, so partial results still land in OUT.
#
#   bash bench/fidelity.sh OUT [GLOBAL OPTIONS...]      e.g. bash bench/fidelity.sh /tmp/fid --device cuda
#   (bash bench/gpu_checks.sh fidelity runs it on a lent GPU; on 2 CPU cores the defaults take hours)
#
# Knobs (environment): DATASET (fashion-mnist), PRESET (configs/fashion-mnist-active.toml), IPCS ("600 60"),
# ITERS (500 distillation iterations), BATCH_SYN (200), ALPHAS ("0.5 0.25"), BETA (0.6), EXPERTS (5),
# RUNS (3 evaluation networks), SEED (0), FIDELITY_BUDGET (seconds, default: no limit), SETS (more
# `--set KEY=VALUE` settings for every command, space-separated, e.g. "experts.epochs=6 distill.max_start_epoch=50").
set -uo pipefail
OUT=${1:?usage: bash bench/fidelity.sh OUT [GLOBAL OPTIONS...]}; shift
mkdir -p "$OUT"
DATASET=${DATASET:-fashion-mnist} PRESET=${PRESET:-configs/fashion-mnist-active.toml}
IPCS=${IPCS:-600 60} ITERS=${ITERS:-500} BATCH_SYN=${BATCH_SYN:-200} ALPHAS=${ALPHAS:-0.5 0.25} BETA=${BETA:-0.6}
EXPERTS=${EXPERTS:-5} RUNS=${RUNS:-3} SEED=${SEED:-0} BUDGET=${FIDELITY_BUDGET:-1000000000} SETS=${SETS:-}
export AUTOSELMATCH_NO_PROGRESS=1
GLOBAL=(--seed "$SEED" "$@")
COMMON=(-d "$DATASET" --preset "$PRESET" --cache-dir "$OUT/cache" --set "experts.num_experts=$EXPERTS"
        --set "distill.iterations=$ITERS" --set "distill.checkpoint_every=100" --set "evaluate.runs=$RUNS")
for setting in $SETS; do COMMON+=(--set "$setting"); done
asm() {  # asm ARGS...: one autoselmatch command, cut to what is left of the budget (skipped under 15 s)
  local left=$((BUDGET - SECONDS))
  if (( left < 15 )); then echo "skipped (budget spent): autoselmatch $*" >&2; return 1; fi
  timeout "$left" python -m autoselmatch "${GLOBAL[@]}" "$@"
}
echo "settings: dataset $DATASET, preset $PRESET, IPCs $IPCS, $ITERS iterations, batch_syn $BATCH_SYN," \
     "alphas $ALPHAS, beta $BETA, $EXPERTS experts, $RUNS networks, seed $SEED, settings ${SETS:-none}," \
     "global options $*" | tee "$OUT/settings.txt"
asm experts "${COMMON[@]}" > /dev/null || exit 1
for IPC in $IPCS; do
  B=$((BATCH_SYN < IPC * 10 ? BATCH_SYN : IPC * 10))
  make_set() {  # make_set NAME DISTILL-ARGS...: distil (or select) NAME, then score it on the test split
    local name=$1; shift
    asm distill "${COMMON[@]}" --set "distill.batch_syn=$B" --ipc "$IPC" "$@" --out "$OUT/$name-$IPC" --overwrite \
        --output json > "$OUT/distill-$name-$IPC.json" &&
    asm evaluate "$OUT/$name-$IPC/result.pt" "${COMMON[@]}" --split test --output json \
        > "$OUT/eval-$name-$IPC.json"
  }
  make_set random --alpha 0 --init random --iterations 0
  make_set window --alpha 0 --beta "$BETA" --iterations 0
  make_set mtt --alpha 1 --init random
  for ALPHA in $ALPHAS; do make_set "selmatch$ALPHA" --alpha "$ALPHA" --beta "$BETA"; done
done
python - "$OUT" <<'PY'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| IPC | set | loss ratio | pixel change (std) | test accuracy (%) |\n|---|---|---|---|---|")
for path in sorted(out.glob("eval-*.json"), key=lambda p: (-int(p.stem.rsplit("-", 1)[1]), p.stem)):
    try:
        acc = [100 * a for a in json.loads(path.read_text())["accuracies"]]
    except (ValueError, KeyError):
        continue
    name, ipc = path.stem[len("eval-"):].rsplit("-", 1)
    try:
        activity = json.loads((out / f"distill-{name}-{ipc}.json").read_text()).get("activity") or {}
    except (OSError, ValueError):
        activity = {}
    ratio, pixels = activity.get("loss_ratio"), activity.get("pixel_change")
    spread = f" ± {statistics.pstdev(acc):.2f}" if len(acc) > 1 else ""
    print(f"| {ipc} | {name} | {'-' if ratio is None else f'{ratio:.3f}'} | "
          f"{'-' if pixels is None else f'{pixels:.3f}'} | {statistics.mean(acc):.2f}{spread} "
          f"({len(acc)} run{'s' if len(acc) > 1 else ''}) |")
PY
