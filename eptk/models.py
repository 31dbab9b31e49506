"""Loading frozen causal LMs (the packaged SmolLM2 and Gemma-3-270M, tiny random models, local folders, GGUF files,
hub ids)
onto the device a command asks for. What differs between architectures lives in eptk/families/."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import DEFAULT_MODEL, DEVICE_MAPS, check_device_map, is_tiny_name
from .errors import EptkUsageError, choices
from .families import family_of
from .families.base import tiny_configs
from .io import file_sha256, replace_folder
from .io import cache_dir  # noqa: F401  (eptk.models.cache_dir: where models and statistics are cached)
from .packaged import PACKAGED

TINY_FAMILIES = tuple(tiny_configs())  # every family adapter's `tiny:<name>` models
MODEL_CHOICES = (*PACKAGED, "tiny", f"tiny:<{'|'.join(TINY_FAMILIES)}>", "a local directory", "a .gguf file",
                 "a hub id (owner/name)")
DEVICE_NAMES = ("cpu", "disk", "cuda", "cuda:N", "N (a GPU index)")


@dataclass
class LoadedModel:
    model: torch.nn.Module      # frozen HF causal LM
    tokenizer: object           # a transformers tokenizer with a pad token
    name: str                   # the --model value as given
    source: str                 # where the weights came from, in words (no folder of this machine)
    identity: str = ""          # the model by name and content hash: the same on every machine (model_identity)


def resolve_device(name: str, default: str | None = None) -> torch.device:
    """`auto` (the given default, else CUDA when present, else the CPU), cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device(default or ("cuda" if torch.cuda.is_available() else "cpu"))
    valid = "auto, cpu, cuda, cuda:N"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EptkUsageError(f"unknown --device {name!r}; valid: {valid}") from None
    if device.type not in ("cpu", "cuda"):
        raise EptkUsageError(f"unknown --device {name!r}; valid: {valid}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise EptkUsageError(f"--device {name}: this machine has {count} CUDA device(s); valid: {valid}"
                                 f"{f' with N < {count}' if count else ' (cpu or auto here)'}")
    return device


