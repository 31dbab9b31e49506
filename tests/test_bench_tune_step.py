"""benchmarks/bench_tune_step.py on a shared CPU: the providers of a setting take their timed steps in turn,
so load that changes during a run falls on every row alike and the ratios between rows hold."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_tune_step as bench  # noqa: E402


def test_providers_take_their_steps_in_turn(monkeypatch):
    calls = []
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long)}
    monkeypatch.setattr(bench, "setup", lambda provider, setting, backend="auto": (lambda: calls.append(provider), batch))
    monkeypatch.setattr(bench, "peak_bytes", lambda step: 1)
    setting = bench.Setting("tiny-shaped", 2, 3, providers=("floor", "peft-prompt", "eptk-soft"))
    rows = bench.run_interleaved([setting], rounds=3)
    assert calls == ["floor", "peft-prompt", "eptk-soft"] * 4  # a warm-up step each, then 3 rounds in turn
    assert [r["provider"] for r in rows] == list(setting.providers)
    soft = rows[-1]
    assert soft["vs_floor"] > 0 and soft["speedup_vs_peft"] > 0 and soft["peft"] == "peft-prompt"
