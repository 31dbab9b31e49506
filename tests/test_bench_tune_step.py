"""benchmarks/bench_tune_step.py on a shared CPU: the providers of a setting take their timed steps in turn,
so load that changes during a run falls on every row alike and the ratios between rows hold."""
import json
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
    assert soft["paired_vs_floor"] > 0 and "paired_cpu_vs_floor" in soft and "paired_vs_floor" not in rows[0]


def test_the_floor_guard_fails_past_the_margin_only():
    recorded = {"s": {"eptk-soft": 1.10, "eptk-deep": 1.05}}
    rows = [{"provider": "eptk-soft", "setting": "s", "cpu_vs_floor": 1.10 * 1.19, "vs_floor": 9.0},  # within 20 %
            {"provider": "eptk-deep", "setting": "s", "cpu_vs_floor": 1.05 * 1.21, "vs_floor": 1.0},  # past it
            {"provider": "eptk-prefix", "setting": "s", "cpu_vs_floor": 9.0},                         # not guarded
            {"provider": "eptk-soft", "setting": "other", "cpu_vs_floor": 9.0}]                      # none recorded
    problems = bench.over_the_record(rows, recorded)
    assert len(problems) == 1 and problems[0].startswith("eptk-deep at s: 1.270x the floor's CPU time, recorded 1.050x")


def test_a_make_bench_result_becomes_the_recorded_ratios(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RECORDED", tmp_path / "floor_ratios.json")
    monkeypatch.setattr(bench, "device_name", lambda: "cpu (x86_64)")
    rows = [{"provider": "floor", "setting": "s"},
            {"provider": "eptk-soft", "setting": "s", "vs_floor": 1.5, "cpu_vs_floor": 1.23456}]
    result = tmp_path / "cpu-x86-64-2026-12-02.json"
    result.write_text(json.dumps({"datetime": "2026-12-02T10:00:00", "benchmarks": [
        {"name": "test_tune_step[s-floor]", "extra_info": {"ms": 1.0}},
        {"name": "test_methods_against_the_floor[s]", "extra_info": {"setting": "s", "device": "cpu (x86_64)", "rows": rows}}]}))
    bench.record(result)
    saved = json.loads((tmp_path / "floor_ratios.json").read_text())
    assert saved["devices"] == {"cpu-x86-64": {"s": {"eptk-soft": 1.2346}}}
    assert saved["sources"]["cpu-x86-64"] == "make bench, 2026-12-02: benchmarks/results/cpu-x86-64-2026-12-02.json"
    assert bench.recorded_ratios() == {"s": {"eptk-soft": 1.2346}}


def test_ratios_paired_by_round_follow_the_machine_between_rounds():
    """The machine slows four-fold after two rounds; each round's soft step is 1.1x that round's floor step. The
    paired ratio says 1.1; a ratio of the two medians would say 4.4."""
    times = {"floor": {"wall": [100, 100, 400, 400, 400], "cpu": [50, 50, 50, 200, 200]},
             "eptk-soft": {"wall": [110, 110, 440, 440, 440], "cpu": [55, 55, 55, 220, 220]},
             "eptk-deep": {"wall": [90, 130, 400, 440, 480], "cpu": [60, 40, 50, 200, 200]}}
    paired = bench.paired_ratios(times)
    assert set(paired) == {"eptk-soft", "eptk-deep"}
    assert abs(paired["eptk-soft"]["wall"] - 1.1) < 1e-12
    assert abs(paired["eptk-soft"]["cpu"] - 1.1) < 1e-12
    assert abs(paired["eptk-deep"]["wall"] - 1.1) < 1e-12  # ratios 0.9, 1.3, 1.0, 1.1, 1.2: the median
    assert abs(paired["eptk-deep"]["cpu"] - 1.0) < 1e-12   # 1.2, 0.8, 1.0, 1.0, 1.0
    assert bench.paired_ratios({"eptk-soft": times["eptk-soft"]}) == {}  # no floor, no ratio
    zero = bench.paired_ratios({"floor": {"wall": [0, 2], "cpu": [0, 0]}, "s": {"wall": [1, 3], "cpu": [1, 1]}})
    assert zero["s"]["wall"] == 1.5 and zero["s"]["cpu"] != zero["s"]["cpu"]  # a zero floor step is left out; none: NaN
