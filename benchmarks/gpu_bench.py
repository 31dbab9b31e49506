"""Prefix-attention benchmark of the GPU check (benchmarks/gpu_check.sh runs it after the tests).

Target shape bf16, B=8, Hq=32, Hkv=8, T=S=2048, P=32, D=128: forward and forward+backward for
eptk-triton, SDPA (lower-right causal on the concatenation; masked), compiled FlexAttention (the
same prefix + causal semantics) and the reference; then eptk and FlexAttention on a right-padded
batch (prefix + causal + padding); decoding T=1 over a 4096-key cache for eptk against SDPA
(grouped heads, and heads repeated). TFLOP/s against the device's dense bf16 peak, peak memory,
ratios and issue 15's targets. Every stage is guarded and time-limited: a failure is recorded
and the next stage runs. Writes OUT.json and OUT.md.

    python benchmarks/gpu_bench.py --out benchmarks/results/<device>-<date> [--budget-s 200]
    python benchmarks/gpu_bench.py --dry-run --out /tmp/dry   # CPU: tiny fp32 shapes, the
        # kernel through the Triton interpreter, FlexAttention eager: exercises every code path
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_prefix_attention as bench  # noqa: E402
from bench_prefix_attention import DECODE, TARGET, Shape, forward_flops  # noqa: E402
from common import GPU, Stages, device_name, gpu_script_parser, target, targets_table, write_report  # noqa: E402

BWD_FLOP_FACTOR = 3.5  # forward: 2 matmuls; backward: 5 (QK^T again, dV, dP, dK, dQ)
# Dense bf16 peak (no sparsity) by device name, for the "% of peak" column.
PEAK_TFLOPS = {"H200": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "A100": 312.0}
DRY_TARGET = Shape(B=2, Hq=4, Hkv=2, T=24, S=24, P=4, D=16, dtype="float32")
DRY_DECODE = Shape(B=2, Hq=4, Hkv=2, T=1, S=64, P=4, D=16, dtype="float32")
FB = "forward+backward"


@contextlib.contextmanager
def fixed_configs():
    """eptk's first config per kernel instead of autotuning (EPTK_AUTOTUNE=0): for the checks and
    the padded rows, whose extra specializations would otherwise each compile every config."""
    before = os.environ.get("EPTK_AUTOTUNE")
    os.environ["EPTK_AUTOTUNE"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("EPTK_AUTOTUNE")
        else:
            os.environ["EPTK_AUTOTUNE"] = before


class Run(Stages):
    """The kernel benchmark's stages: rows, checks and notes beside the errors."""

    def __init__(self, budget_s, dry_run):
        super().__init__(budget_s)
        self.dry_run = dry_run
        self.rows, self.checks, self.notes = [], {}, {}

    def measure(self, step):
        if self.dry_run:  # CPU timer and the profiler's peak, one round: the path, not the number
            from common import measure
            return {k: v for k, v in measure(step, rounds=1).items() if k != "ms_min"}
        return bench.measure(step)


def peak_tflops(device: str):
    return next((v for k, v in PEAK_TFLOPS.items() if k in device), None)


def bench_row(run, provider, mode, shape, fn, limit_s=None, padded=False):
    label = f"{provider} {mode}" + (" (padded)" if padded else "")

    def body():
        stats = run.measure(bench.setup(provider, mode, shape, fn=fn))
        flops = forward_flops(shape) * (BWD_FLOP_FACTOR if mode == FB else 1.0)
        row = {"provider": provider, "mode": mode, "padded": padded, **stats,
               "tflops": flops / stats["ms"] / 1e9, "shape": asdict(shape)}
        run.rows.append(row)
        return row
    return run.stage(label, body, limit_s)


def check_close(run, name, shape, fn=None, key_padding_mask=None, **options):
    """Relative-norm error of eptk (or `fn`) against the reference (float32 math), same inputs."""
    def body():
        inputs = bench.make_inputs(shape, requires_grad=False, seed=1)
        with torch.no_grad(), fixed_configs():
            if fn is None:
                got = bench.prefix_attention(*inputs, key_padding_mask=key_padding_mask,
                                             backend="triton", **options)
            else:
                got = fn(*inputs)
            want = bench.prefix_attention_reference(*inputs, key_padding_mask=key_padding_mask,
                                                    **options)
        got, want = got.float(), want.float()
        err = ((got - want).norm() / want.norm()).item()
        run.checks[name] = err
        if not err < 2e-2:
            raise AssertionError(f"relative error {err:.2e} against the reference")
        return err
    return run.stage(f"check {name}", body)


