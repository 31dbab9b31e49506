#!/usr/bin/env bash
# Claim 2's continued runs (RULES.md amendment 1) in the background: `extend.sh MODEL CHECKOUT` asks this
# repository's eptk.reproduce.continuations which runs the round under way continues and to what budget, and trains
# them one at a time, on one thread, with the frozen CHECKOUT that trained the study. A run with its checkpoint
# is copied to its v3- folder (its small files and checkpoint, not its evaluation, so the commit loop takes the
# folder only once it has finished; config.json's out and name say the new folder) and resumed with --steps B;
# a later round resumes the v3- folder in place; a run whose checkpoint was lost with a machine is trained
# again from its config.json with --steps B (the same run). Asks again after each run, until nothing is listed.
# Several extend.sh of one model share a round: each claims the continuation it trains (flock on a hidden file in
# the study folder, released when its process ends, however it ends) and checks it is still listed once claimed;
# one that finds every listed continuation claimed by another waits for the first of them and asks again (had it
# stopped, a round opened by the other's last run would be trained on one core).
set -euo pipefail
source "$(dirname "$0")/env.sh"
model=$1 checkout=$2
out=$(study_dir "$model")
seed_study "$model"
eptk="$checkout/.venv/bin/eptk"
export OMP_NUM_THREADS=1
cd "$out"  # the runs' config.json paths are relative to the study folder
list() { "$PYTHON" -m eptk.reproduce.continuations "$model" "$out"; }  # whole: `| head` would cut the pipe under it
claimed=
for pass in $(seq 1 400); do
    listed=$(list)
    [ -n "$listed" ] || break
    [ -n "$claimed" ] && exec {claim}>&-    # the previous continuation's claim
    claimed=
    while read -r source dest steps; do
        name=$(basename "$dest")
        exec {claim}>".extend-$name.claim"
        if flock -n "$claim"; then  # claimed; then still listed? another extend.sh may have finished it meanwhile
            now=$(list 2> /dev/null)
            grep -qxF "$source $dest $steps" <<< "$now" && { claimed=1; break; }
        fi
        exec {claim}>&-
    done <<< "$listed"
    if [ -z "$claimed" ]; then
        # not an exit: the other's run may end the round, and the next round's continuations are to share
        echo "$(date -u +%FT%TZ) $model: every continuation listed is another extend.sh's; waiting for the first"
        first=$(basename "$(head -n 1 <<< "$listed" | cut -d ' ' -f 2)")
        exec {claim}>".extend-$first.claim"
        flock "$claim"                            # released when that extend.sh moves on, however it ends
        exec {claim}>&-
        continue
    fi
    from=$(basename "$source")
    echo "$(date -u +%FT%TZ) $model: $name to $steps steps (from $from) by $(git -C "$checkout" describe --always --dirty)"
    if [ "$from" = "$name" ]; then              # a later round: the continuation goes on in place
        rm -f "$name/eval.json" "$name/predictions.jsonl"
    else
        stage_continuation "$from" "$name"
    fi
    if [ -f "$name/checkpoint/latest" ]; then
        "$eptk" tune --resume "$name" --steps "$steps" --quiet
    else                                         # no training state: the same run trained from the start
        "$eptk" tune --config "$from/config.json" --steps "$steps" --out "$name" --overwrite --quiet
    fi
done
echo "$(date -u +%FT%TZ) $model: nothing more to continue in this round"
