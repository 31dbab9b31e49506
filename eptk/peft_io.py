"""PEFT adapters in and out: `eptk export --format peft` and `eptk import-peft`.

Export writes `adapter_config.json` + `adapter_model.safetensors` exactly as PEFT saves a prompt-learning
adapter (one tensor, `prompt_embeddings`), without needing PEFT installed:

- `soft` -> PROMPT_TUNING: `prompt_embeddings` [P, d] is the soft tensor (PEFT concatenates it in front of
  the token embeddings, so the real tokens sit at positions P.., as in eptk).
- `deep` (with a soft prompt) and `prefix` -> PREFIX_TUNING: `prompt_embeddings` [P, L*2*Hkv*D] holds every
  layer's slot keys/values. PEFT (`PeftModel.get_prompt`, 0.13 .. 0.21 at least) views it as
  [B, P, L*2, Hkv, D], permutes to [L*2, B, Hkv, P, D] and hands layer l the pair (2l, 2l+1) = (key, value)
  as its cache, used as-is (no rotation): so

      prompt_embeddings[p, ((l*2 + j)*Hkv + h)*D + d] = (key if j == 0 else value)[l][h, p, d]

  with token_dim = Hkv*D and num_attention_heads = Hkv (PEFT's own GQA convention since 0.12). eptk's slot
  keys are already rotated at positions 0..P-1 and PEFT places the real tokens after a P-long cache, at
  positions P.., so the export is exact whenever every layer has slot keys/values.

A deep run without a soft prompt has no slots below its first deep layer, which PEFT cannot express: refused.

Import turns such an adapter back into a run directory (prior = posterior = the adapter's tensors, since
no prior is known; config `"prior": "imported"`), so `eptk analyze` and `eptk.load_run` work on it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import EptkUsageError, choices
from .io import load_tensors, read_json, save_tensors_atomic, write_json_atomic

FORMATS = ("peft",)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
WEIGHT_NAME = "prompt_embeddings"
PEFT_TYPES = {"PROMPT_TUNING": "soft", "PREFIX_TUNING": "prefix"}


# ---- the PEFT prefix layout --------------------------------------------------------------------

def pack_prefix(kv: dict[int, tuple[torch.Tensor, torch.Tensor]], num_layers: int) -> torch.Tensor:
    """layer -> (key, value) [Hkv,P,D] for every layer 0..L-1  ->  PEFT's [P, L*2*Hkv*D]."""
    missing = [l for l in range(num_layers) if l not in kv]
    if missing:
        raise EptkUsageError(f"layers {missing} have no prompt keys/values; PEFT prefix tuning needs every layer")
    stacked = torch.stack([torch.stack([kv[l][0], kv[l][1]]) for l in range(num_layers)])  # [L,2,Hkv,P,D]
    P = stacked.shape[3]
    return stacked.detach().float().cpu().permute(3, 0, 1, 2, 4).reshape(P, -1).contiguous()


def unpack_prefix(flat: torch.Tensor, num_layers: int, kv_heads: int, head_dim: int) -> dict[str, torch.Tensor]:
    """PEFT's [P, L*2*Hkv*D]  ->  {"prefix.<l>.key"/"prefix.<l>.value": [Hkv,P,D]}."""
    P = flat.shape[0]
    per = flat.float().reshape(P, num_layers, 2, kv_heads, head_dim).permute(1, 2, 3, 0, 4)  # [L,2,Hkv,P,D]
    out = {}
    for l in range(num_layers):
        out[f"prefix.{l}.key"] = per[l, 0].contiguous().clone()
        out[f"prefix.{l}.value"] = per[l, 1].contiguous().clone()
    return out


# ---- export ------------------------------------------------------------------------------------

def export(run, out, fmt: str = "peft", *, device: str = "cpu") -> Path:
    if fmt not in FORMATS:
        raise EptkUsageError(f"unknown export format {fmt!r}; valid: {choices(FORMATS)}")
    return export_peft(run, out, device=device)


def export_peft(run, out, *, device: str = "cpu") -> Path:
    """Write the run's posterior as a PEFT adapter folder `out`; returns `out`."""
    from .runs import CONFIG, POSTERIOR, RunDir, is_run

    run, out = Path(run), Path(out)
    if not is_run(run):
        raise EptkUsageError(f"{run} is not a run directory (no {CONFIG})")
    config = RunDir(run).config()
    method = config.get("method")
    if method not in ("soft", "deep", "prefix"):
        raise EptkUsageError(f"run {run} has method {method!r}; exportable: soft, deep, prefix")
    if method == "deep" and not bool(config.get("soft", True)):
        layers = config.get("layers") or []
        first = min(layers) if layers else "?"
        raise EptkUsageError(f"run {run} is a deep prompt without a soft prompt: layers 0..{first}-1 have no prompt "
                             f"slots, which PEFT prefix tuning (P keys/values at every layer) cannot express; "
                             f"tune with --soft to export it")
    _check_out(out)
    P = int(config["tokens"])
    if method == "soft":
        tensors = load_tensors(run / POSTERIOR, "prompt tensors")
        if "soft" not in tensors:
            raise EptkUsageError(f"{run / POSTERIOR} has no 'soft' tensor")
        weight = tensors["soft"].float()
        d = config.get("hidden_size", weight.shape[1])
        if tuple(weight.shape) != (P, d):
            raise EptkUsageError(f"soft tensor has shape {tuple(weight.shape)}, expected {(P, d)}")
        adapter = _prompt_tuning_config(config, P, int(d))
    else:
        import eptk

        prompted = eptk.load_run(run, device=device, backend="torch")
        dims = prompted.dims
        with torch.no_grad():
            weight = pack_prefix(prompted.prefix(), dims["num_layers"])
        adapter = _prefix_tuning_config(config, P, dims)
    meta = {"format": "pt", "eptk_model": str(config.get("model")), "eptk_method": str(method),
            "eptk_run": str(config.get("name") or run.name)}
    out.mkdir(parents=True, exist_ok=True)
    save_tensors_atomic(out / ADAPTER_WEIGHTS, {WEIGHT_NAME: weight}, metadata=meta)
    write_json_atomic(out / ADAPTER_CONFIG, adapter)
    return out


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise EptkUsageError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / ADAPTER_CONFIG).is_file():
        raise EptkUsageError(f"--out {out} is a non-empty directory that is not a PEFT adapter; choose another --out")