def sdpa_decode(gqa: bool):
    """SDPA over an already concatenated cache (as a decode loop holds it); T = 1 sees every key."""
    import torch.nn.functional as F

    cache = {}

    def fn(q, k, v, pk, pv):
        key = (k.data_ptr(), gqa)
        if key not in cache:  # built once, outside the timed steps
            keys, values = bench._concat(pk, k), bench._concat(pv, v)
            if not gqa:
                group = q.shape[1] // k.shape[1]
                keys = keys.repeat_interleave(group, dim=1)
                values = values.repeat_interleave(group, dim=1)
            cache.clear()
            cache[key] = (keys.contiguous(), values.contiguous())
        keys, values = cache[key]
        return F.scaled_dot_product_attention(q, keys, values, enable_gqa=gqa)
    return fn


def _get(rows, provider, mode, padded=False, field="ms"):
    for r in rows:
        if (r["provider"], r["mode"], r["padded"]) == (provider, mode, padded):
            return r.get(field)
    return None


def ratios(rows):
    """speedup = baseline ms / eptk ms; memory = eptk peak / baseline peak (same mode, padding)."""
    out = {}
    for r in rows:
        eptk = [e for e in rows if e["provider"] == "eptk-triton" and e["mode"] == r["mode"]
                and e["padded"] == r["padded"]]
        if eptk and r["provider"] != "eptk-triton":
            name = f"{r['mode']}{' padded' if r['padded'] else ''}: eptk vs {r['provider']}"
            out[name] = {"speedup": r["ms"] / eptk[0]["ms"],
                         "memory_ratio": eptk[0]["peak_bytes"] / max(r["peak_bytes"], 1)}
    return out


def targets(rows):
    """Issue 15's kernel targets, each MET / MISSED / None (not measured)."""
    out = []

    def add(*args):
        out.append(target(*args))

    def speedup(base, mode=FB, padded=False):
        e, b = _get(rows, "eptk-triton", mode, padded), _get(rows, base, mode, padded)
        return b / e if e and b else None

    tf = _get(rows, "eptk-triton", "forward", field="tflops")
    add("forward TFLOP/s", tf, ">= 450", lambda v: v >= 450)
    add("fwd+bwd speedup vs flex", speedup("flex"), ">= 1.25", lambda v: v >= 1.25)
    add("fwd+bwd speedup vs flex (padded)", speedup("flex", padded=True), ">= 1.25",
           lambda v: v >= 1.25)
    sdpa = [x for x in (speedup("sdpa-causal"), speedup("sdpa-mask")) if x]
    add("fwd+bwd speedup vs best SDPA", min(sdpa) if sdpa else None, ">= 1.4",
           lambda v: v >= 1.4)
    d, s = _get(rows, "eptk-triton", "decode"), _get(rows, "sdpa-gqa", "decode")
    add("decode time vs SDPA GQA", d / s if d and s else None, "<= 1.0", lambda v: v <= 1.0)
    em, fm = _get(rows, "eptk-triton", FB, field="peak_bytes"), _get(rows, "flex", FB,
                                                                       field="peak_bytes")
    add("fwd+bwd peak memory vs flex", em / fm if em and fm else None, "<= 1.0",
           lambda v: v <= 1.0)
    return out


