import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def triton_mode(request, monkeypatch):
    """The Triton mode of one test: `interpreter` tests run the kernels through the interpreter on
    CPU tensors, `gpu` tests compiled on CUDA (skipped without a device). Per test, not per
    process, so one run holds both; eptk.kernels builds the kernels for whichever mode is on."""
    if request.node.get_closest_marker("interpreter"):
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    elif request.node.get_closest_marker("gpu"):
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture(scope="session")
def tiny_models():
    """One loaded tiny model per family (random weights, char tokenizer)."""
    from eptk.models import load_model
    from eptk.models import TINY_FAMILIES
    return {family: load_model(f"tiny:{family}") for family in TINY_FAMILIES}


@pytest.fixture
def run_cli(tmp_path):
    """Run the eptk CLI in-process; returns (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    def run(*args):
        import io
        from contextlib import redirect_stderr, redirect_stdout
        from eptk.cli.main import main
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(map(str, args)))
        return code, out.getvalue(), err.getvalue()
    return run


def gemma3_installed() -> bool:
    """Gemma-3-270M's packages (`make gemma`): CI's environments lack them, so its tests skip there."""
    from eptk.packaged import PACKAGED
    return PACKAGED["gemma3-270m"].installed()


@pytest.fixture(scope="session")
def gemma3():
    """The real Gemma-3-270M, loaded once (the first load ever assembles and dequantizes it: ~4 min)."""
    if not gemma3_installed():
        pytest.skip("needs Gemma-3-270M's packages (make gemma)")
    from eptk.models import load_model
    return load_model("gemma3-270m")


@pytest.fixture(scope="session")
def gemma3_vocabulary():
    """The pieces, scores and token types of Gemma-3-270M's GGUF (~30 s to read)."""
    if not gemma3_installed():
        pytest.skip("needs Gemma-3-270M's packages (make gemma)")
    from eptk.gguf_tokenizer import read_vocabulary
    from eptk.packaged import PACKAGED
    return read_vocabulary(PACKAGED["gemma3-270m"].gguf())


class Artifacts(list):
    """Files a test keeps for a person to look at (screenshots), in one folder under the pytest temporary folder."""
    def __init__(self, folder):
        super().__init__()
        self.folder = folder


ARTIFACTS = pytest.StashKey[Artifacts]()


@pytest.fixture(scope="session")
def browser_artifacts(tmp_path_factory, request):
    """Where the browser tests keep their screenshots; the end of the run names every file kept."""
    kept = Artifacts(tmp_path_factory.mktemp("screenshots"))
    request.config.stash[ARTIFACTS] = kept
    return kept


def pytest_terminal_summary(terminalreporter, config):
    kept = config.stash.get(ARTIFACTS, None)
    if kept:
        terminalreporter.write_sep("-", f"{len(kept)} screenshots kept in {kept.folder}")
        for path in kept:
            terminalreporter.write_line(str(path))
