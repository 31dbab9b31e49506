#!/usr/bin/env bash
# GPU check of the Triton prefix-attention kernel: correctness against the float64 reference, then
# the benchmark at the target shape. One script, offline, bounded by a deadline (default 450 s,
# GPU_CHECK_DEADLINE_S overrides) that includes Triton compilation. Every stage is guarded: a
# failure is reported and the next stage still runs. Results: benchmarks/results/<device>.json
# and .txt, copied to $OUT when it is set; the benchmark table prints last.
set -u
cd "$(dirname "$0")/.."
started=$(date +%s)
deadline=$((started + ${GPU_CHECK_DEADLINE_S:-540}))
declare -A status
log_dir=$(mktemp -d)

left() {  # seconds left before the deadline, capped at $1
    local rest=$((deadline - $(date +%s)))
    ((rest < $1)) && echo $((rest > 1 ? rest : 1)) || echo "$1"
}

stage() {  # stage NAME LIMIT_S COMMAND... : run guarded and time-limited, remember the exit code
    local name=$1 limit
    limit=$(left "$2")
    shift 2
    echo "=== ${name} ($(($(date +%s) - started)) s elapsed, limit ${limit} s)"
    timeout --signal=INT --kill-after=10 "${limit}" "$@"
    status[$name]=$?
}

stage install 90 python -m pip install --no-deps --no-build-isolation -e . -q
stage device 20 nvidia-smi -L
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

# Correctness. TRITON_INTERPRET=0 switches the interpreter tests off and the GPU tests on; fixed
# kernel configs (EPTK_AUTOTUNE=0) keep compilation short, one test autotunes at the target shape.
# Three shards run side by side so their Triton compilations use separate CPU cores.
export TRITON_INTERPRET=0 EPTK_AUTOTUNE=0
shards=("gpu and ragged"
        "gpu and (decode or D256 or P0)"
        "gpu and not ragged and not decode and not D256 and not P0")
limit=$(left ${GPU_TESTS_S:-210})
echo "=== gpu tests, ${#shards[@]} shards ($(($(date +%s) - started)) s elapsed, limit ${limit} s)"
pids=()
for i in "${!shards[@]}"; do
    timeout --signal=INT --kill-after=10 "${limit}" python -m pytest -x -q -p no:cacheprovider \
        tests/test_prefix_attention.py -k "${shards[$i]}" >"${log_dir}/shard$i.log" 2>&1 &
    pids+=($!)
done
for i in "${!pids[@]}"; do
    wait "${pids[$i]}"
    status["gpu-tests-shard$i"]=$?
    echo "--- shard $i: ${shards[$i]} (exit ${status[gpu-tests-shard$i]})"
    tail -n 25 "${log_dir}/shard$i.log"
done

# GPU tests of other modules, where there are any (exit 5 = none collected, not a failure).
stage other-gpu-tests ${GPU_OTHER_S:-60} python -m pytest -x -q -p no:cacheprovider -m gpu tests \
    --ignore=tests/test_prefix_attention.py
[[ ${status[other-gpu-tests]} == 5 ]] && status[other-gpu-tests]=0
unset EPTK_AUTOTUNE

# The driver stops starting stages 30 s before its own limit, so it always writes its results.
bench_limit=$(left ${GPU_BENCH_S:-230})
bench_budget=$((bench_limit > 60 ? bench_limit - 30 : bench_limit / 2))
stage benchmark "${bench_limit}" python benchmarks/gpu_bench.py --budget-s "${bench_budget}" \
    --flex-limit-s ${FLEX_LIMIT_S:-90}

# End to end: one optimizer step of eptk soft / deep / prefix against PEFT on SmolLM2- and
# Llama-3.2-1B-shaped models (bf16), then a tiny deep run through the Triton kernel, then capture.
stage tune-step ${TUNE_STEP_S:-110} python benchmarks/bench_tune_step.py benchmarks/results
if [[ -n "${OUT:-}" ]]; then cp benchmarks/results/tune-step-*.md "$OUT"/ 2>/dev/null; fi
stage e2e-tune ${E2E_S:-60} python -m eptk.cli tune --model tiny --method deep --layers all --steps 3 \
    --batch-size 4 --test-size 8 --eval-size 8 --backend triton --quiet --out "${log_dir}/e2e" --overwrite
stage capture-bench ${CAPTURE_S:-40} python benchmarks/bench_capture.py

echo "=== stages ($(($(date +%s) - started)) s in all)"
failed=0
for name in "${!status[@]}"; do
    echo "  ${name}: exit ${status[$name]}"
    [[ ${status[$name]} == 0 ]] || failed=1
done
table=$(ls -t benchmarks/results/*.txt 2>/dev/null | head -n 1)
[[ -n ${table} ]] && cat "${table}"
exit ${failed}
