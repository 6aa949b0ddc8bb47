#!/usr/bin/env bash
# Regenerate the proxy tables from scratch on real CIFAR-100 images (cifar100-mini):
#   1. per label set (coarse, fine), in parallel, one thread each: train the proxy teacher
#      (recipes/proxy/teacher*.toml), export it with `gluon-tricks export` to the .params file
#      the distillation rows load, then train every row of recipes/proxy/<labels>/table.toml,
#      one seed of every row first, then the second and third seeds;
#   2. copy the finished runs (no checkpoints) into results/, where a fresh clone finds them;
#   3. print the table and draw the pictures into docs/proxy/.
# Resumable: run it again after an interruption. Usage (from anywhere, venv active or not):
#   recipes/proxy/regenerate.sh            # full suite
#   recipes/proxy/regenerate.sh --epochs-scale 0.13 --seeds 1   # a smoke test (results not copied)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
GT="$PY -m gluon_tricks"
scale=1; seeds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --epochs-scale) scale="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    *) echo "usage: $0 [--epochs-scale F] [--seeds N]" >&2; exit 2 ;;
  esac
done
runs="${GLUON_TRICKS_RUNS:-runs}"
# Train into the runs root even where committed results exist (they are what this replaces).
export GLUON_TRICKS_RESULTS=""
export MXNET_ENGINE_TYPE="${MXNET_ENGINE_TYPE:-NaiveEngine}"
start=$(date +%s)

half() {
  local labels="$1" recipe="recipes/proxy/teacher.toml"
  [ "$labels" = fine ] && recipe="recipes/proxy/teacher-fine.toml"
  local run="$runs/proxy-teacher-$labels"
  # the file recipes/proxy/distill.toml (and the fine rows' override) name
  local params="runs/proxy-teachers/cifar_resnet56_v1-cifar100-mini-$labels.params"
  if [ ! -f "$run/result.json" ]; then
    local resume=()
    [ -d "$run/checkpoints" ] && resume=(--resume)
    local epochs=()
    if [ "$scale" != 1 ]; then epochs=(--epochs 1); fi
    $GT train "$recipe" --out "$run" --quiet "${resume[@]}" "${epochs[@]}"
  fi
  $GT export "$run" "$params"
  for n in $(seq 1 "$seeds"); do
    $GT table "proxy/$labels" --run --seeds "$n" --epochs-scale "$scale" --quiet > /dev/null
  done
  echo "proxy $labels: done after $(( $(date +%s) - start )) s"
}

OMP_NUM_THREADS=1 half coarse > "$runs/proxy-coarse.log" 2>&1 &
coarse=$!
OMP_NUM_THREADS=1 half fine > "$runs/proxy-fine.log" 2>&1 &
fine=$!
status=0
wait $coarse || status=$?
wait $fine || status=$?
cat "$runs/proxy-coarse.log" "$runs/proxy-fine.log" | grep -v '^\[' | tail -n 20
[ $status -eq 0 ] || { echo "a half failed (exit $status); logs: $runs/proxy-{coarse,fine}.log" >&2; exit $status; }
echo "suite wall time: $(( $(date +%s) - start )) s (2 processes, 1 thread each)"
[ "$scale" = 1 ] || exit 0

# Keep each finished run's record (not its checkpoints) where a fresh clone looks for results.
$PY - "$runs" <<'PY'
import shutil, sys
from pathlib import Path
from gluon_tricks.tables import collect, load_table
from gluon_tricks.cli import recipes_root
dirs = set()
for name in ("proxy/coarse", "proxy/fine", "proxy/teachers"):
    for row in collect(load_table(recipes_root(), name), runs_root=sys.argv[1]):
        dirs.update(row["run_dirs"])
for d in sorted(map(Path, dirs)):
    out = Path("results") / d.name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for f in ("run.json", "recipe.toml", "metrics.jsonl", "result.json"):
        shutil.copy2(d / f, out / f)
print(f"{len(dirs)} runs copied into results/")
PY
unset GLUON_TRICKS_RESULTS
$GT table proxy
$GT table proxy/teachers
$GT plot proxy --out docs/proxy
