"""Atomic file writes, checked safetensors reads (never pickle), and where eptk caches what it computes once."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from .errors import EptkUsageError


def cache_dir() -> Path:
    """eptk's cache (models, activation statistics, trained VAE priors): EPTK_CACHE, default ~/.cache/eptk."""
    return Path(os.environ.get("EPTK_CACHE", Path.home() / ".cache" / "eptk"))


def _atomic_replace(path: Path, write) -> None:
    """Write through a temporary file in the same folder, fsync it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path, data: bytes) -> None:
    _atomic_replace(path, lambda handle: handle.write(data))


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def append_jsonl(path, obj) -> None:
    """Append one JSON line; a reader may see a partial last line and must skip it."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(obj, default=str) + "\n")
        handle.flush()


def read_jsonl(path) -> list[dict]:
    """Rows of a JSONL file, skipping a partial trailing line left by a run still writing."""
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_json(path, what: str = "file"):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EptkUsageError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EptkUsageError(f"{what} {path} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None


def save_tensors_atomic(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    write_bytes_atomic(path, data)


def load_tensors(path, what: str = "safetensors file") -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning a missing, truncated or foreign file into a usage error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise EptkUsageError(f"{what} not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EptkUsageError(f"{what} {path} is not a readable safetensors file ({first})") from None
