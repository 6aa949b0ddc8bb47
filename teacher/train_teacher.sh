#!/usr/bin/env bash
# Train the follow-up paper's teacher and export its weights for distillation.
#   teacher/train_teacher.sh coarse|fine [extra gluon-tricks train flags, e.g. --ctx gpu:0]
# Writes teacher/cifar_resnext29_16x64d-cifar100-<labels>.params, which the distillation
# recipes name in distill.teacher (with distill.teacher_model = "cifar_resnext29_16x64d").
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
labels="${1:-coarse}"; shift || true
case "$labels" in
  coarse) recipe="$here/resnext29_teacher.toml" ;;
  fine)   recipe="$here/resnext29_teacher_fine.toml" ;;
  *) echo "usage: $0 coarse|fine [gluon-tricks train flags]" >&2; exit 2 ;;
esac
run="runs/teacher-resnext29-$labels"
resume=()
[ -d "$run/checkpoints" ] && resume=(--resume)
gluon-tricks train "$recipe" --out "$run" "${resume[@]}" "$@"
gluon-tricks export --overwrite "$run" "$here/cifar_resnext29_16x64d-cifar100-$labels.params"
