"""End-to-end tune steps of the GPU check (benchmarks/gpu_check.sh runs it after the kernel benchmark).

One optimizer step in bf16 on random-weight models of SmolLM2-135M's and Llama-3.2-1B's exact shapes
(the SmolLM2 GGUF is not on the GPU machine, and a step's cost does not depend on the weights):
batch 16 x 256 tokens, P = 20, the floor (the frozen model's forward and backward with no prompt,
input-embedding gradient only, LM head at answer positions), PEFT PROMPT_TUNING and PREFIX_TUNING,
eptk soft, prefix and deep (last:3); then batch 8 x 2048 on the 1B shape, each eptk method with and
without --grad-checkpointing. Rows, settings and the floor come from bench_tune_step.py (the suite
`make bench` runs). Issue 15's targets: eptk prefix >= 1.5x PEFT PREFIX_TUNING, soft >= 2x PEFT
PROMPT_TUNING, every eptk method <= 1.15x the floor, --grad-checkpointing time <= 1.35x. Every row
is a guarded, time-limited stage; the results are written whatever happens. Writes OUT.json, OUT.md.

    python benchmarks/gpu_tune.py --out benchmarks/results/<device>-<date>-tune [--budget-s 140]
    python benchmarks/gpu_tune.py --dry-run --out /tmp/dry-tune   # CPU: tiny shapes, the kernels
        # through the Triton interpreter; the real shapes built on the meta device and counted
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_tune_step as tune  # noqa: E402
from common import (GPU, REAL_PARAMETERS, Stages, device_name, gpu_script_parser, random_model,  # noqa: E402
                    target, targets_table, write_report)

TARGETS = {"prefix": ("eptk-prefix", ">= 1.5", 1.5), "soft": ("eptk-soft", ">= 2", 2.0)}
FLOOR_GOAL, GC_GOAL = 1.15, 1.35


def targets(rows: list[dict], settings) -> list[dict]:
    """Issue 15's end-to-end targets per setting, each MET / MISSED / None (not measured)."""
    out = []

    def get(setting, provider, key):
        return next((r.get(key) for r in rows if r.get("setting") == setting.id and r["provider"] == provider), None)

    for setting in settings:
        where = f"{setting.model} B{setting.batch}x{setting.seq}"
        if "peft-prefix" in setting.providers:
            for method, (provider, goal, bound) in TARGETS.items():
                out.append(target(f"{where}: eptk {method} speed-up vs PEFT",
                                  get(setting, provider, "speedup_vs_peft"), goal, lambda v, bound=bound: v >= bound))
        for method in tune.METHODS:
            provider = f"eptk-{method}"
            out.append(target(f"{where}: eptk {method} time vs floor", get(setting, provider, "vs_floor"),
                              f"<= {FLOOR_GOAL}", lambda v: v <= FLOOR_GOAL))
            if f"{provider}+gc" in setting.providers:
                out.append(target(f"{where}: eptk {method} --grad-checkpointing time",
                                  get(setting, f"{provider}+gc", "gc_time_ratio"), f"<= {GC_GOAL}",
                                  lambda v: v <= GC_GOAL))
    return out


