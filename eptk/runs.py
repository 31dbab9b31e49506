"""The run directory: config.json, prior/posterior safetensors (the prompt; parameters.safetensors beside them for
a method whose parameters are not the prompt), metrics.jsonl, eval.json, checkpoint/.

This module alone knows the layout: everything else reads and writes a run through `RunDir`. Every
file is written atomically (temporary file + rename), a lock keeps a second `tune` out, and the newest
complete checkpoint is always loadable. metrics.jsonl is appended to, fsynced before each checkpoint;
a torn last line (a crash mid-write) is ignored by every reader and dropped by `--resume`.
"""
from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import torch

from .errors import EptkUsageError
from .io import append_jsonl, check_folder_is_ours, check_output_dir, crash_point, is_temporary, load_tensors, \
    read_json, read_json_object, read_jsonl, remove_temp_files, replace_folder, save_tensors_atomic, sync_file, \
    write_json_atomic, write_text_atomic

CONFIG, PRIOR, POSTERIOR, METRICS, EVAL, CHECKPOINTS = ("config.json", "prior.safetensors", "posterior.safetensors",
                                                        "metrics.jsonl", "eval.json", "checkpoint")
LOCK, STATE, STATE_TENSORS, LATEST = ".lock", "state.json", "state.safetensors", "latest"
PREDICTIONS = "predictions.jsonl"   # one row per test item of eval.json's evaluation (evaluate.item_rows)
PARAMETERS = "parameters.safetensors"  # the trained parameters beside the posterior, where they are not the prompt
TENSORS = {"prior": PRIOR, "posterior": POSTERIOR}
IMPORTED = "imported"  # the config "prior" of a run made from a PEFT adapter (no training state)

# eval.json's keys (evaluate.evaluate writes them; every reader names them from here): the scores without a prompt
# and with the tuned one, each {"score", "loss", "n", "metric", "examples"} (None when the evaluation was skipped),
# and the attention mass on the prompt per layer, {"layer<l>": [one per head]}, where the method reports it
BASELINE, TUNED = "baseline", "tuned"
SCORE_KEYS = ("score", "loss", "n")
PREFIX_MASS, PREFIX_MASS_FIRST_SLOT, PREFIX_MASS_OTHER_SLOTS = \
    "prefix_mass", "prefix_mass_first_slot", "prefix_mass_other_slots"


def scores(evaluation: dict | None) -> tuple[dict, dict]:
    """An evaluation's baseline and tuned entries, themselves ({} where one is absent or skipped)."""
    evaluation = evaluation or {}
    return tuple(evaluation.get(k) if isinstance(evaluation.get(k), dict) else {} for k in (BASELINE, TUNED))


def is_run(path) -> bool:
    return (Path(path) / CONFIG).is_file()