def _common_config(config: dict, P: int) -> dict:
    return {"auto_mapping": None, "base_model_name_or_path": _base_model_name(config), "revision": None,
            "inference_mode": True, "modules_to_save": None, "num_transformer_submodules": 1,
            "num_virtual_tokens": P, "task_type": "CAUSAL_LM", **_peft_version()}


def _prompt_tuning_config(config: dict, P: int, d: int) -> dict:
    return dict(_common_config(config, P), peft_type="PROMPT_TUNING", token_dim=d,
                num_attention_heads=config.get("num_heads"), num_layers=config.get("num_layers"),
                prompt_tuning_init="RANDOM", prompt_tuning_init_text=None, tokenizer_kwargs=None,
                tokenizer_name_or_path=None)


def _prefix_tuning_config(config: dict, P: int, dims: dict) -> dict:
    token_dim = dims["num_kv_heads"] * dims["head_dim"]
    return dict(_common_config(config, P), peft_type="PREFIX_TUNING", token_dim=token_dim,
                num_attention_heads=dims["num_kv_heads"], num_layers=dims["num_layers"],
                encoder_hidden_size=token_dim, prefix_projection=False)


def _peft_version() -> dict:
    try:
        import peft
        return {"peft_version": peft.__version__}
    except ImportError:
        return {}


def _base_model_name(config: dict):
    """What `AutoPeftModelForCausalLM` should load: a hub id or a local folder; None for eptk-only models."""
    from .models import _looks_like_hub_id, cache_dir

    name = str(config.get("model") or "")
    if name == "smollm2":
        cached = cache_dir() / "models" / "smollm2"
        return str(cached) if (cached / "config.json").is_file() else None
    if name == "tiny" or name.startswith("tiny:") or name.endswith(".gguf") or not name:
        return None
    if Path(name).is_dir():
        return str(Path(name).resolve())
    return name if _looks_like_hub_id(name) else None


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
    if peft_type not in PEFT_TYPES:
        raise EptkUsageError(f"adapter {folder} has peft_type {peft_type!r}; importable: {choices(PEFT_TYPES)}")
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
                trust_remote_code: bool = False) -> Path:
    """Turn a PEFT prompt- or prefix-tuning adapter into a run directory at `out`; returns `out`."""
    from .models import load_model, model_dims
    from .prompts import param_shapes
    from .runs import prepare_out_dir
    from .train import versions

    folder, out = Path(folder), Path(out)
    adapter, weight, meta = read_adapter(folder)
    name = model or meta.get("eptk_model") or adapter.get("base_model_name_or_path")
    if not name:
        raise EptkUsageError(f"adapter {folder} does not name its base model; pass --model")
    loaded = load_model(str(name), trust_remote_code=trust_remote_code)
    dims = model_dims(loaded.model)
    del loaded
    method = PEFT_TYPES[adapter["peft_type"]]
    P = int(adapter.get("num_virtual_tokens") or weight.shape[0])
    if weight.dim() != 2 or weight.shape[0] != P:
        raise EptkUsageError(f"adapter {folder}: {WEIGHT_NAME} has shape {tuple(weight.shape)}, "
                             f"expected [{P}, ...] (num_virtual_tokens={P})")
    if method == "soft":
        if weight.shape[1] != dims["hidden_size"]:
            raise EptkUsageError(f"adapter {folder}: prompt width {weight.shape[1]} does not match model {name!r} "
                                 f"(hidden size {dims['hidden_size']})")
        tensors = {"soft": weight.contiguous()}
    else:
        L, Hkv, D = dims["num_layers"], dims["num_kv_heads"], dims["head_dim"]
        heads = int(adapter.get("num_attention_heads") or Hkv)
        token_dim = int(adapter.get("token_dim") or Hkv * D)
        layers = int(adapter.get("num_layers") or L)
        want = (L, Hkv, Hkv * D)
        if (layers, heads, token_dim) != want or weight.shape[1] != L * 2 * Hkv * D:
            raise EptkUsageError(f"adapter {folder}: prefix of {layers} layers x {heads} heads x token_dim {token_dim} "
                                 f"({tuple(weight.shape)}) does not match model {name!r} ({L} layers x {Hkv} kv heads "
                                 f"x head_dim {D})")
        tensors = unpack_prefix(weight, L, Hkv, D)
    shapes = param_shapes(method, P, dims, [], True)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == shapes
    config = {
        "model": str(name), "task": task, "method": method, "prior": "imported", "prior_weight": 0.0,
        "tokens": P, "layers": [], "layers_spec": "all", "soft": True, "seed": 0,
        "trust_remote_code": bool(trust_remote_code), "out": str(out), "name": out.name, **dims,
        "parameters": sum(int(t.numel()) for t in tensors.values()),
        "imported_from": str(folder.resolve()), "peft_type": adapter["peft_type"],
        "peft_version": adapter.get("peft_version"), "versions": versions(),
    }
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
