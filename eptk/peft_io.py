"""PEFT adapters in and out: `eptk export --format peft` and `eptk import-peft`.

Export writes `adapter_config.json` + `adapter_model.safetensors` exactly as PEFT saves a prompt-learning
adapter (one tensor, `prompt_embeddings`), without needing PEFT installed. Which PEFT type a run becomes,
and how its tensors map to `prompt_embeddings`, is each method's own business (eptk/methods/: `soft` ->
PROMPT_TUNING; `deep` with a soft prompt and `prefix` -> PREFIX_TUNING); this module reads and writes the
files and the fields every adapter shares.

Import turns such an adapter back into a run directory (prior = posterior = the adapter's tensors, since
no prior is known; config `"prior": "imported"`), so `eptk analyze` and `eptk.load_run` work on it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import is_tiny_name
from .errors import EptkUsageError, check_choice, choices
from .io import check_folder_is_ours, check_output_dir, load_tensors, read_json, save_tensors_atomic, write_json_atomic
from .methods import METHODS, method_from_config, peft_types
from .families import model_dims
from .runs import CONFIG, IMPORTED, RunDir, is_run, prepare_out_dir

FORMATS = ("peft",)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
WEIGHT_NAME = "prompt_embeddings"


# ---- export ------------------------------------------------------------------------------------

def export(run, out, fmt: str = "peft", *, device: str = "cpu") -> Path:
    check_choice("--format", fmt, FORMATS)
    return export_peft(run, out, device=device)


class _RunSource:
    """What a method reads to become an adapter: the config, the posterior, the prompted model (loaded on
    first use, for the slot pass)."""

    def __init__(self, run: Path, config: dict, device: str):
        self.run, self.config, self.device = run, config, device
        self.where = str(RunDir(run).tensors_file("posterior"))
        self._prompted = None

    def posterior(self) -> dict[str, torch.Tensor]:
        return RunDir(self.run).tensors("posterior", "prompt tensors")

    def prompted(self):
        if self._prompted is None:
            from .loading import load_run
            self._prompted = load_run(self.run, device=self.device, backend="torch")
        return self._prompted


def export_peft(run, out, *, device: str = "cpu") -> Path:
    """Write the run's posterior as a PEFT adapter folder `out`; returns `out`."""
    from .models import resolve_device

    run, out = Path(run), Path(out)
    if not is_run(run):
        raise EptkUsageError(f"{run} is not a run directory (no {CONFIG})")
    config = RunDir(run).config()
    method = config.get("method")
    exportable = [name for name, cls in METHODS.items() if cls.exportable]
    if method not in exportable:
        raise EptkUsageError(f"run {run} has method {method!r}; exportable: {choices(exportable)}")
    prompt = method_from_config(config)
    problem = prompt.export_problem()
    if problem:
        raise EptkUsageError(f"run {run} {problem}")
    _check_out(out)
    resolve_device(device)  # a bad --device fails before the model loads
    if not RunDir(run).has_tensors("posterior"):
        raise EptkUsageError(f"run {run} has no posterior yet (still training, or it died before the end); "
                             f"finish it with eptk tune --resume {run}")
    weight, fields = prompt.to_peft(_RunSource(run, config, device))
    adapter = dict(_common_config(config, prompt.slots), **fields)  # the sink slot too, with --keep-sink
    meta = {"format": "pt", "eptk_model": str(config.get("model")), "eptk_method": str(method),
            "eptk_run": str(config.get("name") or run.name)}
    out.mkdir(parents=True, exist_ok=True)
    save_tensors_atomic(out / ADAPTER_WEIGHTS, {WEIGHT_NAME: weight}, metadata=meta)
    write_json_atomic(out / ADAPTER_CONFIG, adapter)
    return out


def _check_out(out: Path) -> None:
    check_output_dir(out, "--out")
    check_folder_is_ours(out, "--out", "a PEFT adapter", lambda folder: (folder / ADAPTER_CONFIG).is_file())


def _common_config(config: dict, P: int) -> dict:
    return {"auto_mapping": None, "base_model_name_or_path": _base_model_name(config), "revision": None,
            "inference_mode": True, "modules_to_save": None, "num_transformer_submodules": 1,
            "num_virtual_tokens": P, "task_type": "CAUSAL_LM", **_peft_version()}


def _peft_version() -> dict:
    try:
        import peft
        return {"peft_version": peft.__version__}
    except ImportError:
        return {}


def _base_model_name(config: dict):
    """What `AutoPeftModelForCausalLM` should load: a hub id or a local folder; None for eptk-only models."""
    from .models import looks_like_hub_id
    from .packaged import PACKAGED

    name = str(config.get("model") or "")
    if name in PACKAGED:
        return str(PACKAGED[name].folder()) if PACKAGED[name].cached() else None
    if is_tiny_name(name) or name.endswith(".gguf") or not name:
        return None
    if Path(name).is_dir():
        return str(Path(name).resolve())
    return name if looks_like_hub_id(name) else None


# ---- import ------------------------------------------------------------------------------------

