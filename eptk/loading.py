"""`eptk.load_run`: a run directory back to a tuned, callable model."""
from __future__ import annotations

from pathlib import Path

from .errors import EptkUsageError
from .families import model_dims
from .methods import method_from_config
from .models import frozen_dtype, load_model, resolve_device
from .prompts import PromptedModel
from .runs import CONFIG, RunDir, is_run


def load_run(path, *, device: str = "auto", backend: str = "auto", tensors: str = "posterior",
             device_map: str | None = None, offload_dir: str | None = None) -> PromptedModel:
    """The frozen model plus the run's posterior (or `tensors="prior"`), on `device` (auto: CUDA when present,
    in bfloat16 there; float32 on the CPU) or dispatched over devices by `device_map`."""
    path = Path(path)
    if not is_run(path):
        raise EptkUsageError(f"{path} is not a run directory (no {CONFIG})")
    run = RunDir(path)
    config = run.config()
    dev = resolve_device(device)
    loaded = load_model(config["model"], device=dev, dtype=frozen_dtype(dev), device_map=device_map,
                        offload_dir=offload_dir, trust_remote_code=bool(config.get("trust_remote_code", False)))
    values = run.tensors(tensors, "prompt tensors")
    dims = model_dims(loaded.model)
    if config.get("hidden_size") not in (None, dims["hidden_size"]):
        raise EptkUsageError(f"run {path} was tuned with width {config.get('hidden_size')}, model has "
                             f"{dims['hidden_size']}")
    prompted = PromptedModel(loaded.model, loaded.tokenizer, method_from_config(config, dims), values, backend)
    prompted.config = config
    return prompted
