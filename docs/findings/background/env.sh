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
