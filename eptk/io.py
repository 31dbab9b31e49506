"""Atomic file and folder writes with the modes the umask gives, crash-tolerant JSONL logs, output-path
checks, checked safetensors reads (never pickle), and where eptk caches what it computes once."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import torch

from .errors import EptkUsageError

TEMP_SUFFIX = ".tmp"       # a file being written: `.<name>.<random>.tmp` next to it
PARTIAL_SUFFIX = ".partial"  # a folder being filled: `.<name>.<random>.partial` next to it


def umask() -> int:
    """The process umask, read without changing it (/proc on Linux; elsewhere set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode open() gives a new file under the current umask (mkstemp's files are 0600 whatever it is)."""
    return 0o666 & ~umask()


def folder_mode() -> int:
    """The mode mkdir() gives a new folder under the current umask (mkdtemp's are 0700)."""
    return 0o777 & ~umask()


def cache_dir() -> Path:
    """eptk's cache (models, activation statistics, trained VAE priors): EPTK_CACHE, default ~/.cache/eptk."""
    return Path(os.environ.get("EPTK_CACHE", Path.home() / ".cache" / "eptk"))


def file_sha256(path) -> str:
    """A file's sha256 (hex), computed once per process for a given size and modification time."""
    path = Path(path).resolve()
    stat = path.stat()
    return _sha256_of(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_relative(path) -> str:
    """How a run records a folder of eptk's cache: relative to the cache (`stats/<key>`), so the record holds no
    folder of this machine; a folder elsewhere keeps its full path. `in_cache` reads it back."""
    path = Path(path).resolve()
    try:
        return path.relative_to(cache_dir().resolve()).as_posix()
    except ValueError:
        return str(path)


def in_cache(recorded) -> Path:
    """The folder a run recorded with `cache_relative`, under this machine's cache (absolute records as they are)."""
    path = Path(recorded)
    return path if path.is_absolute() else cache_dir() / path


def _atomic_replace(path: Path, write) -> None:
    """Write through a temporary file in the same folder, fsync it, give it the umask's mode, rename it
    over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fchmod(handle.fileno(), file_mode())
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path, data: bytes) -> None:
    _atomic_replace(path, lambda handle: handle.write(data))


def write_chunks_atomic(path, chunks) -> None:
    """Write an iterable of byte strings as one file, atomically: an error raised while iterating leaves no file."""
    def write(handle):
        for chunk in chunks:
            handle.write(chunk)
    _atomic_replace(path, write)


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


# ---- crash points: where a test has the process killed ------------------------------------------

CRASH_AT = "EPTK_CRASH_AT"  # name[:n]: SIGKILL this process the n-th time (default the first) it reaches `name`
_crashes_reached: dict[str, int] = {}


def crash_point(name: str) -> None:
    """A named moment between two writes ("config", "log", "checkpoint", "swap", "posterior", "job-started")
    where the kill tests (tests/test_kill.py) have the process die of SIGKILL, exactly there rather than at a
    timed guess. Without EPTK_CRASH_AT, nothing happens."""
    wanted = os.environ.get(CRASH_AT)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point == name:
        _crashes_reached[name] = _crashes_reached.get(name, 0) + 1
        if _crashes_reached[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def replace_folder(final, fill) -> Path:
    """Fill a fresh temporary folder next to `final` (`fill(folder)`), then put it in place of `final`:
    readers see the old folder or the new one, never a mix. A process killed midway leaves a hidden
    `.<name>.*.partial` folder (`remove_partials` clears them)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=PARTIAL_SUFFIX, dir=final.parent))
    try:
        os.chmod(tmp, folder_mode())
        fill(tmp)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=PARTIAL_SUFFIX, dir=final.parent))
            os.replace(final, old / final.name)   # out of the way in one rename, removed below
            crash_point("swap")                   # neither folder in place
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            crash_point("swap")
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def remove_partials(final) -> None:
    """Remove what earlier, killed writers of `final` left next to it (`replace_folder`'s temporary folders)."""
    final = Path(final)
    if final.parent.is_dir():
        for stale in final.parent.glob(f".{final.name}.*{PARTIAL_SUFFIX}"):
            shutil.rmtree(stale, ignore_errors=True)