def markdown(report):
    peak = report["peak_tflops"]
    lines = [f"# Prefix attention on {report['device']}", "",
             f"torch {report['torch']}, triton {report['triton']}, {report['date']}; target "
             f"{report['target_shape']}; decode {report['decode_shape']}; dense bf16 peak "
             f"{peak or 'unknown'} TFLOP/s." + (" DRY RUN (CPU, interpreter): timings mean "
                                               "nothing." if report["dry_run"] else ""), "",
             "| provider | mode | median ms | p20 | p80 | TFLOP/s | % of peak | peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        pct = f"{100 * r['tflops'] / peak:.1f}" if peak else ""
        mode = r["mode"] + (" (padded)" if r["padded"] else "")
        lines.append(f"| {r['provider']} | {mode} | {r['ms']:.3f} | {r['ms_p20']:.3f} | "
                     f"{r['ms_p80']:.3f} | {r['tflops']:.1f} | {pct} | "
                     f"{r['peak_bytes'] / 2**20:.1f} |")
    lines += ["", "| ratio (speedup = baseline ms / eptk ms; memory = eptk / baseline) | speedup "
              "| memory |", "|---|---|---|"]
    for name, v in report["ratios"].items():
        lines.append(f"| {name} | {v['speedup']:.2f}x | {v['memory_ratio']:.2f} |")
    lines += ["", *targets_table(report["targets"]), ""]
    lines += [f"- check {name}: relative error {err:.2e}" for name, err in report["checks"].items()]
    lines += [f"- note {name}: {note}" for name, note in report["notes"].items()]
    lines += [f"- ERROR {err}" for err in report["errors"]]
    return "\n".join(lines) + "\n"


def main():
    parser = gpu_script_parser(__doc__, budget_s=200.0)
    parser.add_argument("--flex-limit-s", type=float, default=90.0,
                        help="limit for each FlexAttention stage (includes torch.compile)")
    args = parser.parse_args()
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
        target, decode = DRY_TARGET, DRY_DECODE
    else:
        assert GPU, "gpu_bench.py needs a CUDA device (or --dry-run)"
        os.environ.pop("TRITON_INTERPRET", None)
        target, decode = TARGET, DECODE
    import triton

    run = Run(args.budget_s, args.dry_run)
    compile_flex = not args.dry_run
    # FlexAttention has no CPU backward: a dry run measures its forward only (padded too).
    flex_modes = ("forward",) if args.dry_run else ("forward", FB)
    check_close(run, "target shape", target)
    check_close(run, "decode", decode)
    window = min(256, target.S // 4)  # a window well inside the sequence, also in a dry run
    check_close(run, f"target shape, window {window}, softcap 50", target, window=window,
                softcap=50.0)
    for mode in ("forward", FB):
        bench_row(run, "eptk-triton", mode, target, bench.eptk_triton)
    run.notes["autotuned"] = {
        name: str(getattr(getattr(bench_kernels(), name, None), "best_config", None))
        for name in ("_fwd_tuned", "_dkdv_tuned", "_dq_tuned")}
    for provider in ("sdpa-causal", "sdpa-mask"):
        for mode in ("forward", FB):
            bench_row(run, provider, mode, target, bench.provider_fn(provider, target))
    bench_row(run, "eptk-triton", "decode", decode, bench.eptk_triton)
    bench_row(run, "sdpa-gqa", "decode", decode, sdpa_decode(gqa=True))
    bench_row(run, "sdpa-repeat", "decode", decode, sdpa_decode(gqa=False))
    flex = run.stage("flex build", lambda: bench.make_flex(target, compile=compile_flex), 60)
    if flex is not None:
        check_close(run, "flex", target, flex)
        for mode in flex_modes:
            bench_row(run, "flex", mode, target, flex, limit_s=args.flex_limit_s)
    # The same with padding: eptk's key_padding_mask, FlexAttention's mask reading it.
    mask = bench.right_padding(target)
    check_close(run, "target shape, padded", target, key_padding_mask=mask)
    with fixed_configs():
        bench_row(run, "eptk-triton", flex_modes[-1], target, bench.eptk_padded(mask), padded=True)
    run.notes["padded eptk row"] = "fixed kernel configs (EPTK_AUTOTUNE=0), not autotuned"
    flex_pad = run.stage("flex build (padded)",
                         lambda: bench.make_flex(target, mask, compile=compile_flex), 60)
    if flex_pad is not None:
        check_close(run, "flex, padded", target, flex_pad, key_padding_mask=mask)
        bench_row(run, "flex", flex_modes[-1], target, flex_pad, limit_s=args.flex_limit_s,
                  padded=True)
    for mode in ("forward", FB):  # last: slow, and no target depends on it
        bench_row(run, "reference", mode, target, bench.reference, limit_s=30)

    device = device_name()
    report = {"device": device, "torch": torch.__version__, "triton": triton.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": args.dry_run,
              "peak_tflops": None if args.dry_run else peak_tflops(device),
              "target_shape": asdict(target), "decode_shape": asdict(decode),
              "forward_flops": forward_flops(target), "rows": run.rows, "ratios": ratios(run.rows),
              "targets": targets(run.rows), "checks": run.checks, "errors": run.errors,
              "notes": run.notes, "seconds": time.time() - run.start}
    write_report(args.out, report, markdown(report))
    return 0 if not run.errors else 1


def bench_kernels():
    from eptk.kernels import kernel_module
    return kernel_module("prefix_attention_triton")


if __name__ == "__main__":
    sys.exit(main())
