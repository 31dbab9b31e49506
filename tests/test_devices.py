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


@pytest.mark.parametrize("method,options", [("deep", ["--layers", "all"]), ("prefix", [])])
def test_a_model_on_cpu_and_disk_trains_and_scores_like_one_on_the_cpu(tmp_path, run_cli, method, options):
    (tmp_path / "map.json").write_text(json.dumps(SPREAD))
    mapped = ["--device-map", tmp_path / "map.json", "--offload-dir", tmp_path / "offload"]
    for name, extra in (("plain", ["--device", "cpu"]), ("mapped", mapped)):
        code, _, err = run_cli("tune", *TINY, "--method", method, *options, "--out", tmp_path / name, *extra)
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


def commands(tmp_path, run):
    """Every model-loading command, on the run `run` that the first one writes."""
    return {
        "tune": ["tune", *TINY, "--method", "soft", "--out", run],
        "eval": ["eval", run, "--size", "2"],
        "generate": ["generate", run, "1+1=", "--max-new-tokens", "2"],
        "capture": ["capture", "--model", "tiny", "--examples", "4", "--samples", "8", "--out", tmp_path / "stats",
                    "--quiet"],
        "analyze": ["analyze", run, "--out", tmp_path / "analysis", "--no-plots", "--permutations", "5"],
    }


def loaded_models(monkeypatch):
    """Every model the real loader returns, as (name, device type, dtype) of its weights."""
    import eptk.models

    real, seen = eptk.models.load_model, []

    def spy(name, **kwargs):
        loaded = real(name, **kwargs)
        kinds = {(p.device.type, p.dtype) for p in loaded.model.parameters()}
        assert len(kinds) == 1, kinds  # one device and one dtype for the whole frozen model
        seen.append((name, *kinds.pop()))
        return loaded

    monkeypatch.setattr(eptk.models, "load_model", spy)  # every command loads through it (models.load_frozen)
    return seen


def check_every_command_loads_on(device: str, dtype, tmp_path, run_cli, seen, extra=()):
    run = tmp_path / "run"
    for name, args in commands(tmp_path, run).items():
        seen.clear()
        code, _, err = run_cli(*args, *extra)
        assert code == 0, (name, err)
        assert seen == [("tiny", device, dtype)], (name, seen)
    import eptk
    seen.clear()
    eptk.load_run(run, **({"device": extra[1]} if extra else {}))  # the library call too
    assert seen == [("tiny", device, dtype)]


def test_every_command_loads_its_model_through_the_real_loader_on_the_cpu(tmp_path, run_cli, monkeypatch):
    """Without CUDA, and with --device cpu: the weights the loader returns sit on the CPU in float32."""
    seen = loaded_models(monkeypatch)
    check_every_command_loads_on("cpu", torch.float32, tmp_path / "auto", run_cli, seen)
    check_every_command_loads_on("cpu", torch.float32, tmp_path / "chosen", run_cli, seen, ["--device", "cpu"])


@pytest.mark.gpu
def test_every_command_loads_its_model_on_cuda_in_bfloat16(tmp_path, run_cli, monkeypatch):
    """With CUDA present, every command loads the frozen model onto the GPU in bfloat16; --device cpu keeps it on
    the CPU in float32."""
    seen = loaded_models(monkeypatch)
    check_every_command_loads_on("cuda", torch.bfloat16, tmp_path / "auto", run_cli, seen)
    check_every_command_loads_on("cpu", torch.float32, tmp_path / "chosen", run_cli, seen, ["--device", "cpu"])


def test_the_loader_puts_the_model_where_and_in_the_dtype_it_is_asked():
    """load_model itself: the device (the meta device stands for a GPU here) and the dtype it is given, for every
    kind of model it builds or reads (the tiny model and a saved folder)."""
    from eptk.models import frozen_dtype, load_frozen, load_model

    on_meta = load_frozen("tiny", torch.device("meta"))
    assert {(p.device.type, p.dtype) for p in on_meta.model.parameters()} == {("meta", torch.float32)}
    assert {b.device.type for b in on_meta.model.buffers()} <= {"meta"}
    half = load_model("tiny", dtype=torch.bfloat16)
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    full = load_model("tiny")
    assert all(torch.equal(a.to(torch.bfloat16), b)  # the same random weights, cast
               for a, b in zip(full.model.parameters(), half.model.parameters()))
    assert frozen_dtype(torch.device("cuda")) == torch.bfloat16 and frozen_dtype(torch.device("cpu")) == torch.float32


def test_a_saved_model_loads_in_the_dtype_asked(tmp_path):
    from eptk.models import build_tiny, load_model

    model, tokenizer = build_tiny("llama")
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    for dtype in (torch.bfloat16, torch.float32):
        assert {p.dtype for p in load_model(str(tmp_path / "m"), dtype=dtype).model.parameters()} == {dtype}


@pytest.fixture
def loads(monkeypatch):
    """Every load_model call as (model, device, dtype, device_map), with CUDA pretended present; the model still
    loads on the CPU (this machine's device): what each command asks the loader for."""
    import eptk.models

    real = eptk.models.load_model
    calls = []

    def spy(name, *, device="cpu", dtype=None, device_map=None, **kwargs):
        calls.append((name, str(device), dtype, device_map))
        return real(name, device="cpu", dtype=torch.float32, **kwargs)

    monkeypatch.setattr(eptk.models, "load_model", spy)  # every command loads through it (models.load_frozen)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    return calls


def test_every_command_picks_cuda_when_present_and_loads_its_model_once(tmp_path, run_cli, loads):
    """Each command asks for CUDA in bfloat16 when CUDA is present, and for the CPU in float32 with --device cpu
    (the loading itself is checked above, on the devices this machine has)."""
    run = tmp_path / "run"
    for name, args in commands(tmp_path, run).items():
        loads.clear()
        code, _, err = run_cli(*args)
        assert code == 0, (name, err)
        assert loads == [("tiny", "cuda", torch.bfloat16, None)], (name, loads)
    import eptk
    loads.clear()
    eptk.load_run(run)  # the library call too
    assert loads == [("tiny", "cuda", torch.bfloat16, None)]
    for name, args in commands(tmp_path, run).items():  # --device chooses
        if name == "tune":
            args = ["tune", *TINY, "--method", "soft", "--out", tmp_path / "run2"]
        loads.clear()
        code, _, err = run_cli(*args, "--device", "cpu")
        assert code == 0, (name, err)
        assert loads == [("tiny", "cpu", torch.float32, None)], (name, loads)


def test_a_device_map_is_refused_under_torchrun():
    """Under torchrun every rank holds a whole model (data parallel): a device map would pile them up."""
    from eptk.config import TuneConfig
    from eptk.distributed import Distributed
    from eptk.errors import EptkUsageError
    from eptk.train import tune

    with pytest.raises(EptkUsageError, match="torchrun"):
        tune(TuneConfig(model="tiny", device_map="auto", out="never-written"), dist=Distributed(rank=0, world=2))
