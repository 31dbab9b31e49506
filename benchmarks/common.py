"""What every benchmark suite shares: the device name, timing with a warm-up, peak memory."""
from __future__ import annotations

import platform
import re
import statistics
import time

import torch

GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")


def device_name() -> str:
    return torch.cuda.get_device_name() if GPU else f"cpu ({platform.processor() or platform.machine()})"


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


def measure(step, rounds: int = 5, memory: bool = True) -> dict:
    """Median / p20 / p80 / min milliseconds over `rounds` steps after a warm-up, and one step's peak memory."""
    step()                                   # warm up (Triton compilation, lazy inits)
    sync()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    out = {"ms": statistics.median(times), "ms_p20": pick(0.2), "ms_p80": pick(0.8), "ms_min": times[0]}
    if memory:
        out["peak_bytes"] = peak_bytes(step)
    return out