def find_runs(paths) -> list[Path]:
    """Run directories under each path, sorted, without nesting (a run's checkpoint/ is not a run)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise EptkUsageError(f"no runs found under {path}: the path does not exist")
        if is_run(path):
            runs = [path]
        else:
            runs = []
            for cfg in sorted(path.rglob(CONFIG), key=lambda p: (len(p.parts), p)):  # outermost first
                run = cfg.parent
                if not any(parent in runs for parent in run.parents):
                    runs.append(run)
            runs.sort()
        if not runs:
            raise EptkUsageError(f"no runs found under {path}: a run directory holds {CONFIG}")
        found += [r for r in runs if r not in found]
    return found


class RunDir:
    """A run directory: read it freely; `acquire` it (an exclusive lock) to write it."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock = None

    # ---- lifecycle ------------------------------------------------------------------------------
    def acquire(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK, "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise EptkUsageError(f"another `eptk tune` is writing {self.path} (lock held)") from None
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle
        for folder in (self.path, self.path / CHECKPOINTS):  # what a killed writer left: nobody else writes here now
            remove_temp_files(folder)
        return self

    def is_locked(self) -> bool:
        """Whether a running `eptk tune` holds the run (checked without creating or changing a file)."""
        try:
            handle = open(self.path / LOCK, "r")
        except OSError:
            return False
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
        except OSError:
            return True
        finally:
            handle.close()

    def release(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def reset(self) -> None:
        """Remove what an earlier run left (only the run's own files)."""
        for name in (CONFIG, PRIOR, POSTERIOR, PARAMETERS, METRICS, EVAL):
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / CHECKPOINTS, ignore_errors=True)

    # ---- files ---------------------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        write_json_atomic(self.path / CONFIG, config)

    def config(self) -> dict:
        return read_json_object(self.path / CONFIG, "run config")

    def tensors_file(self, which: str) -> Path:
        """The file of the prior or posterior prompt tensors (`which` may also be that file's name)."""
        name = TENSORS.get(which, which)
        if name not in TENSORS.values():
            raise EptkUsageError(f"unknown prompt tensors {which!r}; valid: {', '.join(TENSORS)}")
        return self.path / name

    def tensors(self, which: str = "posterior", what: str | None = None) -> dict[str, torch.Tensor]:
        """The prior or posterior prompt tensors."""
        return load_tensors(self.tensors_file(which), what or f"{which} tensors")

    def has_tensors(self, which: str) -> bool:
        return (self.path / TENSORS[which]).is_file()

    def metrics(self) -> list[dict]:
        """The logged rows so far (a partial last line of a run still writing is skipped)."""
        return read_jsonl(self.path / METRICS)

    def eval(self) -> dict | None:
        """eval.json, or None before the run finished."""
        return read_json(self.path / EVAL, "eval") if self.is_complete() else None

    def is_complete(self) -> bool:
        return (self.path / EVAL).is_file()

    def has_checkpoint(self) -> bool:
        """Whether a complete checkpoint exists to resume from."""
        return any(self._complete(step) for step in self._steps())

    def resume_config(self) -> dict:
        """The config of a run to continue, refused when it has no training state."""
        if not is_run(self.path):
            raise EptkUsageError(f"--resume {self.path}: not a run directory (no {CONFIG})")
        config = self.config()
        if config.get("prior") == IMPORTED:
            raise EptkUsageError(f"--resume {self.path}: this run was imported from a PEFT adapter and has no "
                                 f"training state")
        return config

    def write_prior(self, tensors) -> None:
        save_tensors_atomic(self.path / PRIOR, tensors)

    def write_posterior(self, tensors) -> None:
        save_tensors_atomic(self.path / POSTERIOR, tensors)

    def write_parameters(self, tensors) -> None:
        """The trained parameters of a method whose parameters materialize its prompt (an encoder's weights)."""
        save_tensors_atomic(self.path / PARAMETERS, tensors)

    def log(self, row: dict) -> None:
        append_jsonl(self.path / METRICS, row)
        crash_point("log")

    def truncate_metrics(self, after_step: int) -> None:
        """Keep the prior's row (step 0) and the training rows up to a checkpoint's step, so a resumed run
        neither repeats a row nor keeps a torn line or the final-evaluation row (the one without a loss) of an
        end it moves past."""
        rows = [r for r in read_jsonl(self.path / METRICS)
                if r.get("step", 0) <= after_step and ("loss" in r or r.get("step") == 0)]
        write_text_atomic(self.path / METRICS, "".join(_jsonl(r) for r in rows))

    def reopen(self) -> None:
        """Make a finished run unfinished again (before `--resume --steps` extends it): its posterior and
        eval.json describe an end that no longer is one. eval.json goes first, so a crash in between
        leaves a run that `--resume` completes."""
        (self.path / EVAL).unlink(missing_ok=True)
        (self.path / POSTERIOR).unlink(missing_ok=True)
        (self.path / PARAMETERS).unlink(missing_ok=True)

    def write_eval(self, result: dict, rows: list[dict] | None = None, name: str | None = None) -> None:
        """eval.json (and its items in predictions.jsonl); with `name`, a later evaluation of the finished run
        (`eptk eval --save`) beside it: eval-<name>.json and predictions-<name>.jsonl. The items go first, so
        an evaluation file always has its items."""
        summary, items = (EVAL, PREDICTIONS) if name is None else (f"eval-{name}.json", f"predictions-{name}.jsonl")
        if rows:
            write_text_atomic(self.path / items, "".join(_jsonl(r) for r in rows))
        write_json_atomic(self.path / summary, result)

    def evaluations(self) -> list[tuple[dict, Path | None]]:
        """Every evaluation of the run with its per-item file (None where it has none): eval.json first, then
        the later ones (`eptk eval --save`) by name."""
        found = []
        for summary in [self.path / EVAL, *sorted(self.path.glob("eval-*.json"))]:
            if summary.is_file():
                items = self.path / (PREDICTIONS if summary.name == EVAL else
                                     "predictions-" + summary.name[len("eval-"):-len(".json")] + ".jsonl")
                found.append((read_json(summary, "evaluation"), items if items.is_file() else None))
        return found

    # ---- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, step: int, tensors: dict[str, torch.Tensor], state: dict, keep: int = 2) -> None:
        """Make the metrics logged so far durable, write checkpoint/step-<N>/ through a temporary folder
        renamed into place, then point `latest` at it."""
        sync_file(self.path / METRICS)
        root = self.path / CHECKPOINTS
        root.mkdir(exist_ok=True)
        final = root / f"step-{step:08d}"

        def fill(folder):
            save_tensors_atomic(folder / STATE_TENSORS, tensors)
            crash_point("checkpoint")  # half a checkpoint
            write_json_atomic(folder / STATE, dict(state, step=step))
        replace_folder(final, fill)
        write_text_atomic(root / LATEST, final.name + "\n")
        for old in sorted(root.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def checkpoint_step(self) -> int:
        """The step of the checkpoint `--resume` continues from (the newest readable one), 0 without one."""
        found = self.latest_checkpoint()
        return int(found[1]["step"]) if found is not None else 0

    def latest_checkpoint(self):
        """(tensors, state) of the newest complete checkpoint, or None."""
        for folder in reversed(self._steps()):
            if self._complete(folder):
                try:
                    return load_tensors(folder / STATE_TENSORS, "checkpoint"), read_json(folder / STATE, "checkpoint state")
                except EptkUsageError:
                    continue  # a damaged checkpoint: fall back to the one before
        return None

    def _steps(self) -> list[Path]:
        root = self.path / CHECKPOINTS
        return sorted(root.glob("step-*")) if root.is_dir() else []

    @staticmethod
    def _complete(folder: Path) -> bool:
        return (folder / STATE).is_file() and (folder / STATE_TENSORS).is_file()


def _jsonl(row) -> str:
    import json
    return json.dumps(row, default=str) + "\n"


def check_out_dir(out, overwrite: bool = False, resume: bool = False, option: str = "--out") -> Path:
    """Everything `prepare_out_dir` would refuse, found without writing anything."""
    out = Path(out)
    option = "--resume" if resume else option
    check_output_dir(out, option)
    if resume:
        if not is_run(out):
            raise EptkUsageError(f"--resume {out}: not a run directory (no {CONFIG})")
    elif is_run(out) and not overwrite:
        raise EptkUsageError(f"{option} {out} already holds a run; pass --overwrite to replace it, "
                             f"or --resume {out} to continue it")
    elif not overwrite:  # --overwrite removes only a run's own files (RunDir.reset), never someone else's
        check_folder_is_ours(out, option, "a run", is_run, ignore=lambda p: p.name == LOCK or is_temporary(p),
                             hint=f"choose another {option}")
    if RunDir(out).is_locked():
        raise EptkUsageError(f"another `eptk tune` is writing {out} (lock held)")
    return out


def prepare_out_dir(out: Path, config: dict, overwrite: bool, resume: bool, option: str = "--out") -> RunDir:
    """Refuse to clobber a different existing run unless --overwrite; lock the directory."""
    out = check_out_dir(out, overwrite, resume, option)
    run = RunDir(out).acquire()
    if overwrite and not resume:
        run.reset()
    return run
