#!/usr/bin/env bash
# Every two minutes: each study run that finished (its eval.json written at least a minute ago) gets its small
# files (the files at the top of its folder, but not hidden ones such as the run's .lock; never the checkpoints)
# copied into the committed runs folder and committed on their own (`git commit -- PATHS` leaves whatever else is
# staged alone). A run that was parked has its committed checkpoint removed once it is complete. `--once`: one pass,
# then exit (a session's end, after the studies are stopped and their last runs' eval.json are a minute old).
set -uo pipefail
once=${1:-}
source "$(dirname "$0")/env.sh"
while true; do
    changed=()
    for model in "${!COMMITTED[@]}"; do
        out=$(study_dir "$model")
        [ -d "$out" ] || continue
        for eval in "$out"/*/eval.json; do
            [ -f "$eval" ] && [ $(( $(date +%s) - $(stat -c %Y "$eval") )) -ge 60 ] || continue
            run=$(dirname "$eval") dest="${COMMITTED[$model]}/$(basename "$(dirname "$eval")")"
            mkdir -p "$REPO/$dest"
            find "$run" -maxdepth 1 -type f ! -name '.*' -exec cp -p {} "$REPO/$dest/" \;
            [ -d "$REPO/$dest/checkpoint" ] && git -C "$REPO" rm -rq "$dest/checkpoint"
            git -C "$REPO" add "$dest"
            [ -n "$(git -C "$REPO" status --porcelain -- "$dest")" ] && changed+=("$dest")
        done
    done
    if [ ${#changed[@]} -gt 0 ]; then
        git -C "$REPO" commit -q -m "docs/findings: ${#changed[@]} study run(s) finished (small files): ${changed[*]}" -- "${changed[@]}" \
            && echo "$(date -u +%FT%TZ) committed ${changed[*]}"
    fi
    [ "$once" != --once ] || break
    sleep 120
done
