#!/bin/bash
# Issue 24's own measure of a tune step: whole-process wall times of 4- and 24-step `eptk tune` runs (SmolLM2,
# arith, batch 8, P = 20, --eval-every 0 --test-size 1), several commits interleaved, ROUNDS rounds; a step costs
# (t24 - t4) / 20. Each commit runs from its own copy of the package (git archive), with this checkout's venv.
# Beside the wall time, the process's CPU time (user + system, /usr/bin/time): on a shared machine a process that
# waits for a core loses wall time but not CPU time, so with THREADS=1 the CPU time is the steadier measure.
#   [THREADS=N] bash benchmarks/whole_process.sh METHOD ROUNDS COMMIT...   e.g. soft 2 1ac4033 607a55f HEAD
set -euo pipefail
method=$1; rounds=$2; shift 2
root=$(cd "$(dirname "$0")/.." && pwd); python="$root/.venv/bin/python"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
for c in "$@"; do  # the package layout pyproject.toml maps: kernels/ and cli/ inside eptk/
  mkdir -p "$work/src-$c" "$work/pkg-$c"
  git -C "$root" archive "$c" eptk kernels cli | tar -x -C "$work/src-$c"
  mv "$work/src-$c/eptk" "$work/pkg-$c/eptk"; mv "$work/src-$c/kernels" "$work/src-$c/cli" "$work/pkg-$c/eptk/"
done
[ -n "${THREADS:-}" ] && export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
echo "commit,steps,round,wall_s,cpu_s"
for r in $(seq 1 "$rounds"); do
  for c in "$@"; do
    for steps in 4 24; do
      (cd "$work" && PYTHONPATH="$work/pkg-$c" /usr/bin/time -f "%e,%U,%S" -o "$work/time" "$python" -m eptk.cli.main tune --method "$method" --batch-size 8 \
        --tokens 20 --steps "$steps" --eval-every 0 --test-size 1 --out "$work/run-$c-$steps-$r" >"$work/log" 2>&1) \
        || { echo "error: eptk tune at $c ($steps steps) failed: $(tail -n 1 "$work/log")" >&2; exit 1; }
      IFS=, read -r wall user sys < "$work/time"
      echo "$c,$steps,$r,$wall,$(echo "$user + $sys" | bc)"
    done
  done
done
