#!/usr/bin/env bash
# Tuning on Fashion-MNIST (CPU, reduced preset): `autoselmatch tune` at two IPCs with the line search in
# both stages, the same with grids in both on the same grids (compute comparison), and the baselines at the
# tuned IPCs: random selection, the window alone (alpha 0 at the tuned beta), MTT (alpha 1, random init).
# Every set is scored the same way as tune's final set (test split, evaluate.runs networks).
#
#   bash bench/tune_fashion.sh [OUT]        (default OUT=/tmp/tune-fmnist; ~1 h on 2 busy CPU cores)
set -euo pipefail
OUT=${1:-/tmp/tune-fmnist}
C=$OUT/cache
mkdir -p "$OUT"
export AUTOSELMATCH_NO_PROGRESS=1
IPCS=10,50
SETS=(
  --set experts.num_experts=3 --set distill.max_start_epoch=4 --set distill.expert_epochs=2
  --set distill.syn_steps=10 --set distill.iterations=100 --set distill.eval_every=20 --set distill.checkpoint_every=20
  --set scores.epochs=2 --set scores.networks=1
  --set evaluate.epochs=50 --set evaluate.runs=2
  --set tune.trial_iterations=40
  --set "tune.beta_grid=[0.0, 0.2, 0.4, 0.6, 0.8]" --set "tune.alpha_grid=[0.2, 0.4, 0.6, 0.8, 1.0]"
)
RUN=(autoselmatch --device cpu --seed 0)
DB=sqlite:///$OUT/fmnist.db

timed() {  # timed NAME CMD...: run CMD, append "NAME seconds" to $OUT/times.txt
  local name=$1; shift
  local t0; t0=$(date +%s)
  "$@"
  echo "$name $(( $(date +%s) - t0 ))" >> "$OUT/times.txt"
}

timed tune-line "${RUN[@]}" tune -d fashion-mnist --ipc $IPCS --cache-dir "$C" "${SETS[@]}" --storage "$DB" \
  --study-prefix fmnist-line --beta-search line --output json > "$OUT/line.json"
timed tune-grid "${RUN[@]}" tune -d fashion-mnist --ipc $IPCS --cache-dir "$C" "${SETS[@]}" --storage "$DB" \
  --study-prefix fmnist-grid --search grid --beta-search grid --output json > "$OUT/grid.json"

for IPC in ${IPCS//,/ }; do
  BETA=$(python -c "import json; r = json.load(open('$OUT/line.json')); print([x for x in r['ipcs'] if x['ipc'] == $IPC][0]['beta']['best_point'])")
  timed "random-$IPC" "${RUN[@]}" distill -d fashion-mnist --cache-dir "$C" "${SETS[@]}" --ipc "$IPC" --alpha 0 \
    --init random --out "$OUT/random-$IPC" --overwrite --output json > /dev/null
  timed "window-$IPC" "${RUN[@]}" distill -d fashion-mnist --cache-dir "$C" "${SETS[@]}" --ipc "$IPC" --alpha 0 \
    --beta "$BETA" --out "$OUT/window-$IPC" --overwrite --output json > /dev/null
  timed "mtt-$IPC" "${RUN[@]}" distill -d fashion-mnist --cache-dir "$C" "${SETS[@]}" --ipc "$IPC" --alpha 1 \
    --init random --out "$OUT/mtt-$IPC" --overwrite --output json > /dev/null
  for SET in random window mtt; do
    "${RUN[@]}" evaluate "$OUT/$SET-$IPC/result.pt" -d fashion-mnist --cache-dir "$C" "${SETS[@]}" --split test \
      --output json --save "$OUT/eval-$SET-$IPC.json" > /dev/null
  done
done

python - "$OUT" <<'EOF'
"""Summary: chosen (alpha, beta), test accuracies, and trial compute per study."""
import json, sys
import optuna
from optuna.trial import TrialState

out = sys.argv[1]
storage = f"sqlite:///{out}/fmnist.db"
line = json.load(open(f"{out}/line.json"))
print("| IPC | beta | alpha | tuned (test %) | random | window (alpha 0) | MTT (alpha 1, random init) |")
print("|---|---|---|---|---|---|---|")
for r in line["ipcs"]:
    ipc, acc = r["ipc"], r["final"]["test_accuracy"]
    cells = [f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}"]
    for name in ("random", "window", "mtt"):
        e = json.load(open(f"{out}/eval-{name}-{ipc}.json"))
        cells.append(f"{100 * e['mean']:.2f} ± {100 * e['std']:.2f}")
    print(f"| {ipc} | {r['beta']['best_point']:g} | {r['alpha']['best_point']:g} | " + " | ".join(cells) + " |")
print()
print("| study | trials (complete / pruned) | trial seconds | best |")
print("|---|---|---|---|")
for name in sorted(optuna.get_all_study_names(storage)):
    study = optuna.load_study(study_name=name, storage=storage)
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
    complete = sum(t.state == TrialState.COMPLETE for t in done)
    param = name.rsplit("-", 1)[1]
    print(f"| {name} | {len(done)} ({complete} / {len(done) - complete}) | {seconds:.0f} | "
          f"{study.best_value:.4f} at {param}={study.best_params[param]:g} |")
EOF
cat "$OUT/times.txt"
