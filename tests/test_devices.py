"""Devices: a model dispatched over the CPU and the disk (--device-map FILE.json, --offload-dir) trains to the
posterior and the scores of an undispatched run, only the prompt moving; every model-loading command runs on
CUDA when present (--device to choose) and loads its model once."""
import json

import pytest
import torch
from safetensors.torch import load_file

TINY = ["--model", "tiny", "--task", "arith", "--tokens", "4", "--steps", "3", "--batch-size", "4", "--eval-size", "4",
        "--test-size", "4", "--train-size", "40", "--eval-every", "0", "--checkpoint-every", "0", "--quiet"]
# Layers 0 and 2 stay on the CPU, 1 and 3 are offloaded to the disk and loaded as they run.
SPREAD = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "cpu",
          "model.layers.3": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


@pytest.mark.parametrize("method", ["deep", "prefix"])
def test_a_model_on_cpu_and_disk_trains_and_scores_like_one_on_the_cpu(tmp_path, run_cli, method):
    (tmp_path / "map.json").write_text(json.dumps(SPREAD))
    mapped = ["--device-map", tmp_path / "map.json", "--offload-dir", tmp_path / "offload"]
    for name, extra in (("plain", ["--device", "cpu"]), ("mapped", mapped)):
        code, _, err = run_cli("tune", *TINY, "--method", method, "--layers", "all", "--out", tmp_path / name, *extra)
        assert code == 0, err
    assert (tmp_path / "offload" / "model.layers.1.mlp.up_proj.weight.dat").is_file()  # really on the disk
    plain, mapped_post = (load_file(tmp_path / n / "posterior.safetensors") for n in ("plain", "mapped"))
    assert plain.keys() == mapped_post.keys()
    for name in plain:
        assert float((plain[name] - mapped_post[name]).abs().max()) <= 1e-6, name
    scores = [json.loads((tmp_path / n / "eval.json").read_text()) for n in ("plain", "mapped")]
    for which in ("baseline", "tuned"):
        assert scores[0][which]["score"] == scores[1][which]["score"]
        assert scores[0][which]["loss"] == pytest.approx(scores[1][which]["loss"], abs=1e-6)
    # eptk eval of the plain run on the dispatched model prints the plain scores
    outputs = []
    for extra in (["--device", "cpu"], mapped):
        code, out, err = run_cli("eval", tmp_path / "plain", "--size", "4", *extra)
        assert code == 0, err
        outputs.append(json.loads(out))
    assert outputs[0]["tuned"]["score"] == outputs[1]["tuned"]["score"]
    assert outputs[0]["tuned"]["loss"] == pytest.approx(outputs[1]["tuned"]["loss"], abs=1e-6)


@pytest.fixture
def loads(monkeypatch):
    """Every load_model call as (model, device, device_map), with CUDA pretended present; the model still
    loads on the CPU (this machine's device)."""
    import eptk.models

    real = eptk.models.load_model
    calls = []

    def spy(name, *, device="cpu", dtype=None, device_map=None, **kwargs):
        calls.append((name, str(device), device_map))
        return real(name, device="cpu", dtype=torch.float32, **kwargs)

    monkeypatch.setattr(eptk.models, "load_model", spy)  # every command loads through it (models.load_frozen)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    return calls


def test_every_command_picks_cuda_when_present_and_loads_its_model_once(tmp_path, run_cli, loads):
    run = tmp_path / "run"
    commands = {
        "tune": ["tune", *TINY, "--method", "soft", "--out", run],
        "eval": ["eval", run, "--size", "2"],
        "generate": ["generate", run, "1+1=", "--max-new-tokens", "2"],
        "capture": ["capture", "--model", "tiny", "--examples", "4", "--samples", "8", "--out", tmp_path / "stats",
                    "--quiet"],
        "analyze": ["analyze", run, "--out", tmp_path / "analysis", "--no-plots", "--permutations", "5"],
    }
    for name, args in commands.items():
        loads.clear()
        code, _, err = run_cli(*args)
        assert code == 0, (name, err)
        assert loads == [("tiny", "cuda", None)], (name, loads)
    import eptk
    loads.clear()
    eptk.load_run(run)  # the library call too
    assert loads == [("tiny", "cuda", None)]
    for name, args in commands.items():  # --device chooses
        if name == "tune":
            args = ["tune", *TINY, "--method", "soft", "--out", tmp_path / "run2"]
        loads.clear()
        code, _, err = run_cli(*args, "--device", "cpu")
        assert code == 0, (name, err)
        assert loads == [("tiny", "cpu", None)], (name, loads)


def test_a_device_map_is_refused_under_torchrun():
    """Under torchrun every rank holds a whole model (data parallel): a device map would pile them up."""
    from eptk.config import TuneConfig
    from eptk.distributed import Distributed
    from eptk.errors import EptkUsageError
    from eptk.train import tune

    with pytest.raises(EptkUsageError, match="torchrun"):
        tune(TuneConfig(model="tiny", device_map="auto", out="never-written"), dist=Distributed(rank=0, world=2))
