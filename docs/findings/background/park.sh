#!/usr/bin/env bash
# At a session's end, once the studies are stopped: each run still training (no eval.json, a checkpoint) is
# committed with its small files and its newest checkpoint only, so that the next session (on this machine or a
# new one) resumes it from that step (study.sh seeds its study folder from the committed runs); so is each claim-2
# continuation not yet begun whose run kept its checkpoint (made first, as extend.sh makes it).
set -euo pipefail
source "$(dirname "$0")/env.sh"
# a continuation not begun whose run kept its checkpoint (a run that used its whole budget, trained on this machine)
# is made now, so that it is parked below with that checkpoint: a new machine would train it again from the start
for model in "${!COMMITTED[@]}"; do
    out=$(study_dir "$model")
    [ -d "$out" ] || continue
    listed=$("$PYTHON" -m eptk.reproduce.continuations "$model" "$out")
    while read -r source dest steps; do
        [ -z "$dest" ] || (cd "$out" && stage_continuation "$(basename "$source")" "$(basename "$dest")")
    done <<< "$listed"
done
parked=()
for model in "${!COMMITTED[@]}"; do
    out=$(study_dir "$model")
    [ -d "$out" ] || continue
    for latest in "$out"/*/checkpoint/latest; do
        run=$(dirname "$(dirname "$latest")")
        [ -f "$latest" ] && [ ! -f "$run/eval.json" ] || continue
        dest="${COMMITTED[$model]}/$(basename "$run")" step=$(cat "$latest")
        [ -d "$REPO/$dest/checkpoint" ] && git -C "$REPO" rm -rq --ignore-unmatch "$dest/checkpoint" && rm -rf "$REPO/$dest/checkpoint"
        mkdir -p "$REPO/$dest/checkpoint"
        find "$run" -maxdepth 1 -type f ! -name '.*' -exec cp -p {} "$REPO/$dest/" \;
        # a continuation trained further in place (RULES.md amendment 1) drops its earlier round's evaluation
        git -C "$REPO" rm -q --ignore-unmatch "$dest/eval.json" "$dest/predictions.jsonl"
        cp -p "$latest" "$REPO/$dest/checkpoint/"
        cp -rp "$run/checkpoint/$step" "$REPO/$dest/checkpoint/"
        git -C "$REPO" add "$dest"
        parked+=("$dest")
    done
done
[ ${#parked[@]} -gt 0 ] && git -C "$REPO" commit -q -m "docs/findings: ${#parked[@]} study run(s) still training parked at their newest checkpoint (resumed next session)" -- "${parked[@]}"
echo "parked: ${parked[*]:-none}"
