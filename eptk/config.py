"""The settings of one `eptk tune` run (plain data, no torch), where they come from, and its default name.

config.json of a run holds these fields plus what tuning resolved (layers, model dimensions, versions);
`TuneConfig.from_run` reads one back to resume or rerun it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EptkUsageError, choices

DEFAULT_MODEL = "smollm2"
DEVICE_MAPS = ("auto", "balanced", "sequential")
SCHEDULES = ("cosine", "linear", "constant")
NAN_POLICIES = ("stop", "skip")
LR_SCALES = ("prior", "none")


@dataclass
class TuneConfig:
    model: str = DEFAULT_MODEL
    task: str = "arith"
    method: str = "deep"
    prior: str = "normal"
    prior_weight: float = 0.0
    tokens: int = 20
    layers: str = "last:3"
    soft: bool = True
    keep_sink: bool = False
    steps: int = 150
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-2
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: int = 10
    clip: float = 1.0
    eval_every: int = 25
    eval_size: int = 100
    test_size: int = 200
    train_size: int = 4000
    checkpoint_every: int = 50
    seed: int = 0
    out: str = ""
    backend: str = "auto"
    grad_checkpointing: bool = False
    device: str = "auto"
    nan_policy: str = "stop"
    lr_scale: str = "prior"
    trust_remote_code: bool = False
    stats_samples: int = 2048
    device_map: str = ""
    offload_dir: str = ""
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Checks that need no model: fail before anything is loaded or written."""
        from eptk.kernels import BACKENDS

        from .methods import METHODS
        from .priors import parse_spec

        METHODS[self.method].check_options(soft=self.soft, keep_sink=self.keep_sink)  # an unknown method: usage error
        positive = {"tokens": self.tokens, "steps": self.steps, "batch-size": self.batch_size,
                    "grad-accum": self.grad_accum}
        for name, value in positive.items():
            if value < 1:
                raise EptkUsageError(f"--{name} must be at least 1 (got {value})")
        for name, value in {"lr": self.lr}.items():
            if not (value > 0 and math.isfinite(value)):
                raise EptkUsageError(f"--{name} must be a positive number (got {value})")
        nonneg = {"prior-weight": self.prior_weight, "eval-every": self.eval_every, "warmup": self.warmup,
                  "clip": self.clip, "weight-decay": self.weight_decay, "checkpoint-every": self.checkpoint_every}
        for name, value in nonneg.items():
            if not (value >= 0 and math.isfinite(value)):
                raise EptkUsageError(f"--{name} must be a non-negative number (got {value})")
        if self.schedule not in SCHEDULES:
            raise EptkUsageError(f"unknown schedule {self.schedule!r}; valid: {choices(SCHEDULES)}")
        check_device_map(self.device_map, self.offload_dir)
        if self.lr_scale not in LR_SCALES:
            raise EptkUsageError(f"unknown --lr-scale {self.lr_scale!r}; valid: {choices(LR_SCALES)}")
        if self.nan_policy not in NAN_POLICIES:
            raise EptkUsageError(f"unknown --nan-policy {self.nan_policy!r}; valid: {choices(NAN_POLICIES)}")
        if self.backend not in BACKENDS:
            raise EptkUsageError(f"unknown --backend {self.backend!r}; valid: {choices(BACKENDS)}")
        parse_spec(self.prior)

    @classmethod
    def from_dict(cls, data: dict) -> "TuneConfig":
        """The settings in a dict such as config.json (other keys ignored). config.json stores the resolved
        layers under `layers` and the spec the user gave under `layers_spec`: the spec wins."""
        data = dict(data, layers=data["layers_spec"]) if "layers_spec" in data else data
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_run(cls, path) -> "TuneConfig":
        """The settings of the run in `path`, to continue it (`--resume`)."""
        from .runs import RunDir

        cfg = cls.from_dict(RunDir(path).resume_config())
        cfg.out = str(path)
        return cfg

    @classmethod
    def from_file(cls, path, out=None) -> "TuneConfig":
        """The settings of a config.json, to rerun them (`--config`), into `out` when given."""
        from .io import read_json

        cfg = cls.from_dict(read_json(path, "config"))
        cfg.out = str(out) if out is not None else cfg.out
        return cfg


def check_device_map(device_map: str, offload_dir: str = "") -> None:
    """A --device-map value names a strategy or an existing JSON file (read against the model when it loads)."""
    if device_map and device_map not in DEVICE_MAPS and not (device_map.endswith(".json") and Path(device_map).is_file()):
        raise EptkUsageError(f"unknown --device-map {device_map!r}; valid: {choices(DEVICE_MAPS)} or an existing FILE.json")
    if offload_dir and not device_map:
        raise EptkUsageError("--offload-dir holds the weights a --device-map puts on \"disk\"; give --device-map too")


def default_run_name(cfg: TuneConfig) -> str:
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "-" for c in str(s)).strip("-")  # noqa: E731
    model = safe(Path(cfg.model).name if "/" in cfg.model else cfg.model)
    return str(Path("runs") / f"{model}-{safe(cfg.task)}-{cfg.method}-{safe(cfg.prior)}-s{cfg.seed}")


def versions() -> dict:
    """The package versions a run records in its config."""
    import platform

    import torch
    import transformers

    from .version import __version__
    out = {"eptk": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version()}
    try:
        import triton
        out["triton"] = triton.__version__
    except Exception:
        pass
    return out
