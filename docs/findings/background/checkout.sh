#!/usr/bin/env bash
# `checkout.sh MODEL DIR`: the checkout a study trains from (its commit in env.sh's FROZEN, so that later commits
# cannot change its runs), with seed-power.patch applied (the converged stage then also trains the further seeds
# the power rule asks of an arm, as the report does since it was added; no training code changes), its own
# virtual environment, and for Gemma the model. Safe to run again on an existing checkout.
set -euo pipefail
source "$(dirname "$0")/env.sh"
model=$1 dir=$2
commit=${FROZEN[$model]:?"no frozen commit for $model (env.sh: ${!FROZEN[*]})"}
patch="$REPO/docs/findings/background/seed-power.patch"
[ -d "$dir" ] || git -C "$REPO" worktree add --detach "$dir" "$commit"
if git -C "$dir" apply --reverse --check "$patch" 2>/dev/null; then
    echo "$dir: seed-power.patch already applied"
else
    git -C "$dir" apply "$patch"
fi
make -C "$dir" setup
[ "$model" != gemma3-270m ] || make -C "$dir" gemma
echo "$dir: $model's checkout at $(git -C "$dir" rev-parse --short HEAD) + seed-power.patch"
