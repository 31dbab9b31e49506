"""Where a tune step's time goes on a GPU: host-bound (launches, Python hooks, syncs) or kernel-bound.

The GPU check's end-to-end rows say how long a step takes; this says why. For each provider of a
setting (the rows of bench_tune_step.py, built by its `setup`): the wall time of each of the first
steps (a late compile shows there), then one torch.profiler trace of a few steps, read as: the GPU's
kernel time per step against the wall time (a step whose kernels fill a small share of its wall time
waits on the host), kernel launches per step, host-device syncs per step, and the ops that take the
most host time and the kernels that take the most GPU time. Writes OUT.json and OUT.md.

    python benchmarks/gpu_profile_step.py --out benchmarks/results/<device>-<date>-gpu-profile
    python benchmarks/gpu_profile_step.py --dry-run --out /tmp/dry-profile   # CPU, tiny shapes
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_tune_step as tune  # noqa: E402
from common import GPU, Stages, device_name, gpu_script_parser, step_times, summary, sync, write_report  # noqa: E402

PROVIDERS = ("floor", "peft-prompt", "eptk-soft", "eptk-prefix", "eptk-deep")
# Host-device syncs; a scalar read (`.item()`) syncs only on a device tensor (AdamW reads its CPU step
# counts, one per parameter tensor), so it is counted apart.
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
SCALAR_READ = "aten::_local_scalar_dense"
TOP = 8


def _device_us(event) -> float:
    """An event's own time on the device (the attribute's name changed across torch releases)."""
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, name):
            return float(getattr(event, name))
    return 0.0


def profile(step, steps: int) -> dict:
    """One trace of `steps` steps: per-step kernel time, launches, syncs, and the top host ops and kernels."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as trace

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if GPU else [])
    sync()
    with trace(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync()
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    host = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    launches = sum(e.count for e in host if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx",
                                                      "cudaLaunchKernelExC"))
    return {
        "kernel_ms_per_step": sum(_device_us(e) for e in kernels) / 1e3 / steps,
        "kernels_per_step": sum(e.count for e in kernels) / steps,
        "launch_calls_per_step": launches / steps,
        "syncs_per_step": {k: sum(e.count for e in host if e.key == k) / steps for k in SYNCS + (SCALAR_READ,)},
        "top_host_ops": [{"op": e.key, "self_host_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                          "calls_per_step": e.count / steps}
                         for e in sorted(host, key=lambda e: -e.self_cpu_time_total)[:TOP]],
        "top_kernels": [{"kernel": e.key[:90], "ms_per_step": _device_us(e) / 1e3 / steps,
                         "calls_per_step": e.count / steps}
                        for e in sorted(kernels, key=lambda e: -_device_us(e))[:TOP]],
    }


def measure_provider(provider: str, setting, warm: int, steps: int) -> dict:
    step, _ = tune.setup(provider, setting)
    first = step_times(step, warm)   # one by one: a late compilation shows in the first steps
    row = {"setting": setting.id, "provider": provider, "first_steps_ms": first,
           "wall_ms_per_step": summary(step_times(step, steps))["ms"], **profile(step, steps)}
    row["kernel_share_of_wall"] = row["kernel_ms_per_step"] / row["wall_ms_per_step"] if GPU else None
    return row


def markdown(report: dict) -> str:
    lines = [f"# Where a tune step's time goes on {report['device']}", "",
             f"{report['date']}; torch {report['torch']}; {report['note']}"
             + (" DRY RUN (CPU, tiny shapes): timings mean nothing." if report["dry_run"] else ""), "",
             "| setting | provider | wall ms/step | GPU kernel ms/step | kernel share of wall | kernels/step "
             "| device syncs/step | scalar reads/step | first steps ms |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        share = "" if r["kernel_share_of_wall"] is None else f"{r['kernel_share_of_wall']:.0%}"
        first = ", ".join(f"{t:.0f}" for t in r["first_steps_ms"])
        lines.append(f"| {r['setting']} | {r['provider']} | {r['wall_ms_per_step']:.1f} | "
                     f"{r['kernel_ms_per_step']:.1f} | {share} | {r['kernels_per_step']:.0f} | "
                     f"{sum(r['syncs_per_step'].get(k, 0) for k in SYNCS):.1f} | "
                     f"{r['syncs_per_step'].get(SCALAR_READ, 0):.0f} | {first} |")
    for r in report["rows"]:
        lines += ["", f"## {r['setting']} {r['provider']}", "", "| host op | self host ms/step | calls/step |",
                  "|---|---|---|"]
        lines += [f"| `{o['op']}` | {o['self_host_ms_per_step']:.2f} | {o['calls_per_step']:.0f} |"
                  for o in r["top_host_ops"]]
        if r["top_kernels"]:
            lines += ["", "| kernel | ms/step | calls/step |", "|---|---|---|"]
            lines += [f"| `{k['kernel']}` | {k['ms_per_step']:.2f} | {k['calls_per_step']:.0f} |"
                      for k in r["top_kernels"]]
    lines += [f"- ERROR {err}" for err in report["errors"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = gpu_script_parser(__doc__, budget_s=150.0)
    parser.add_argument("--warm", type=int, default=4, help="steps timed one by one before the trace")
    parser.add_argument("--steps", type=int, default=5, help="steps timed, then traced")
    parser.add_argument("--render", action="store_true", help="only write OUT.md again from OUT.json")
    args = parser.parse_args()
    if args.render:
        Path(f"{args.out}.md").write_text(markdown(json.loads(Path(f"{args.out}.json").read_text())))
        return 0
    os.environ["EPTK_AUTOTUNE"] = "0"  # as gpu_tune.py: fixed kernel configs
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
        settings = tune.DRY_SETTINGS[:1]
    else:
        assert GPU, "gpu_profile_step.py needs a CUDA device (or --dry-run)"
        settings = tune.GPU_SETTINGS[:2]  # the B16x256 settings, where the GPU check found the gaps
    stages = Stages(args.budget_s)
    rows = []
    for setting in settings:
        for provider in PROVIDERS:
            row = stages.stage(f"{setting.id} {provider}",
                               lambda p=provider, s=setting: measure_provider(p, s, args.warm, args.steps), 60)
            if row:
                rows.append(row)
    report = {"device": device_name(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": args.dry_run,
              "torch": torch.__version__, "note": f"random weights of the real models' shapes, bf16 autocast, "
              f"EPTK_AUTOTUNE=0; median of {args.steps} steps after {args.warm} timed one by one; "
              f"the trace covers {args.steps} more steps", "rows": rows, "errors": stages.errors}
    write_report(args.out, report, markdown(report))
    return 0 if not stages.errors else 1


if __name__ == "__main__":
    sys.exit(main())
