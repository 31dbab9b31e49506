"""Markdown summary of a pytest-benchmark JSON file: every row's timing and its eptk/baseline ratios, then the
table of each benchmark that measured several rows (the floor guard's).

    python benchmarks/summarize.py benchmarks/results/<device>-<date>.json   # writes the .md beside it
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

RATIO_KEYS = ("speedup", "vs_", "overhead", "ratio")  # vs_floor, memory_vs_peft, ...


def summarize(path: Path) -> str:
    data = json.loads(path.read_text())
    machine = data.get("machine_info", {})
    lines = [f"# Benchmarks: {path.stem}", "",
             f"Python {machine.get('python_version', '?')} on {machine.get('cpu', {}).get('brand_raw', '?')}; "
             f"command: `pytest benchmarks "
             f"--benchmark-json={path}`", "",
             "| benchmark | device | median ms | ratios |", "|---|---|---|---|"]
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        median = info.get("ms", bench.get("stats", {}).get("median", float("nan")) * 1e3)
        ratios = ", ".join(f"{k} {v:.2f}" for k, v in sorted(info.items())
                           if any(r in k for r in RATIO_KEYS) and isinstance(v, (int, float)))
        lines.append(f"| {bench['name']} | {info.get('device', '?')} | {median:.3f} | {ratios} |")
    for bench in data.get("benchmarks", []):  # a benchmark of several rows carries its own table
        if "table" in bench.get("extra_info", {}):
            lines += ["", f"## {bench['name']}", "", bench["extra_info"]["table"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    source = Path(sys.argv[1])
    target = source.with_suffix(".md")
    target.write_text(summarize(source))
    print(f"wrote {target}")