def frozen_dtype(device: torch.device) -> torch.dtype:
    """The dtype a frozen model runs in on this device: bfloat16 on CUDA, float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_frozen(name: str, device: str | torch.device = "auto", **options) -> "LoadedModel":
    """`load_model` on `device` (auto: CUDA when present) in the dtype a frozen model runs in there."""
    dev = resolve_device(device) if isinstance(device, str) else device
    return load_model(name, device=dev, dtype=frozen_dtype(dev), **options)


def tiny_family(name: str) -> str:
    """The family of a `tiny` / `tiny:<family>` model name (llama by default)."""
    return name.split(":", 1)[1] if ":" in name else "llama"


PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")  # torch.save files: unpickled to load


def check_model_name(name: str, allow_pickle_weights: bool = False) -> str:
    """What kind of model `name` is ("tiny", "packaged", "gguf", "dir", "hub"), checked without loading
    anything: a usage error for a name that cannot load (an unknown tiny family, a missing file, a folder
    with pickle weights only, a hub id while offline)."""
    if is_tiny_name(name):
        family = tiny_family(name)
        if family not in TINY_FAMILIES:
            raise EptkUsageError(f"unknown tiny model family {family!r}; valid: {choices(TINY_FAMILIES)}")
        return "tiny"
    if name in PACKAGED:
        PACKAGED[name].check()  # names the pip install command when its packages are missing
        return "packaged"
    if name.endswith(".gguf"):
        if not Path(name).is_file():
            raise EptkUsageError(f"GGUF file not found: {name}")
        return "gguf"
    if Path(name).is_dir():
        folder = Path(name)
        if not any(folder.glob("*.safetensors")) and any((folder / f).is_file() for f in PICKLE_WEIGHTS) \
                and not allow_pickle_weights:
            raise EptkUsageError(pickle_refusal(name))
        return "dir"
    if looks_like_hub_id(name):
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise EptkUsageError(f"model {name!r} is a hub id but HF_HUB_OFFLINE is set; use a local directory "
                                 f"or one of: {choices(MODEL_CHOICES)}")
        return "hub"
    raise EptkUsageError(f"unknown model {name!r}; valid: {choices(MODEL_CHOICES)}")


def pickle_refusal(name: str) -> str:
    return (f"model {name!r} has its weights only as pickle files (pytorch_model.bin), which can run code when "
            f"loaded; eptk loads safetensors only: convert them (save_pretrained(..., safe_serialization=True)), "
            f"or pass --allow-pickle-weights if you trust the source")


def input_device(model) -> torch.device:
    """Where inputs enter a model: the input embeddings' device, or for a model dispatched over devices
    (--device-map) the device the embedding layer executes on (offloaded weights execute on the main device)."""
    module = model.get_input_embeddings()
    executes_on = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if executes_on is not None:
        return torch.device(f"cuda:{executes_on}" if isinstance(executes_on, int) else executes_on)
    return module.weight.device


def load_model(name: str = DEFAULT_MODEL, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               trust_remote_code: bool = False, seed: int = 0, device_map: str | None = None,
               offload_dir: str | None = None, allow_pickle_weights: bool = False) -> LoadedModel:
    """Load `name` frozen in eval mode, on `device` or, with `device_map`, dispatched over devices. Raises
    EptkUsageError for anything the user can fix. Weights load from safetensors (or GGUF) only, unless
    `allow_pickle_weights`."""
    kind = check_model_name(name, allow_pickle_weights)
    if kind == "tiny":
        family = tiny_family(name)
        model, tokenizer = build_tiny(family, seed=seed)
        if dtype is not None:
            model.to(dtype)  # built in float32 (the same random weights on every device), then cast
        source = f"random tiny {family} (seed {seed})"
    elif kind == "packaged":
        model, tokenizer, source = _load_packaged(PACKAGED[name], dtype)
    elif kind == "gguf":
        path = Path(name)
        model, tokenizer = _from_gguf(path, dtype)
        source = path.name
    elif kind == "dir":
        model, tokenizer = _from_pretrained(name, dtype, trust_remote_code, allow_pickle_weights)
        source = f"folder {Path(name).resolve().name}"
    else:
        model, tokenizer = _from_pretrained(name, dtype, trust_remote_code, allow_pickle_weights)
        source = f"hub:{name}"
    family_of(model)  # refuses an unsupported architecture, naming the supported ones
    _ensure_pad_token(tokenizer)
    if device_map:
        model = _dispatch(model, device_map, dtype, offload_dir)
    else:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, source=source,
                       identity=model_identity(name, seed=seed))


def model_identity(name: str, seed: int = 0) -> str:
    """The model by name and content hash, never by where it lies: "smollm2 sha256:…" (a packaged model's GGUF),
    "<file> sha256:…" for a .gguf, "<folder> sha256:…" (its config and weight files) for a folder, "tiny:<family>
    seed N", "hub:<id>". Keys the statistics cache and is recorded in config.json as `model_id`, so the same
    model gets the same cached statistics under any EPTK_CACHE and on any machine."""
    kind = check_model_name(name, allow_pickle_weights=True)
    if kind == "tiny":
        return f"tiny:{tiny_family(name)} seed {seed}"
    if kind == "packaged":
        return f"{name} sha256:{PACKAGED[name].content_sha256()}"
    if kind == "gguf":
        return f"{Path(name).name} sha256:{file_sha256(Path(name))}"
    if kind == "dir":
        folder = Path(name)
        files = sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix in (".safetensors", ".json", ".bin")))
        digest = hashlib.sha256()
        for path in files:
            digest.update(f"{path.name}\0{file_sha256(path)}\0".encode())
        return f"{folder.resolve().name} sha256:{digest.hexdigest()}"
    return f"hub:{name}"


def _dispatch(model, device_map: str, dtype, offload_dir: str | None):
    """Spread one frozen model over devices with accelerate: `auto`/`balanced` (even over the visible GPUs),
    `sequential` (fill GPU 0 first), or a JSON file mapping module names to devices (accelerate's format,
    "cpu" and "disk" included; disk needs --offload-dir)."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    check_device_map(device_map, offload_dir or "")
    if dtype is not None:
        model.to(dtype)
    no_split = list(model._no_split_modules or [])
    if device_map in ("auto", "balanced"):
        memory = get_balanced_memory(model, no_split_module_classes=no_split)
        placement = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=no_split)
    elif device_map == "sequential":
        placement = infer_auto_device_map(model, no_split_module_classes=no_split)
    else:
        placement = read_device_map(device_map, model, offload_dir)
    _check_disk(placement, device_map, offload_dir)
    return dispatch_model(model, device_map=placement, offload_dir=offload_dir)


def check_placement(device: str, device_map: str = "", offload_dir: str = "", default: str | None = None):
    """--device, --device-map and --offload-dir checked without a model: the device, the strategy or the map
    file's shape and devices ("disk" needs --offload-dir); the map's module names are checked at load."""
    resolved = resolve_device(device, default=default)
    check_device_map(device_map, offload_dir)
    if device_map and device_map not in DEVICE_MAPS:
        read_device_map_file(device_map, offload_dir)
    if offload_dir:
        check_offload_dir(offload_dir)
    return resolved


OFFLOAD_INDEX = "index.json"  # accelerate's offload folder: index.json and one <weight>.dat per offloaded tensor


def check_offload_dir(folder: str) -> None:
    """--offload-dir as a folder accelerate can fill: not a file nor below one, writable, and new, empty or an
    earlier offload folder (its index.json and .dat files) rather than someone else's files."""
    from .io import check_folder_is_ours, check_output_dir

    check_output_dir(folder, "--offload-dir")
    check_folder_is_ours(folder, "--offload-dir", "offloaded weights",
                         lambda path: all(p.name == OFFLOAD_INDEX or p.suffix == ".dat" for p in path.iterdir()),
                         hint="choose a new or empty folder")


