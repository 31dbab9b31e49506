"""benchmarks/gpu_check.sh keeps its results apart from `make bench`'s and keeps its own log.

A GPU window is short and rare: a result file that another command of the same day overwrites, or a
log cut short, is a lost run. The script runs here as a dry run with no steps (seconds, no model).
"""
import datetime
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench_base() -> str:
    """`make bench`'s result name without suffix (the Makefile's formula): <device>-<date>."""
    code = "import sys; sys.path.insert(0, 'benchmarks'); from common import device_name, slug; print(slug(device_name()))"
    device = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return f"{device.stdout.strip()}-{datetime.date.today()}"


def test_results_never_collide_with_make_bench(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_STEPS": "none", "OUT": str(tmp_path)}
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    listed = re.search(r"^results: (.*)$", run.stdout, re.M)
    assert listed, run.stdout
    names = [Path(p).name for p in listed.group(1).split()]
    base = bench_base()
    taken = {f"{base}.json", f"{base}.md"}                          # what `make bench` writes today
    assert not taken & set(names), sorted(taken & set(names))
    assert all(n.startswith(f"{base}-gpu-") for n in names), names  # the device and date in every name
    kinds = {n.removeprefix(f"{base}-gpu-") for n in names}
    assert kinds == {"check.log", "tests.log", "kernel.json", "kernel.md", "tune.json", "tune.md", "capture.json",
                     "profile.json"}
    assert len(names) <= 8  # what a device run returns at most
    # The check's own log is complete (closed before it is copied) and reached $OUT.
    log = tmp_path / f"{base}-gpu-check.log"
    assert log.is_file(), sorted(p.name for p in tmp_path.iterdir())
    assert "=== steps" in log.read_text() and "results: " in log.read_text()
