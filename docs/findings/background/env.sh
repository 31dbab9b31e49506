# Shared settings of the background study scripts (sourced, not run). Paths are derived, never machine-specific:
# REPO is this checkout's root; WORK (default: a folder `repro` beside it) holds the frozen checkouts and the
# study folders, which are never committed as a whole.
REPO=${REPO:-$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)}
WORK=${WORK:-$(dirname "$REPO")/repro}
# model -> the folder of the repository where its study's runs are committed
declare -A COMMITTED=([smollm2]=docs/findings/runs [gemma3-270m]=docs/findings/gemma3-270m/runs)
# A study folder must not be named after a packaged model: the checkout frozen for SmolLM2 (d901117) predates
# eb79675 and would record `--model smollm2` as the path of a folder `./smollm2` in the working directory.
study_dir() { echo "$WORK/study-$1"; }
# `seed_study MODEL`: the study folder seeded from the committed runs (a run already there is kept), so that a new
# machine skips the complete runs and resumes the parked ones (committed with their newest checkpoint)
seed_study() {
    local out run
    out=$(study_dir "$1")
    mkdir -p "$out"
    [ -n "${COMMITTED[$1]:-}" ] || return 0   # a model with no committed study (the tests' tiny one)
    for run in "$REPO/${COMMITTED[$1]}"/*/; do
        [ -e "$out/$(basename "$run")" ] || cp -r "$run" "$out/"
    done
}
# model -> the commit its study trains from (checkout.sh makes that checkout, with seed-power.patch applied)
declare -A FROZEN=([smollm2]=d901117 [gemma3-270m]=2388a29)
# this repository's environment: the budget rule (eptk.reproduce.continuations) as main has it
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
# `stage_continuation FROM NAME` (in a study folder): NAME, the continuation of the finished run FROM (RULES.md
# amendment 1), made from FROM's small files and checkpoint, not its evaluation, with config.json's out and name
# saying NAME; made in NAME.tmp and renamed, so a copy cut short leaves no NAME. Nothing to do when NAME exists
# (begun already, or a later round's, which goes on in its own folder) or FROM kept no checkpoint (NAME is then
# trained again from FROM's config.json)
stage_continuation() {
    local from=$1 name=$2
    [ ! -d "$name" ] && [ -f "$from/checkpoint/latest" ] || return 0
    rm -rf "$name.tmp" && mkdir "$name.tmp"
    find "$from" -maxdepth 1 -type f ! -name '.*' ! -name eval.json ! -name predictions.jsonl \
        -exec cp -p {} "$name.tmp/" \;
    cp -r "$from/checkpoint" "$name.tmp/"
    "$PYTHON" - "$name.tmp/config.json" "$name" <<'EOF'
import json, sys
path, name = sys.argv[1:]
config = json.load(open(path))
config["out"] = config["name"] = name
json.dump(config, open(path, "w"), indent=2)
EOF
    mv "$name.tmp" "$name"
}