def real_shapes(stages: Stages) -> dict:
    """The GPU settings' models at their real shapes on the meta device (no memory): parameter counts
    against the real models', and every provider's trainable tensors built on them."""
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    from eptk.families import model_dims
    from eptk.methods import get_method
    from eptk.prompts import PromptedModel

    found = {}
    for name in dict.fromkeys(s.model for s in tune.GPU_SETTINGS):
        def check(name=name):
            model = random_model(name, torch.bfloat16, device="meta")
            count = sum(p.numel() for p in model.parameters())
            if count != REAL_PARAMETERS[name]:
                raise AssertionError(f"{count:,} parameters, the real model has {REAL_PARAMETERS[name]:,}")
            row = {"parameters": count, "weights_mib_bf16": count * 2 / 2**20, "trainable": {}}
            dims = model_dims(model)
            for method in tune.METHODS:
                cls = get_method(method)
                prompt = cls(20, dims, cls.check_options(tune.method_options(cls)))
                init = {k: torch.zeros(s.shape) for k, s in prompt.tensor_specs().items()}
                prompted = PromptedModel(random_model(name, torch.bfloat16, device="meta"), None, prompt, init,
                                         grad_checkpointing=True)
                row["trainable"][f"eptk-{method}"] = sum(p.numel() for p in prompted.parameters_by_name().values())
                prompted.remove_hooks()
            for provider, config in (("peft-prompt", PromptTuningConfig), ("peft-prefix", PrefixTuningConfig)):
                peft_model = get_peft_model(random_model(name, torch.bfloat16, device="meta"),
                                            config(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=20))
                row["trainable"][provider] = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
            found[name] = row
            return row
        stages.stage(f"real shape {name} (meta device)", check, 120)
    return found


def markdown(report: dict) -> str:
    lines = [f"# End-to-end tune steps on {report['device']}", "",
             f"{report['date']}; torch {report['torch']}, transformers {report['transformers']}, "
             f"peft {report['peft']}; {report['note']}" + (" DRY RUN (CPU, tiny shapes, kernels interpreted): "
                                                           "timings mean nothing." if report["dry_run"] else ""), "",
             tune.table(report["rows"]), "", *targets_table(report["targets"]), ""]
    for name, row in report["real_shapes"].items():
        trainable = ", ".join(f"{k} {v:,}" for k, v in row["trainable"].items())
        lines.append(f"- real shape {name} (meta device): {row['parameters']:,} parameters "
                     f"({row['weights_mib_bf16']:,.0f} MiB in bf16); trainable: {trainable}")
    lines += [f"- ERROR {err}" for err in report["errors"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = gpu_script_parser(__doc__, budget_s=140.0)
    parser.add_argument("--row-limit-s", type=float, default=90.0, help="limit for one row (model, compile, steps)")
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per row (after one warm-up step)")
    parser.add_argument("--autotune", action="store_true", help="autotune the kernels (default: fixed configs, "
                        "EPTK_AUTOTUNE=0: at T <= 2048 attention is a small share of a step, compilation is not)")
    args = parser.parse_args()
    if not args.autotune:
        os.environ["EPTK_AUTOTUNE"] = "0"
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
        # The short rows run the kernel through the interpreter (seconds per step); the long rows the
        # torch reference, which the interpreter would take minutes over.
        settings, backends = tune.DRY_SETTINGS, ("triton", "torch")
    else:
        assert GPU, "gpu_tune.py needs a CUDA device (or --dry-run)"
        os.environ.pop("TRITON_INTERPRET", None)
        settings, backends = tune.GPU_SETTINGS, ("auto",) * len(tune.GPU_SETTINGS)
    import peft
    import transformers

    stages = Stages(args.budget_s)
    shapes = real_shapes(stages) if args.dry_run else {}
    rows = []
    for setting, backend in zip(settings, backends):
        rows += tune.run_rows([setting], args.rounds, backend,
                              stage=lambda label, fn: stages.stage(label, fn, args.row_limit_s))
    report = {"device": device_name(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": args.dry_run,
              "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
              "note": "random weights of the real models' shapes; eptk kernels "
                      + ("autotuned" if args.autotune else "with fixed configs (EPTK_AUTOTUNE=0)")
                      + f"; median of {args.rounds} steps after a warm-up step",
              "settings": [s.id for s in settings], "rows": rows, "targets": targets(rows, settings),
              "real_shapes": shapes, "errors": stages.errors, "seconds": time.time() - stages.start}
    write_report(args.out, report, markdown(report))
    return 0 if not stages.errors else 1


if __name__ == "__main__":
    sys.exit(main())
