"""`eptk.load_run`: a run directory back to a tuned, callable model."""
from __future__ import annotations

from pathlib import Path

from .errors import EptkUsageError
from .families import model_dims
from .methods import method_from_config
from .models import LoadedModel, load_frozen
from .prompts import PromptedModel
from .runs import CONFIG, RunDir, is_run


def load_run(path, *, device: str = "auto", backend: str = "auto", tensors: str = "posterior",
             device_map: str | None = None, offload_dir: str | None = None,
             loaded: LoadedModel | None = None) -> PromptedModel:
    """The frozen model plus the run's posterior (or `tensors="prior"`), on `device` (auto: CUDA when present,
    in bfloat16 there; float32 on the CPU) or dispatched over devices by `device_map`. `loaded`: the run's
    model, already loaded (several runs of one model share it; remove each one's hooks when done)."""
    path = Path(path)
    if not is_run(path):
        raise EptkUsageError(f"{path} is not a run directory (no {CONFIG})")
    run = RunDir(path)
    config = run.config()
    values = run.tensors(tensors, "prompt tensors")  # a damaged file fails before the model loads
    if loaded is None:
        loaded = load_frozen(config["model"], device, device_map=device_map, offload_dir=offload_dir,
                             trust_remote_code=bool(config.get("trust_remote_code", False)),
                             allow_pickle_weights=bool(config.get("allow_pickle_weights", False)))
    elif loaded.name != config["model"]:
        raise EptkUsageError(f"run {path} was tuned on model {config['model']!r}, not {loaded.name!r}")
    dims = model_dims(loaded.model)
    if config.get("hidden_size") not in (None, dims["hidden_size"]):
        raise EptkUsageError(f"run {path} was tuned with width {config.get('hidden_size')}, model has "
                             f"{dims['hidden_size']}")
    prompted = PromptedModel(loaded.model, loaded.tokenizer, method_from_config(config, dims), values, backend)
    if config.get("sink_token_id") not in (None, prompted.sink_token_id):
        raise EptkUsageError(f"run {path} kept token {config['sink_token_id']} in its sink slot; this tokenizer's "
                             f"is {prompted.sink_token_id}")
    prompted.config = config
    return prompted