def remove_temp_files(folder) -> None:
    """Remove the temporary files and partial folders that killed atomic writes left in `folder` (call it holding
    the folder's lock)."""
    folder = Path(folder)
    if folder.is_dir():
        for stale in folder.glob(f".*{TEMP_SUFFIX}"):
            if stale.is_file():
                stale.unlink(missing_ok=True)
        for stale in folder.glob(f".*{PARTIAL_SUFFIX}"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)


def is_temporary(path) -> bool:
    """Whether `path` is a temporary file or folder of an interrupted atomic write."""
    name = Path(path).name
    return name.startswith(".") and name.endswith((TEMP_SUFFIX, PARTIAL_SUFFIX))


# ---- append-only logs ------------------------------------------------------------------------------

def append_jsonl(path, obj) -> None:
    """Append one JSON line and flush it (`sync_file` makes it durable); a crash may leave a torn last line,
    which `read_jsonl` ignores."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(obj, default=str) + "\n")
        handle.flush()


def sync_file(path) -> None:
    """fsync a file written by appends (before a checkpoint that counts on its rows)."""
    path = Path(path)
    if path.exists():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_jsonl(path) -> list[dict]:
    """Rows of a JSONL log. A torn last line (a writer killed mid-line, or still writing) is ignored; a
    broken line before it is a usage error naming the line."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if any(rest.strip() for rest in lines[number:]):
                raise EptkUsageError(f"{path}:{number} is not valid JSON (a damaged log; only a torn last line "
                                     f"is skipped)") from None
    return rows


# ---- paths ----------------------------------------------------------------------------------------

def check_output_dir(path, option: str, replaced: bool = False) -> Path:
    """Refuse an output folder that cannot be written, before anything is: `path` is a file, a file sits
    where one of its parents should be, or the folder that would receive it is not writable. `replaced`:
    the folder itself is swapped in (`replace_folder`), so its parent must be writable too."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EptkUsageError(f"{option} {path} exists and is not a folder; choose a folder")
    nearest = path if path.exists() else next((p for p in path.absolute().parents if p.exists()), Path("/"))
    if not nearest.is_dir():
        raise EptkUsageError(f"{option} {path}: {nearest} is a file, not a folder; choose another {option}")
    needed = [nearest] + ([path.absolute().parent] if replaced and path.exists() else [])
    for folder in needed:
        if not _writable(folder):
            raise EptkUsageError(f"{option} {path}: no permission to write in {folder}; choose another {option}")
    return path


def check_folder_is_ours(path, option: str, what: str, ours, ignore=None, hint: str | None = None) -> None:
    """Refuse `path` when it is a folder holding files and `ours(path)` does not recognise it as `what`:
    the command would scatter its files among someone else's. The message names a few of those files, so
    the user sees whose folder it is. `ignore(entry)`: entries that do not count (a lock, a partial)."""
    path = Path(path)
    if not path.is_dir() or ours(path):
        return
    entries = sorted(p.name for p in path.iterdir() if not (ignore and ignore(p)))
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise EptkUsageError(f"{option} {path} holds files that are not {what} ({shown}); "
                             f"{hint or 'choose a new or empty folder'}")


def _writable(folder: Path) -> bool:
    effective = os.access in os.supports_effective_ids
    return os.access(folder, os.W_OK | os.X_OK, effective_ids=effective)


def check_input(path, option: str, kind: str = "file") -> Path:
    """An input path that must exist as a `kind` ("file" or "folder")."""
    path = Path(path)
    if not path.exists():
        raise EptkUsageError(f"{option} {path}: not found")
    if kind == "folder" and not path.is_dir():
        raise EptkUsageError(f"{option} {path} is a file; it must be a folder")
    if kind == "file" and not path.is_file():
        raise EptkUsageError(f"{option} {path} is a folder; it must be a file")
    return path


# ---- reading --------------------------------------------------------------------------------------

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
