import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_models():
    """One loaded tiny model per family (random weights, char tokenizer)."""
    from eptk.models import load_model
    return {family: load_model(f"tiny:{family}") for family in ("llama", "qwen2", "mistral", "gpt2")}


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