def read_device_map_file(path: str, offload_dir: str | None = None) -> dict:
    """A device map JSON file ({"module.name": device}) with each device checked, before any model loads."""
    from .io import read_json

    placement = read_json(Path(path), "device map")
    if not isinstance(placement, dict) or not placement:
        raise EptkUsageError(f"{path}: a device map is a JSON object {{\"module.name\": device}}")
    placement = {name: _map_device(where, path, name) for name, where in placement.items()}
    _check_disk(placement, path, offload_dir)
    return placement


def _check_disk(placement: dict, device_map: str, offload_dir: str | None) -> None:
    """Modules placed on "disk" need --offload-dir for their weights."""
    if "disk" in placement.values() and not offload_dir:
        raise EptkUsageError(f"--device-map {device_map} puts modules on \"disk\": give --offload-dir DIR for their weights")


def read_device_map(path: str, model, offload_dir: str | None = None) -> dict:
    """An accelerate device map from a JSON file, checked against the model."""
    from accelerate.utils import check_device_map

    placement = read_device_map_file(path, offload_dir)
    modules = dict(model.named_modules())
    for name in placement:
        if name not in modules:
            raise EptkUsageError(f"{path}: {name!r} is not a module of {type(model).__name__} (e.g. "
                                 f"{choices(list(modules)[1:4])})")
    try:
        check_device_map(model, placement)
    except ValueError as exc:
        raise EptkUsageError(f"{path}: {str(exc).strip().splitlines()[0]}") from None
    return placement


def _map_device(where, path, name):
    """One device of a device map: "cpu", "disk", a CUDA device present here (index, "cuda" or "cuda:N")."""
    if where in ("cpu", "disk"):
        return where
    index = where if isinstance(where, int) and not isinstance(where, bool) else None
    if isinstance(where, str) and (where == "cuda" or where.startswith("cuda:")):
        index = 0 if where == "cuda" else int(where[5:]) if where[5:].isdigit() else None
    if index is None or index < 0:
        raise EptkUsageError(f"{path}: device {where!r} of {name!r} is not one of {choices(DEVICE_NAMES)}")
    if index >= torch.cuda.device_count():
        raise EptkUsageError(f"{path}: {name!r} is mapped to GPU {index}, but {torch.cuda.device_count()} are visible")
    return index


def looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/"))


def _ensure_pad_token(tokenizer) -> None:
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def _from_pretrained(name_or_dir: str, dtype, trust_remote_code: bool, allow_pickle_weights: bool = False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_dir, trust_remote_code=trust_remote_code)
        # use_safetensors=True: never fall back to unpickling pytorch_model.bin; None prefers safetensors
        model = AutoModelForCausalLM.from_pretrained(name_or_dir, dtype=dtype or torch.float32,
                                                     trust_remote_code=trust_remote_code,
                                                     use_safetensors=None if allow_pickle_weights else True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "safetensors" in first and not allow_pickle_weights:
            raise EptkUsageError(pickle_refusal(name_or_dir)) from None
        raise EptkUsageError(f"cannot load model {name_or_dir!r}: {first}") from None
    return model, tokenizer


def _from_gguf(path: Path, dtype):
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise EptkUsageError("loading a .gguf model needs the 'gguf' package (pip install gguf)") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .gguf_tokenizer import tokenizer_from_gguf

    # eptk's own build for SentencePiece-BPE vocabularies (Gemma's), which transformers segments wrongly
    tokenizer = tokenizer_from_gguf(path) or AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype or torch.float32)
    return model, tokenizer


def _load_packaged(packaged, dtype):
    """Dequantize the packaged GGUF once (SmolLM2 ~30 s, Gemma-3-270M ~2 min) and cache a safetensors copy
    with its tokenizer, which later loads read in seconds."""
    cached = packaged.folder()
    if not packaged.cached():
        model, tokenizer = _from_gguf(packaged.gguf(), None)
        # The weights are plain floats after dequantizing; drop the GGUF marker so they save.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config

        def fill(folder):
            model.save_pretrained(folder, safe_serialization=True)
            tokenizer.save_pretrained(folder)
        replace_folder(cached, fill)
    model, tokenizer = _from_pretrained(str(cached), dtype, False)
    return model, tokenizer, f"{packaged.gguf_name()} (dequantized, cached by eptk)"


# --- tiny random models with an in-code character tokenizer (tests, CI) -------------------------

TINY_CHARS = [chr(c) for c in range(32, 127)] + ["\n"]


def build_tiny_tokenizer():
    """A character-level tokenizer built in code: every printable ASCII character is one token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + TINY_CHARS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")


def tiny_config(family: str, vocab_size: int):
    """The `tiny:<family>` model's random config, from its family adapter (eptk/families/: `tiny_configs`)."""
    builders = tiny_configs()
    if family not in builders:
        raise EptkUsageError(f"unknown tiny model family {family!r}; valid: {choices(TINY_FAMILIES)}")
    return builders[family](dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                 max_position_embeddings=512))


def build_tiny(family: str = "llama", seed: int = 0):
    from transformers import AutoModelForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = tiny_config(family, len(tokenizer))
    # HF's sdpa has no attention soft-cap (5.17 drops it, 5.24 refuses it): eager is Gemma-2's own choice
    config._attn_implementation = "eager" if getattr(config, "attn_logit_softcapping", None) else "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model, tokenizer