def read_adapter(folder) -> tuple[dict, torch.Tensor, dict]:
    """(adapter_config, prompt_embeddings, safetensors metadata) of a PEFT prompt/prefix adapter folder."""
    from safetensors import safe_open

    folder = Path(folder)
    if not folder.is_dir() or not (folder / ADAPTER_CONFIG).is_file():
        raise EptkUsageError(f"{folder} is not a PEFT adapter folder (no {ADAPTER_CONFIG})")
    adapter = read_json(folder / ADAPTER_CONFIG, "adapter config")
    if not isinstance(adapter, dict):
        raise EptkUsageError(f"{folder / ADAPTER_CONFIG} is not a PEFT adapter config (not a JSON object)")
    peft_type = adapter.get("peft_type")
    if peft_type not in peft_types():
        raise EptkUsageError(f"adapter {folder} has peft_type {peft_type!r}; importable: {choices(peft_types())}")
    if adapter.get("task_type") not in (None, "CAUSAL_LM"):
        raise EptkUsageError(f"adapter {folder} has task_type {adapter.get('task_type')!r}; importable: CAUSAL_LM")
    if int(adapter.get("num_transformer_submodules") or 1) != 1:
        raise EptkUsageError(f"adapter {folder} has num_transformer_submodules="
                             f"{adapter.get('num_transformer_submodules')}; importable: 1 (decoder-only)")
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        if (folder / ADAPTER_PICKLE).is_file():
            raise EptkUsageError(f"adapter {folder} holds only {ADAPTER_PICKLE} (pickle); eptk reads safetensors "
                                 f"only: re-save it with save_pretrained(..., safe_serialization=True)")
        raise EptkUsageError(f"adapter {folder} has no {ADAPTER_WEIGHTS}")
    tensors = load_tensors(weights, "adapter weights")
    if WEIGHT_NAME not in tensors:
        raise EptkUsageError(f"{weights} has no '{WEIGHT_NAME}' tensor (found: {choices(sorted(tensors)) or 'none'})")
    try:
        with safe_open(str(weights), "pt") as handle:
            meta = handle.metadata() or {}
    except Exception:  # metadata is optional
        meta = {}
    return adapter, tensors[WEIGHT_NAME].float(), meta


def import_peft(folder, out, *, model: str | None = None, task: str | None = None, overwrite: bool = False,
                trust_remote_code: bool = False, allow_pickle_weights: bool = False) -> Path:
    """Turn a PEFT prompt- or prefix-tuning adapter into a run directory at `out`; returns `out`. The
    adapter, the model name, the task and `out` are checked before the model loads."""
    from .config import TuneConfig
    from .models import check_model_name, load_model
    from .runs import check_out_dir
    from .tasks import load_task
    from .train import run_config

    folder, out = Path(folder), Path(out)
    adapter, weight, meta = read_adapter(folder)
    name = model or meta.get("eptk_model") or adapter.get("base_model_name_or_path")
    if not name:
        raise EptkUsageError(f"adapter {folder} does not name its base model; pass --model")
    check_model_name(str(name), allow_pickle_weights)
    if task is not None:
        load_task(task)
    check_out_dir(out, overwrite=overwrite)
    loaded = load_model(str(name), trust_remote_code=trust_remote_code, allow_pickle_weights=allow_pickle_weights)
    dims = model_dims(loaded.model)
    method = peft_types()[adapter["peft_type"]]
    P = int(adapter.get("num_virtual_tokens") or weight.shape[0])
    if weight.dim() != 2 or weight.shape[0] != P:
        raise EptkUsageError(f"adapter {folder}: {WEIGHT_NAME} has shape {tuple(weight.shape)}, "
                             f"expected [{P}, ...] (num_virtual_tokens={P})")
    tensors = method.from_peft(adapter, weight, dims, f"adapter {folder}", str(name))
    prompt = method(P, dims, method.check_options(method.options_of_peft(adapter)))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {k: tuple(s.shape) for k, s in prompt.tensor_specs().items()}
    settings = TuneConfig(model=str(name), task=task, method=method.name, prior=IMPORTED, tokens=P, seed=0,
                          trust_remote_code=bool(trust_remote_code), allow_pickle_weights=bool(allow_pickle_weights))
    config = dict(run_config(settings, prompt, out, loaded), parameters=sum(int(t.numel()) for t in tensors.values()),
                  imported_from=str(folder.resolve()), peft_type=adapter["peft_type"],
                  peft_version=adapter.get("peft_version"))
    del loaded
    run = prepare_out_dir(out, config, overwrite=overwrite, resume=False)
    try:
        run.write_config(config)
        run.write_prior(tensors)
        run.write_posterior(tensors)
    finally:
        run.release()
    return out


def describe(path) -> str:
    """One line for the CLI."""
    path = Path(path)
    if (path / ADAPTER_CONFIG).is_file():
        cfg = json.loads((path / ADAPTER_CONFIG).read_text())
        return f"PEFT {cfg['peft_type']} adapter ({cfg['num_virtual_tokens']} virtual tokens): {path}"
    return f"run directory: {path}"
