#!/usr/bin/env bash
# Which part of the expert trajectories should plain MTT match on Fashion-MNIST (bench/RESULTS.md,
# "Why the active distillation loses to real images")? The active preset draws start rows from the first 250 expert
# steps only, and its distilled sets scored below the random real images they started from (CPU at
# IPC 60, H200 at IPC 600). DATM (Guo et al. 2024) argues that larger sets need the later, harder part
# of the trajectories. Per IPC this builds, with one seed and the same evaluation networks:
#   random     the random class-balanced real images every distillation starts from (0 iterations)
#   NAME       plain MTT (alpha 1, --init random) matching start rows in [T-, T+) for each NAME:T-:T+
#              of SEGMENTS (rows are experts.snapshot_every = 25 SGD steps apart)
# then scores every set on the test split with DSA and prints activity and accuracy.
#
#   bash bench/trajectory_segments.sh OUT [GLOBAL OPTIONS...]     e.g. bash bench/trajectory_segments.sh /tmp/seg
#   (on 2 free CPU cores: experts ~7 min, IPC 60 ~15 min, IPC 300 ~35 min)
#
# Knobs (environment): IPCS ("60 300"), ITERS ("60:40 300:200": distillation iterations per IPC, so that
# each image is drawn about as often at every IPC), SEGMENTS ("early:0:10 late:20:50 whole:0:50"),
# EXPERT_EPOCHS (6: rows up to 53), RUNS (2 evaluation networks), SEED (0).
# Both steps resume: finished sets and scores are kept and skipped when rerun.
set -uo pipefail
OUT=${1:?usage: bash bench/trajectory_segments.sh OUT [GLOBAL OPTIONS...]}; shift
mkdir -p "$OUT"
IPCS=${IPCS:-60 300} ITERS=${ITERS:-60:40 300:200} SEGMENTS=${SEGMENTS:-early:0:10 late:20:50 whole:0:50}
EXPERT_EPOCHS=${EXPERT_EPOCHS:-6} RUNS=${RUNS:-2} SEED=${SEED:-0}
export AUTOSELMATCH_NO_PROGRESS=1
GLOBAL=("$@")
asm() { python -m autoselmatch --device cpu --seed "$SEED" "${GLOBAL[@]}" "$@"; }
COMMON=(-d fashion-mnist --preset configs/fashion-mnist-active.toml --cache-dir "$OUT/cache"
        --set "experts.epochs=$EXPERT_EPOCHS")
echo "settings: IPCs $IPCS, iterations $ITERS, segments $SEGMENTS, expert epochs $EXPERT_EPOCHS," \
     "$RUNS networks, seed $SEED, global options $*" | tee "$OUT/settings.txt"
asm experts "${COMMON[@]}" > /dev/null || exit 1
score() {  # score NAME IPC: evaluate OUT/NAME-IPC on the test split with DSA, once
  [ -s "$OUT/eval-$1-$2.json" ] && return 0
  asm evaluate "$OUT/$1-$2/result.pt" "${COMMON[@]}" --split test --augment dsa --runs "$RUNS" --output json \
      > "$OUT/eval-$1-$2.json.tmp" && mv "$OUT/eval-$1-$2.json.tmp" "$OUT/eval-$1-$2.json"
}
for IPC in $IPCS; do
  iterations=$(tr ' ' '\n' <<< "$ITERS" | awk -F: -v ipc="$IPC" '$1 == ipc {print $2}')
  [ -n "$iterations" ] || { echo "no iterations for IPC $IPC in ITERS='$ITERS'" >&2; exit 2; }
  [ -s "$OUT/random-$IPC/result.pt" ] || asm distill "${COMMON[@]}" --ipc "$IPC" --alpha 0 --init random \
      --iterations 0 --out "$OUT/random-$IPC" --overwrite > /dev/null
  score random "$IPC"
  for segment in $SEGMENTS; do
    IFS=: read -r name low high <<< "$segment"
    [ -s "$OUT/$name-$IPC/result.pt" ] || asm distill "${COMMON[@]}" --ipc "$IPC" --alpha 1 --init random \
        --iterations "$iterations" --set "distill.min_start_epoch=$low" --set "distill.max_start_epoch=$high" \
        --out "$OUT/$name-$IPC" --overwrite --output json > "$OUT/distill-$name-$IPC.json"
    score "$name" "$IPC"
  done
done
python - "$OUT" "$SEGMENTS" <<'PY'
import json, statistics, sys
from pathlib import Path
out, segments = Path(sys.argv[1]), {s.split(":")[0]: s.split(":")[1:] for s in sys.argv[2].split()}
print("| IPC | set | start rows [T-, T+) | loss ratio | eta | pixel change (std) | test accuracy (%) |")
print("|---|---|---|---|---|---|---|")
order = ["random", *segments]
cells = [path.stem[len("eval-"):].rsplit("-", 1) for path in out.glob("eval-*.json")]
for name, ipc in sorted(cells, key=lambda c: (int(c[1]), order.index(c[0]) if c[0] in order else len(order))):
    path = out / f"eval-{name}-{ipc}.json"
    acc = [100 * a for a in json.loads(path.read_text())["accuracies"]]
    try:
        report = json.loads((out / f"distill-{name}-{ipc}.json").read_text())
    except (OSError, ValueError):
        report = {}
    activity = report.get("activity") or {}
    ratio, pixels, eta = activity.get("loss_ratio"), activity.get("pixel_change"), report.get("eta")
    rows = "[{}, {})".format(*segments[name]) if name in segments else "-"
    cell = lambda v, f: "-" if v is None else format(v, f)
    print(f"| {ipc} | {name} | {rows} | {cell(ratio, '.3f')} | {cell(eta, '.4f')} | {cell(pixels, '.3f')} | "
          f"{statistics.mean(acc):.2f} ± {statistics.pstdev(acc):.2f} ({', '.join(f'{a:.2f}' for a in acc)}) |")
PY
