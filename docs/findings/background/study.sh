#!/usr/bin/env bash
# One study in the background: `study.sh MODEL CHECKOUT STAGE...` runs `eptk reproduce --model MODEL --stages
# STAGE` for each STAGE in turn from the frozen CHECKOUT's own virtual environment (so that later commits cannot
# change its runs; made by checkout.sh), one run at a time on one thread; JOBS=2 runs two at once, each on one
# thread (one model on both cores). The study folder is first seeded from the committed runs: complete runs are
# skipped and parked runs (committed with their newest checkpoint) resume from that step. A stage runs again while
# its plan still lists runs to train: the converged stage lists the further seeds the power rule asks for only once
# an arm's first seeds are in (seed-power.patch).
set -euo pipefail
source "$(dirname "$0")/env.sh"
model=$1 checkout=$2; shift 2
out=$(study_dir "$model")
eptk="$checkout/.venv/bin/eptk"
seed_study "$model"
cd "$WORK"
for stage in "$@"; do
    for round in 1 2 3 4 5 6 7 8 9 10; do
        plan=$("$eptk" reproduce --model "$model" --out "$out" --stages "$stage" --plan)
        grep -qE "^$stage +(fresh|resume|overwrite) " <<< "$plan" || break
        echo "$(date -u +%FT%TZ) $model: stage $stage (round $round) from $(git -C "$checkout" describe --always --dirty)"
        OMP_NUM_THREADS=1 "$eptk" reproduce --model "$model" --out "$out" --stages "$stage" --jobs "${JOBS:-1}"
    done
done
echo "$(date -u +%FT%TZ) $model: done"
