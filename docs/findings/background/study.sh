#!/usr/bin/env bash
# One study in the background: `study.sh MODEL CHECKOUT STAGE...` runs `eptk reproduce --model MODEL --stages
# STAGE` for each STAGE in turn from the frozen CHECKOUT's own virtual environment (so that later commits cannot
# change its runs), one run at a time on one thread. The study folder is first seeded from the committed runs:
# complete runs are skipped and parked runs (committed with their newest checkpoint) resume from that step.
set -euo pipefail
source "$(dirname "$0")/env.sh"
model=$1 checkout=$2; shift 2
out=$(study_dir "$model")
mkdir -p "$out"
for run in "$REPO/${COMMITTED[$model]}"/*/; do
    name=$(basename "$run")
    [ -e "$out/$name" ] || cp -r "$run" "$out/$name"
done
cd "$WORK"
for stage in "$@"; do
    echo "$(date -u +%FT%TZ) $model: stage $stage from $(git -C "$checkout" rev-parse --short HEAD)"
    OMP_NUM_THREADS=1 "$checkout/.venv/bin/eptk" reproduce --model "$model" --out "$out" --stages "$stage" --jobs 1
done
echo "$(date -u +%FT%TZ) $model: done"
