"""What every benchmark suite shares: the device name, timing with a warm-up, peak memory, guarded
time-limited stages for the GPU scripts, and random models of real models' shapes."""
from __future__ import annotations

import argparse
import gc
import platform
import re
import signal
import statistics
import time
import traceback

import torch

GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")


def device_name() -> str:
    return torch.cuda.get_device_name() if GPU else f"cpu ({platform.processor() or platform.machine()})"


def machine() -> dict:
    """What the numbers were measured on: the device, the CPU, its cores, torch's threads and the load
    average at this call (a shared machine's ratios are only as steady as its load)."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out = {"device": device_name(), "cpu": cpu, "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()]}
    if GPU:
        out["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return out


def gpu_script_parser(doc: str, budget_s: float) -> argparse.ArgumentParser:
    """The arguments every GPU script of the check takes: --out, --budget-s and --dry-run."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", required=True, help="output path without suffix (.json, .md)")
    parser.add_argument("--budget-s", type=float, default=budget_s,
                        help="wall-clock budget for all stages; later stages skip when spent")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny shapes, kernels through the Triton interpreter")
    return parser


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def sync() -> None:
    if GPU:
        torch.cuda.synchronize()


def cpu_peak_bytes(step) -> int:
    """Peak bytes of torch CPU tensors allocated during one step (the profiler's allocation timeline)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    running = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        running += event.self_cpu_memory_usage
        peak = max(peak, running)
    return int(peak)


def peak_bytes(step) -> int:
    """Peak memory one step allocates beyond what was live before it."""
    if not GPU:
        return cpu_peak_bytes(step)
    sync()
    torch.cuda.reset_peak_memory_stats()
    live = torch.cuda.memory_allocated()
    step()
    sync()
    return int(torch.cuda.max_memory_allocated() - live)


def summary(times: list[float]) -> dict:
    """Median / p20 / p80 / min of step times in milliseconds."""
    times = sorted(times)
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    return {"ms": statistics.median(times), "ms_p20": pick(0.2), "ms_p80": pick(0.8), "ms_min": times[0]}


def step_times(step, count: int) -> list[float]:
    """Wall milliseconds of each of `count` steps in turn, the device synchronized around each."""
    times = []
    for _ in range(count):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def measure(step, rounds: int = 5, memory: bool = True) -> dict:
    """Median / p20 / p80 / min milliseconds over `rounds` steps after a warm-up, and one step's peak memory."""
    step()                                   # warm up (Triton compilation, lazy inits)
    out = summary(step_times(step, rounds))
    if memory:
        out["peak_bytes"] = peak_bytes(step)
    return out


# Random-weight Llama models of real models' exact shapes: a step's cost does not depend on the weights,
# and the GPU image has neither the SmolLM2 GGUF (98 MB, over the 64 MiB upload cap) nor gguf.
MODEL_SHAPES = {
    "smollm2-shaped": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                           num_key_value_heads=3, head_dim=64, vocab_size=49152, rope_theta=100000.0),
    "llama-1b-shaped": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                            num_key_value_heads=8, head_dim=64, vocab_size=128256, rope_theta=500000.0),
    # CPU: long sequences (--grad-checkpointing) at a size two cores can step in about a second
    "llama-small-shaped": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                               num_key_value_heads=2, head_dim=32, vocab_size=4096, rope_theta=10000.0),
    # dry runs of the GPU script
    "tiny-shaped": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=16, vocab_size=512, rope_theta=10000.0),
}
# The real models' parameter counts (tied embeddings), which the shapes above must reproduce.
REAL_PARAMETERS = {"smollm2-shaped": 134_515_008, "llama-1b-shaped": 1_235_814_400}


def random_model(shape: str, dtype: torch.dtype, device=DEVICE, seed: int = 0):
    """A frozen random Llama of MODEL_SHAPES[shape], built directly on `device` ("meta": no memory)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**MODEL_SHAPES[shape], max_position_embeddings=8192, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


# ---- the GPU scripts' reports ---------------------------------------------------------------------

def target(name: str, value, goal: str, ok) -> dict:
    """One of issue 15's targets: `met` True / False, None when it was not measured."""
    return {"target": name, "value": value, "goal": goal, "met": None if value is None else bool(ok(value))}


def targets_table(targets: list[dict]) -> list[str]:
    lines = ["| target | value | goal | verdict |", "|---|---|---|---|"]
    for t in targets:
        value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        lines.append(f"| {t['target']} | {value} | {t['goal']} | "
                     f"{ {True: 'MET', False: 'MISSED', None: 'NOT MEASURED'}[t['met']]} |")
    return lines


def write_report(out, report: dict, text: str) -> None:
    """OUT.json (the report and the machine it ran on) and OUT.md (`text`), whatever the stages did."""
    import json
    from pathlib import Path

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({**report, "machine": machine()}, indent=2))
    out.with_suffix(".md").write_text(text)
    print(f"wrote {out.with_suffix('.json')} and .md")
    print(text)


class StageTimeout(Exception):
    pass


def _raise_timeout(signum, frame):
    raise StageTimeout("over its time limit")


class Stages:
    """Runs each stage guarded and within the time left of one budget; collects the errors."""

    def __init__(self, budget_s: float):
        self.start = time.time()
        self.budget_s = budget_s
        self.errors: list[str] = []

    def left(self) -> float:
        return self.budget_s - (time.time() - self.start)

    def stage(self, name, fn, limit_s=None):
        limit = min(limit_s or self.left(), self.left())
        if limit < 5:
            self.errors.append(f"{name}: skipped, time budget spent")
            print(f"[skip] {name}: time budget spent", flush=True)
            return None
        t0 = time.time()
        signal.signal(signal.SIGALRM, _raise_timeout)
        signal.alarm(max(1, int(limit)))
        try:
            result = fn()
            print(f"[ok]   {name} ({time.time() - t0:.1f} s, {time.time() - self.start:.0f} s in)", flush=True)
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
            gc.collect()  # the stage's models and activations, before the next stage measures memory
            if GPU:
                torch.cuda.empty_cache()
