#!/usr/bin/env bash
# The GPU check of issue 15, for a short GPU window: correctness first, then the prefix-attention
# benchmark, then the end-to-end tune steps, then (time allowing) the capture benchmark and the
# profile of the tune steps (where their time goes: host or kernels). Each step
# runs under its own `timeout` inside one budget (GPU_CHECK_BUDGET_S, default 450 s: a 15-minute
# lease less start-up, with time for a rerun) and prints progress; a failed or timed-out step is
# reported and the next one still runs. Results, in benchmarks/results/ (copied to $OUT when set),
# all named <device>-<date>-gpu-* so that `make bench` (<device>-<date>.{json,md}) never collides:
#   -gpu-check.log (this script's output), -gpu-tests.log (pytest -m gpu),
#   -gpu-kernel.{json,md} (prefix attention), -gpu-tune.{json,md} (end to end), -gpu-capture.json,
#   -gpu-profile.json (its .md is written beside it; $OUT gets the JSON alone, a device run returning at
#   most 8 files: `python benchmarks/gpu_profile_step.py --render --out <that path less .json>` writes it)
#
#   bash benchmarks/gpu_check.sh            # GPU machine, offline; eptk is installed here first
#   bash benchmarks/gpu_check.sh --dry-run  # any machine: the same steps on CPU, tiny shapes, the
#                                           # kernels interpreted; results go to a temp folder
#   GPU_CHECK_STEPS=tune bash benchmarks/gpu_check.sh   # a rerun of some steps: tests,kernel,tune,capture,profile
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
dry=0
[[ ${1:-} == --dry-run ]] && dry=1
started=$(date +%s)
# A dry run on a (slow, shared) CPU only proves the paths: it gets more time.
budget=${GPU_CHECK_BUDGET_S:-$( ((dry)) && echo 900 || echo 450)}
steps=",${GPU_CHECK_STEPS:-tests,kernel,tune,capture,profile},"
declare -A status
order=()

elapsed() { echo $(($(date +%s) - started)); }

left() {  # seconds left in the budget, at most $1
    local rest=$((budget - $(elapsed)))
    ((rest < $1)) && echo "$rest" || echo "$1"
}

wanted() { [[ $steps == *",$1,"* ]]; }

step() {  # step NAME LIMIT_S COMMAND...: time-limited; skipped when under 10 s are left
    local name=$1 limit
    limit=$(left "$2")
    shift 2
    order+=("$name")
    if ((limit < 10)); then
        echo "=== ${name}: SKIPPED, budget spent ($(elapsed) s in)"
        status[$name]=skipped
        return
    fi
    echo "=== ${name} ($(elapsed) s in, limit ${limit} s)"
    if declare -F "$1" >/dev/null; then
        "$@" "$limit"  # a function of this script keeps to the limit itself
    else
        timeout --signal=INT --kill-after=10 "$limit" "$@"
    fi
    status[$name]=$?
    echo "--- ${name}: exit ${status[$name]} ($(elapsed) s in)"
}

# The Triton standard library is built when triton is imported: compiled only if the interpreter
# is off then. tests/conftest.py switches it on per test for the interpreter tests.
unset TRITON_INTERPRET
# pytest would import every installed plugin (jax's jaxtyping among them) in every process.
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 PYTHONUNBUFFERED=1
if ((dry)); then
    results=$(mktemp -d)
    marks="gpu or interpreter"
    select="gpu or split or window1 or rejects"  # a few quick interpreter tests exercise the shards
else
    results=benchmarks/results
    marks="gpu"
    select=""
