"""Speed and peak memory of activation capture: eptk's hooks + capture_stats against HF's
`output_hidden_states=True` with PyTorch post-processing, and a plain forward as the floor.

Providers (one right-padded batch of B sequences of up to T tokens, statistics of `layers`):
  forward         the decoder layers up to the last requested one, no statistics (the floor)
  eptk            eptk.capture.Capturer.add (what `eptk capture` runs per batch): pre-hooks hand
                  each layer to eptk.kernels.capture_stats (Triton on CUDA), a float64
                  RunningGaussian merge and a 2048-row reservoir, and the forward stops after
                  the last requested layer
  hidden-states   model(..., output_hidden_states=True) (every layer + final norm + LM head), then
                  per layer x[mask] -> count, Σx, xᵀx, per-sequence means and the same
                  RunningGaussian update in PyTorch
Each row's extra_info carries tokens/s, peak memory of one step (CUDA: max_memory_allocated; CPU:
the torch profiler's allocation timeline — tracemalloc does not see torch's allocator), and the
ratios eptk_speedup (hidden-states time / eptk time) and overhead (eptk time / forward time).

`setup()` builds one step for (provider, setting) and `measure()` times it and takes its peak
memory; the pytest-benchmark rows and `python benchmarks/bench_capture.py [--out PATH]` (a table and
benchmarks/results/capture-<device>-<date>.json) share them; `--dry-run` runs every path at tiny
sizes on a CPU (the GPU check's dry run). On CPU: SmolLM2 at a small size (the tiny
model when SmolLM2 is not installed), so the suite runs in well under a minute.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import DEVICE, GPU, device_name, measure, peak_bytes, random_model, slug, sync as _sync  # noqa: E402


@dataclass(frozen=True)
class Setting:
    model: str
    B: int
    T: int
    layers: tuple
    dtype: str = "float32"

    @property
    def label(self) -> str:
        span = f"{self.layers[0]}..{self.layers[-1]}" if len(self.layers) > 3 else ",".join(map(str, self.layers))
        return f"{self.model} B={self.B} T={self.T} layers={span} {self.dtype}"


GPU_SETTINGS = [Setting("smollm2", 16, 512, tuple(range(31)), "bfloat16"),
                Setting("smollm2", 16, 512, (0, 8, 15), "bfloat16"),
                Setting("smollm2", 64, 128, (28, 29, 30), "bfloat16")]
CPU_SETTINGS = [Setting("smollm2", 2, 16, (0, 4, 8))]
DRY_SETTINGS = [Setting("tiny", 2, 16, (0, 2, 4))]  # `--dry-run` (the GPU check's, on a CPU)
PROVIDERS = ["forward", "eptk", "hidden-states"]   # forward first: the others' ratios need it

_models: dict[tuple, object] = {}




def smollm2_architecture(dtype: torch.dtype):
    """SmolLM2-135M's architecture with random weights (where the real weights are not installed:
    capture throughput does not depend on the weights)."""
    from eptk.models import LoadedModel, build_tiny_tokenizer

    return LoadedModel(model=random_model("smollm2-shaped", dtype), tokenizer=build_tiny_tokenizer(),
                       name="smollm2-architecture", source="random weights, SmolLM2-135M architecture")


def load(setting: Setting):
    """The model for a setting: SmolLM2 if installed, else its architecture with random weights."""
    from eptk.errors import EptkUsageError
    from eptk.models import load_model

    key = (setting.model, setting.dtype)
    if key not in _models:
        dtype = getattr(torch, setting.dtype)
        try:
            _models[key] = load_model(setting.model, device=DEVICE, dtype=dtype)
        except EptkUsageError:
            if setting.model != "smollm2":
                raise
            _models[key] = smollm2_architecture(dtype)
    return _models[key]


def make_batch(loaded, setting: Setting, seed: int = 0) -> dict:
    """Random non-special token ids, right-padded to lengths in [T/2, T]."""
    gen = torch.Generator().manual_seed(seed)
    vocab = loaded.model.config.vocab_size
    ids = torch.randint(8, vocab, (setting.B, setting.T), generator=gen)
    lengths = torch.randint(setting.T // 2, setting.T + 1, (setting.B,), generator=gen)
    mask = (torch.arange(setting.T).unsqueeze(0) < lengths.unsqueeze(1)).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, loaded.tokenizer.pad_token_id))
    return {"input_ids": ids.to(DEVICE), "attention_mask": mask.to(DEVICE)}


def layers_for(loaded, setting: Setting) -> list[int]:
    top = loaded.model.config.num_hidden_layers
    return sorted({min(l, top) for l in setting.layers})


def setup(provider: str, setting: Setting):
    """A zero-argument callable that captures (or just runs) one batch with `provider`."""
    from eptk.capture import Capturer, real_tokens, run_to_layers
    from eptk.stats import RunningGaussian

    loaded = load(setting)
    model = loaded.model
    batch = make_batch(loaded, setting)
    layers = layers_for(loaded, setting)
    ids, mask = batch["input_ids"], batch["attention_mask"]

    if provider == "forward":
        return lambda: run_to_layers(model, ids, mask, layers, lambda l, h: None)
    if provider == "eptk":
        capturer = Capturer(loaded, layers, samples=2048)       # steady state: one batch more per step
        return lambda: capturer.add(ids, mask) or capturer.stats
    if provider == "hidden-states":
        d = model.config.hidden_size
        gaussians = {l: RunningGaussian(d, DEVICE) for l in layers}

        def step():
            with torch.inference_mode():
                out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
                real = real_tokens(loaded.tokenizer, ids, mask)
                per_seq = real.sum(1, keepdim=True).clamp_min(1).float()
                pooled = {}
                for l in layers:
                    h = out.hidden_states[l].float()
                    x = h[real]
                    gaussians[l].update(x.shape[0], x.sum(0), x.T @ x)
                    pooled[l] = (h * real.unsqueeze(-1)).sum(1) / per_seq
            return gaussians, pooled
        return step
    raise ValueError(f"unknown provider {provider!r}")










def describe(provider: str, setting: Setting, timing: dict, medians: dict) -> dict:
    """One result row: the setting, the timing, tokens/s and the ratios to the rows measured before."""
    loaded = load(setting)
    info = {"device": device_name(), "provider": provider, "model_loaded": loaded.name, **asdict(setting),
            "layers": layers_for(loaded, setting), **timing}
    tokens = int(make_batch(loaded, setting)["attention_mask"].sum())
    info["tokens_per_s"] = tokens / (info["ms"] / 1e3)
    medians[(provider, setting)] = info["ms"]
    if provider != "forward" and ("forward", setting) in medians:
        info["overhead"] = info["ms"] / medians[("forward", setting)]      # vs the floor
    if provider == "hidden-states" and ("eptk", setting) in medians:
        info["eptk_speedup"] = info["ms"] / medians[("eptk", setting)]     # > 1: eptk is faster
    return info


# ---- pytest-benchmark ------------------------------------------------------------------------------

_medians: dict = {}


@pytest.mark.parametrize("setting", GPU_SETTINGS if GPU else CPU_SETTINGS, ids=lambda s: s.label)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_capture(benchmark, setting, provider):
    benchmark.group = f"capture {setting.label}"
    step = setup(provider, setting)

    def timed():
        step()
        _sync()
    benchmark.pedantic(timed, rounds=5 if GPU else 2, warmup_rounds=1)
    if benchmark.stats is None:              # --benchmark-disable: the step ran once, nothing to report
        return
    timing = {"ms": benchmark.stats.stats.median * 1e3, "ms_min": benchmark.stats.stats.min * 1e3,
              "peak_bytes": peak_bytes(step)}
    benchmark.extra_info.update(describe(provider, setting, timing, _medians))


KERNEL_SHAPES = [(16, 512, 576), (8, 2048, 2048), (64, 128, 576)] if GPU else [(2, 64, 96)]
KERNEL_PROVIDERS = ["triton", "torch"] if GPU else ["torch"]
DRY_KERNEL_SHAPES = [(2, 64, 96)]


def kernel_setup(provider: str, shape: tuple, dtype: torch.dtype = torch.bfloat16 if GPU else torch.float32):
    """One capture_stats call on a right-padded [B,T,d] batch (three quarters real tokens)."""
    from eptk.kernels import capture_stats

    B, T, d = shape
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    hidden = torch.randn(B, T, d, device=DEVICE, dtype=dtype, generator=gen)
    mask = torch.arange(T, device=DEVICE).unsqueeze(0) < (3 * T // 4)
    mask = mask.expand(B, T).contiguous()
    return lambda: capture_stats(hidden, mask, backend=provider)


@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=lambda s: "B={}-T={}-d={}".format(*s))
@pytest.mark.parametrize("provider", KERNEL_PROVIDERS)
def test_capture_stats_kernel(benchmark, shape, provider):
    benchmark.group = "capture_stats B={} T={} d={}".format(*shape)
    step = kernel_setup(provider, shape)

    def timed():
        step()
        _sync()
    benchmark.pedantic(timed, rounds=10 if GPU else 3, warmup_rounds=1)
    if benchmark.stats is None:
        return
    B, T, d = shape
    ms = benchmark.stats.stats.median * 1e3
    benchmark.extra_info.update({"device": device_name(), "provider": provider, "B": B, "T": T, "d": d, "ms": ms,
                                 "gram_tflops": 2 * B * T * d * d / 2 / ms / 1e9,   # upper triangle
                                 "read_gb_s": B * T * d * (2 if GPU else 4) / ms / 1e6,
                                 "peak_bytes": peak_bytes(step)})


def test_eptk_and_hidden_states_agree():
    """Both providers compute the same statistics (the benchmark compares equal work)."""
    setting = (GPU_SETTINGS if GPU else CPU_SETTINGS)[-1]
    stats = setup("eptk", setting)()
    gaussians, pooled = setup("hidden-states", setting)()
    top = load(setting).model.config.num_hidden_layers
    for l in stats.layers:
        if l == top:
            continue                         # HF's last hidden state is after the final norm
        mean, ref = stats.gaussians[l].mean, gaussians[l].mean
        assert stats.gaussians[l].count == gaussians[l].count
        assert torch.allclose(mean, ref, rtol=2e-2, atol=2e-2 * float(ref.abs().max())), l


def profile(setting: Setting, provider: str = "eptk", rows: int = 25) -> None:
    """Where one step's time goes (torch profiler table), for `--profile`."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step = setup(provider, setting)
    step()
    _sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if GPU else [])
    with torch_profile(activities=activities) as prof:
        step()
        _sync()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=rows))


