#!/usr/bin/env bash
# One model's whole study in the background: `drive.sh MODEL CHECKOUT` alternates study.sh's converged stage (the
# version-2 runs and the further seeds the power rule grows an arm by) and extend.sh (RULES.md amendment 1's
# continued runs), since each can list new work once the other has finished some: a round's continuations only
# once its runs are in, an arm's further seeds only once its runs are settled at the round's budget. Stops after a
# pass in which neither trained anything, or as soon as either fails. JOBS=2 runs two at once in both phases
# (study.sh's runs, and two extend.sh sharing the round), each on one thread. At a session's end it is stopped
# first (before study.sh and extend.sh), or it would start the next one.
set -euo pipefail
here=$(dirname "$0")
model=$1 checkout=$2
lines=$(mktemp)
trap 'rm -f "$lines"' EXIT
# JOBS extend.sh at once (they claim continuations by flock, so each is trained once); fails if any of them fails
extend_all() {
    local pids=() pid failed=0
    for _ in $(seq 1 "${JOBS:-1}"); do
        bash "$here/extend.sh" "$model" "$checkout" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    return "$failed"
}
for pass in $(seq 1 100); do
    # their lines go to the log as they come; a failure of either stops the driver (pipefail)
    { bash "$here/study.sh" "$model" "$checkout" converged && extend_all; } | tee "$lines"
    # the lines that name a run being trained
    trained=$(grep -cE ": stage converged \(round [0-9]+\) from |: v3-[^ ]+ to [0-9]+ steps \(from " "$lines" || true)
    echo "$(date -u +%FT%TZ) $model: pass $pass of drive.sh trained $trained time(s)"
    [ "$trained" -gt 0 ] || break
done
echo "$(date -u +%FT%TZ) $model: drive.sh done"