fi
mkdir -p "$results"
# Every result file is <device>-<date>-gpu-*: `make bench` writes <device>-<date>.{json,md}.
name=$("$PY" -c "import sys; sys.path.insert(0, 'benchmarks')
from common import device_name, slug; print(slug(device_name()))")-$(date +%F)-gpu
log=$results/$name-tests.log kernel_out=$results/$name-kernel tune_out=$results/$name-tune
capture_out=$results/$name-capture profile_out=$results/$name-profile
files=("$results/$name-check.log" "$log" "$kernel_out".{json,md} "$tune_out".{json,md} "$capture_out.json"
       "$profile_out.json")
# Everything printed from here on also goes to the check's own log (closed and flushed at the end).
exec > >(tee "$results/$name-check.log") 2>&1
tee_pid=$!
if ((!dry)); then
    step install 60 "$PY" -m pip install -q --no-deps --no-build-isolation -e .
    step device 20 nvidia-smi -L
fi
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
      'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"

run_tests() {  # the selected tests, split over shards run side by side (Triton compiles per process)
    local shards=${GPU_TEST_SHARDS:-4} limit=$1 i j ids pids=() extra=()
    "$PY" -c "import pytest_timeout" 2>/dev/null && extra=(-p pytest_timeout --timeout=$((limit * 2 / 3)))
    mapfile -t ids < <("$PY" -m pytest --collect-only -q -p no:cacheprovider -m "$marks" \
        ${select:+-k "$select"} ${GPU_TEST_PATHS:-tests} | grep '::')
    echo "${#ids[@]} tests in ${shards} shards"
    for ((i = 0; i < shards; i++)); do
        local mine=()
        for ((j = i; j < ${#ids[@]}; j += shards)); do mine+=("${ids[$j]}"); done
        ((${#mine[@]})) || continue
        # Fixed kernel configs keep compilation short; one test autotunes at the target shape.
        EPTK_AUTOTUNE=0 timeout --signal=INT --kill-after=10 "$limit" "$PY" -m pytest -q -rfEs \
            -p no:cacheprovider --durations=5 "${extra[@]}" "${mine[@]}" >"$results/shard$i.log" 2>&1 &
        pids+=($!)
    done
    local shown=$(elapsed)
    while (($(jobs -rp | wc -l))); do  # progress every 15 s: the end of each shard's log
        sleep 2
        (($(elapsed) - shown < 15)) && continue
        shown=$(elapsed)
        for f in "$results"/shard*.log; do echo "  [${shown} s] $(basename "$f"): $(tail -c 100 "$f" | tr '\n' ' ')"; done
    done
    local failed=0
    for ((i = 0; i < ${#pids[@]}; i++)); do wait "${pids[$i]}" || failed=1; done
    for f in "$results"/shard*.log; do echo "##### $(basename "$f")"; cat "$f"; done >"$log"
    rm -f "$results"/shard*.log
    grep -E "passed|failed|error" "$log" | grep -E "^(=|[0-9])" || true
    return $failed
}

wanted tests && step gpu-tests "${GPU_TESTS_S:-150}" run_tests

# The benchmarks stop starting stages before their own limits, so they always write their results.
inner() { echo $(($1 > 40 ? $1 - 20 : $1 / 2)); }
bench_limit=$(left "${GPU_BENCH_S:-120}")
wanted kernel && step kernel-bench "$bench_limit" "$PY" benchmarks/gpu_bench.py --out "$kernel_out" \
    --budget-s "$(inner "$bench_limit")" $( ((dry)) && echo --dry-run)
# End to end (issue 15 items 3 and 4): random models of SmolLM2's and Llama-3.2-1B's shapes.
tune_limit=$(left "${TUNE_S:-$( ((dry)) && echo 300 || echo 160)}")
wanted tune && step tune-e2e "$tune_limit" "$PY" benchmarks/gpu_tune.py --out "$tune_out" \
    --budget-s "$(inner "$tune_limit")" $( ((dry)) && echo --dry-run --rounds 1 --row-limit-s 150)

whole() {  # whole LIMIT_S NAME COMMAND...: a step that is only worth its full limit
    local limit=$1
    shift
    if (($(left "$limit") < limit)); then
        order+=("$1")
        status[$1]=skipped
        echo "=== $1: SKIPPED, under ${limit} s left ($(elapsed) s in)"
        return
    fi
    step "$1" "$limit" "${@:2}"
}

if wanted capture; then  # only in the time left
    whole "${CAPTURE_S:-$( ((dry)) && echo 120 || echo 40)}" capture-bench \
        "$PY" benchmarks/bench_capture.py --out "$capture_out" $( ((dry)) && echo --dry-run)
fi

if wanted profile; then  # only in the time left: a diagnosis, after every measured target
    whole "${PROFILE_S:-$( ((dry)) && echo 120 || echo 150)}" profile-steps "$PY" benchmarks/gpu_profile_step.py \
        --out "$profile_out" --budget-s "$( ((dry)) && echo 100 || echo 130)" $( ((dry)) && echo --dry-run --steps 1 --warm 1)
fi

echo "=== steps ($(elapsed) s in all)"
failed=0
for n in "${order[@]}"; do
    echo "  ${n}: ${status[$n]}"
    [[ ${status[$n]} == 0 || ${status[$n]} == skipped ]] || failed=1
done
echo "results: ${files[*]}"
for f in "$kernel_out.md" "$tune_out.md"; do [[ -f $f ]] && cat "$f"; done
exec >&- 2>&-  # the log's tee sees its end, and finishes writing before the files are copied
wait "$tee_pid"
if [[ -n "${OUT:-}" ]]; then
    for f in "${files[@]}"; do [[ -f $f ]] && cp "$f" "$OUT"/; done
fi
exit $failed