def main() -> None:
    import argparse
    import datetime
    import os

    parser = argparse.ArgumentParser(description="capture benchmark: a table and a JSON of its rows")
    parser.add_argument("--out", help="output path without suffix (default: results/capture-<device>-<date>)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, the tiny model, the kernel interpreted")
    parser.add_argument("--profile", action="store_true", help="first the torch profiler's table of one step")
    args = parser.parse_args()
    settings, kernel_shapes, kernel_providers = GPU_SETTINGS if GPU else CPU_SETTINGS, KERNEL_SHAPES, KERNEL_PROVIDERS
    if args.dry_run:  # every provider's path at tiny sizes; the timings mean nothing
        os.environ["TRITON_INTERPRET"] = "1"
        settings, kernel_shapes, kernel_providers = DRY_SETTINGS, DRY_KERNEL_SHAPES, ["triton", "torch"]
    if args.profile:
        profile(settings[0])
    rounds = 1 if args.dry_run else 10 if GPU else 3
    medians, rows = {}, []
    for setting in settings:
        for provider in PROVIDERS:
            try:
                info = describe(provider, setting, measure(setup(provider, setting), rounds), medians)
            except torch.cuda.OutOfMemoryError:
                info = {"provider": provider, **asdict(setting), "error": "out of memory"}
                torch.cuda.empty_cache()
            rows.append(info)
            nan = float("nan")
            print(f"{setting.label:48s} {provider:14s} {info.get('ms', nan):9.2f} ms "
                  f"{info.get('tokens_per_s', 0):12.0f} tok/s  peak {info.get('peak_bytes', 0) / 2**20:9.1f} MiB"
                  f"  overhead {info.get('overhead', 1):5.2f}  eptk_speedup {info.get('eptk_speedup', nan):5.2f}",
                  flush=True)
    for shape in kernel_shapes:
        base = None
        for provider in kernel_providers:
            info = {"bench": "capture_stats", "device": device_name(), "provider": provider,
                    "shape": list(shape), **measure(kernel_setup(provider, shape), 1 if args.dry_run else 20 if GPU else 3)}
            base = base or info["ms"]
            rows.append(info)
            print(f"capture_stats B,T,d={shape!s:18s} {provider:8s} {info['ms']:8.3f} ms  "
                  f"peak {info['peak_bytes'] / 2**20:8.1f} MiB  vs first {info['ms'] / base:5.2f}", flush=True)
    default = Path(__file__).resolve().parent / "results" / f"capture-{slug(device_name())}-{datetime.date.today()}"
    path = Path(args.out or default).with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2, default=str) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
