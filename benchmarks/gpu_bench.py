"""Standalone GPU benchmark of prefix attention at the target shape (run by gpu_check.sh).

bf16, B=8, Hq=32, Hkv=8, T=S=2048, P=32, D=128: forward and forward+backward for eptk-triton,
the reference path, SDPA (causal lower right on the concatenation) and compiled FlexAttention;
decoding (T=1, S=4096, B=8) for eptk against SDPA on the concatenated cache. Every stage is
guarded: a failure is printed and recorded, and the next stage runs. Writes
benchmarks/results/<device>.json (and copies it to $OUT when set), then prints the table.

    python benchmarks/gpu_bench.py [--budget-s 270] [--flex-limit-s 120]
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prefix_attention import (DECODE, TARGET, _concat, eptk_triton,  # noqa: E402
                                    forward_flops, make_inputs, measure, provider_fn, reference,
                                    setup)
from common import device_name, slug  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BWD_FLOP_FACTOR = 3.5  # forward: 2 matmuls; backward: 5 (QK^T again, dV, dP, dK, dQ)


class StageTimeout(Exception):
    pass


def _alarm(seconds):
    def raise_timeout(signum, frame):
        raise StageTimeout(f"over its {seconds} s limit")
    signal.signal(signal.SIGALRM, raise_timeout)
    signal.alarm(max(1, int(seconds)))


class Run:
    """Collects rows and errors; each stage runs guarded and within the time left."""

    def __init__(self, budget_s):
        self.start = time.time()
        self.budget_s = budget_s
        self.rows, self.errors, self.checks, self.notes = [], [], {}, {}

    def left(self):
        return self.budget_s - (time.time() - self.start)

    def stage(self, name, fn, limit_s=None):
        limit = min(limit_s or self.left(), self.left())
        if self.left() < 5:
            self.errors.append(f"{name}: skipped, time budget spent")
            print(f"[skip] {name}: time budget spent", flush=True)
            return None
        t0 = time.time()
        try:
            _alarm(limit)
            result = fn()
            print(f"[ok]   {name} ({time.time() - t0:.1f} s)", flush=True)
            return result
        except Exception as exc:  # keep going: one failure must not lose the other numbers
            msg = f"{name}: {type(exc).__name__}: {str(exc)[:500]}"
            self.errors.append(msg)
            print(f"[fail] {msg}", flush=True)
            if not isinstance(exc, (StageTimeout, torch.cuda.OutOfMemoryError)):
                traceback.print_exc()
            return None
        finally:
            signal.alarm(0)
            torch.cuda.empty_cache()


def bench_row(run, provider, mode, shape, fn=None, label=None, limit_s=None):
    def body():
        stats = measure(setup(provider, mode, shape, fn=fn))
        row = {"provider": label or provider, "mode": mode, **stats, "shape": asdict(shape)}
        if mode in ("forward", "decode"):
            row["tflops"] = forward_flops(shape) / stats["ms"] / 1e9
        elif mode == "forward+backward":
            row["tflops"] = BWD_FLOP_FACTOR * forward_flops(shape) / stats["ms"] / 1e9
        run.rows.append(row)
        return row
    return run.stage(f"{label or provider} {mode}", body, limit_s)


def check_close(run, name, shape):
    """Relative-norm error of eptk against the reference (float32 math) on the same inputs."""
    def body():
        inputs = make_inputs(shape, requires_grad=False, seed=1)
        got = eptk_triton(*inputs).float()
        want = reference(*inputs).float()
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
            keys, values = _concat(pk, k), _concat(pv, v)
            if not gqa:
                group = q.shape[1] // k.shape[1]
                keys = keys.repeat_interleave(group, dim=1)
                values = values.repeat_interleave(group, dim=1)
            cache.clear()
            cache[key] = (keys.contiguous(), values.contiguous())
        keys, values = cache[key]
        return F.scaled_dot_product_attention(q, keys, values, enable_gqa=gqa)
    return fn


def ratios(rows):
    by = {(r["provider"], r["mode"]): r for r in rows}
    out = {}
    for (provider, mode), row in by.items():
        eptk = by.get(("eptk-triton", mode))
        if eptk and provider != "eptk-triton":
            out[f"{mode}: eptk vs {provider}"] = {
                "speedup": row["ms"] / eptk["ms"],
                "memory_ratio": eptk["peak_bytes"] / max(row["peak_bytes"], 1)}
    return out


def targets(rows):
    by = {(r["provider"], r["mode"]): r for r in rows}

    def get(p, m, field="ms"):
        return by.get((p, m), {}).get(field)

    fb = "forward+backward"
    out = []

    def target(name, value, goal, ok):
        out.append({"target": name, "value": value, "goal": goal,
                    "met": None if value is None else bool(ok)})

    e, r, f = get("eptk-triton", fb), get("reference", fb), get("flex", fb)
    target("fwd+bwd speedup vs reference", r / e if e and r else None, ">= 2.0",
           e and r and r / e >= 2.0)
    target("fwd+bwd speedup vs flex", f / e if e and f else None, ">= 1.2",
           e and f and f / e >= 1.2)
    tf = get("eptk-triton", "forward", "tflops")
    target("forward TFLOP/s", tf, ">= 300", tf and tf >= 300)
    em, rm = get("eptk-triton", fb, "peak_bytes"), get("reference", fb, "peak_bytes")
    target("fwd+bwd peak memory vs reference", em / rm if em and rm else None, "< 1.0",
           em and rm and em < rm)
    d = get("eptk-triton", "decode")
    sdpa = [x for x in (get("sdpa-gqa", "decode"), get("sdpa-repeat", "decode")) if x]
    s = min(sdpa) if sdpa else None
    target("decode time vs best SDPA", d / s if d and s else None, "<= 1.0", d and s and d <= s)
    return out


def table(report):
    lines = [f"prefix attention on {report['device']} (torch {report['torch']}, triton "
             f"{report['triton']}); target {report['target_shape']}",
             f"{'provider':<14}{'mode':<18}{'median ms':>10}{'p20':>9}{'p80':>9}{'TFLOP/s':>9}"
             f"{'peak MiB':>10}"]
    for r in report["rows"]:
        tf = f"{r['tflops']:9.1f}" if r.get("tflops") else f"{'':>9}"
        lines.append(f"{r['provider']:<14}{r['mode']:<18}{r['ms']:10.3f}{r['ms_p20']:9.3f}"
                     f"{r['ms_p80']:9.3f}{tf}{r['peak_bytes'] / 2**20:10.1f}")
    lines.append("ratios (speedup = baseline ms / eptk ms; memory = eptk peak / baseline peak):")
    for name, v in report["ratios"].items():
        lines.append(f"  {name:<40} speedup {v['speedup']:6.2f}x   memory {v['memory_ratio']:5.2f}")
    lines.append("targets:")
    for t in report["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        verdict = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[t["met"]]
        lines.append(f"  {t['target']:<36} {value:>8}  (goal {t['goal']})  {verdict}")
    for name, err in report["checks"].items():
        lines.append(f"  check {name}: relative error {err:.2e}")
    for err in report["errors"]:
        lines.append(f"  ERROR {err}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=270.0,
                        help="wall-clock budget for all stages; later stages skip when spent")
    parser.add_argument("--flex-limit-s", type=float, default=120.0,
                        help="limit for each FlexAttention stage (includes torch.compile)")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "gpu_bench.py needs a CUDA device"
    os.environ.pop("TRITON_INTERPRET", None)
    import triton

    run = Run(args.budget_s)
    check_close(run, "target shape", TARGET)
    check_close(run, "decode", DECODE)
    for mode in ("forward", "forward+backward"):
        bench_row(run, "eptk-triton", mode, TARGET)
    try:
        module = importlib.import_module("eptk.kernels.prefix_attention_triton")
        run.notes["autotuned"] = {name: str(getattr(getattr(module, name), "best_config", None))
                                  for name in ("_fwd_tuned", "_dkdv_tuned", "_dq_tuned")}
    except Exception as exc:
        run.notes["autotuned"] = f"unavailable: {exc}"
    for provider in ("reference", "sdpa-causal", "sdpa-mask"):
        for mode in ("forward", "forward+backward"):
            bench_row(run, provider, mode, TARGET)
    bench_row(run, "eptk-triton", "decode", DECODE)
    bench_row(run, "sdpa-gqa", "decode", DECODE, fn=sdpa_decode(gqa=True), label="sdpa-gqa")
    bench_row(run, "sdpa-repeat", "decode", DECODE, fn=sdpa_decode(gqa=False), label="sdpa-repeat")
    flex = run.stage("flex build", lambda: provider_fn("flex", TARGET), 60)
    if flex is not None:
        for mode in ("forward", "forward+backward"):
            bench_row(run, "flex", mode, TARGET, fn=flex, limit_s=args.flex_limit_s)

    report = {"device": device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "target_shape": asdict(TARGET), "decode_shape": asdict(DECODE),
              "forward_flops": forward_flops(TARGET), "rows": run.rows, "ratios": ratios(run.rows),
              "targets": targets(run.rows), "checks": run.checks, "errors": run.errors,
              "notes": run.notes, "seconds": time.time() - run.start}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{slug(report['device'])}.json"
    path.write_text(json.dumps(report, indent=2))
    text = table(report)
    path.with_suffix(".txt").write_text(text + "\n")
    if os.environ.get("OUT"):
        for p in (path, path.with_suffix(".txt")):
            shutil.copy(p, os.environ["OUT"])
    print(f"wrote {path}")
    print(text)
    return 0 if not run.errors else 1


if __name__ == "__main__":
    sys.exit(main())
