"""`eptk sweep SWEEP.toml`: a grid of tuning runs in one directory. grid.py reads the file and expands and
names the runs; scheduler.py runs them as subprocesses and writes <out>/sweep.json."""
from .grid import (GRID_KEYS, Sweep, SweepRun, check_runs, expand, load_sweep, parse_shard, plan, run_state,
                   select_shard, settings_conflict)
from .scheduler import check_sweep_out, gpu_ids, run_sweep, summary_name, tune_command

__all__ = ["GRID_KEYS", "Sweep", "SweepRun", "check_runs", "check_sweep_out", "expand", "gpu_ids", "load_sweep",
           "parse_shard", "plan", "run_state", "run_sweep", "select_shard", "settings_conflict", "summary_name",
           "tune_command"]
