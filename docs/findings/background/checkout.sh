#!/usr/bin/env bash
# `checkout.sh MODEL DIR`: the checkout a study trains from (its commit in env.sh's FROZEN, so that later commits
# cannot change its runs), with seed-power.patch applied (the converged stage then also trains the further seeds
# the power rule asks of an arm, read at the budget round of RULES.md amendment 1, as the report does; no training
# code changes), its own virtual environment, and for Gemma the model. Safe to run again on an existing checkout.
set -euo pipefail
source "$(dirname "$0")/env.sh"
model=$1 dir=$2
commit=${FROZEN[$model]:?"no frozen commit for $model (env.sh: ${!FROZEN[*]})"}
patch="$REPO/docs/findings/background/seed-power.patch"
[ -d "$dir" ] || git -C "$REPO" worktree add --detach "$dir" "$commit"
# the files the patch touches as the frozen commit has them (one it adds: absent), then the patch, so that an
# earlier version of it is replaced
for file in $(git -C "$dir" apply --numstat "$patch" | cut -f3); do
    git -C "$dir" checkout -- "$file" 2>/dev/null || rm -f "$dir/$file"
done
git -C "$dir" apply "$patch"
make -C "$dir" setup
[ "$model" != gemma3-270m ] || make -C "$dir" gemma
echo "$dir: $model's checkout at $(git -C "$dir" rev-parse --short HEAD) + seed-power.patch"
