#!/usr/bin/env bash
# `rerun.sh RUN`: a committed study run (RUN: its folder, relative to the repository root, e.g.
# docs/findings/runs/v2-arith-deep-last3-region-data-lrsprior-s1) trained again from its config.json by this
# repository's eptk, from the repository root, on one thread, into $WORK/rerun/; then compared with the committed
# run (python -m eptk.reproduce.rerun_check: both scores, where the validation curves part, whether the rerun's
# score lies within its arm's seeds) and the comparison appended to reruns.jsonl beside the study's runs folder.
set -euo pipefail
source "$(dirname "$0")/env.sh"
run=${1:?usage: rerun.sh RUN (a committed run folder, relative to the repository root)}
cd "$REPO"
[ -f "$run/eval.json" ] || { echo "error: $run is not a finished committed run (no eval.json)" >&2; exit 2; }
again="$WORK/rerun/$(basename "$run")"
mkdir -p "$WORK/rerun"
# a rerun begun already resumes (one that finished has nothing to do and is only compared again)
if [ -f "$again/config.json" ]; then
    OMP_NUM_THREADS=1 "$PYTHON" -m eptk.cli tune --resume "$again" --quiet
else
    OMP_NUM_THREADS=1 "$PYTHON" -m eptk.cli tune --config "$run/config.json" --out "$again" --quiet
fi
"$PYTHON" -m eptk.reproduce.rerun_check "$run" "$again" --record "$(dirname "$run")/../reruns.jsonl"
