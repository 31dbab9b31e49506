"""`eptk export --format peft` and `eptk import-peft`: PEFT loads the export and gives eptk's logits."""
import json

import pytest
import torch

peft = pytest.importorskip("peft")

TUNE = ["--steps", "2", "--batch-size", "2", "--test-size", "2", "--eval-size", "2", "--quiet"]
TEXTS = ["12+34=", "7*8=5", "1"]
TOL = 1e-4


def _tune(out, model="tiny", method="soft", *extra):
    from eptk.cli.main import main
    assert main(["tune", "--model", model, "--method", method, *TUNE, *extra, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft-runs")
    return {
        "soft": _tune(root / "soft", "tiny", "soft"),
        "deep": _tune(root / "deep", "tiny", "deep", "--layers", "all"),
        "prefix": _tune(root / "prefix", "tiny", "prefix"),
        "soft-sink": _tune(root / "soft-sink", "tiny", "soft", "--keep-sink"),  # the sink slot is exported too
        "deep-sink": _tune(root / "deep-sink", "tiny", "deep", "--layers", "all", "--keep-sink"),
    }


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    from eptk.cli.main import main
    root = tmp_path_factory.mktemp("peft-exports")
    out = {}
    for method, run in runs.items():
        assert main(["export", str(run), "--format", "peft", "--out", str(root / method)]) == 0
        out[method] = root / method
    return out


def _batch(tokenizer):
    tokenizer.padding_side = "right"  # PEFT places real tokens at P + index: exact for right padding
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True)
    assert not bool(enc["attention_mask"].all()), "the batch must be padded"
    return enc["input_ids"], enc["attention_mask"]


def _rel(a, b, mask):
    mask = mask.bool()
    return float((a - b)[mask].abs().max() / a[mask].abs().max())


def _peft_logits(model_name, adapter, ids, mask):
    from peft import PeftModel

    from eptk.models import load_model
    base = load_model(model_name).model  # a fresh model: eptk switches the one it wraps to its own attention
    assert base.config._attn_implementation in ("sdpa", "eager")
    wrapped = PeftModel.from_pretrained(base, str(adapter))
    wrapped.eval()
    with torch.no_grad():
        logits = wrapped(input_ids=ids, attention_mask=mask).logits
    return logits[:, -ids.shape[1]:], wrapped


def _eptk_logits(run, ids, mask):
    import eptk
    tuned = eptk.load_run(run)
    with torch.no_grad():
        return tuned(input_ids=ids, attention_mask=mask).logits, tuned


@pytest.mark.parametrize("method", ["soft", "deep", "prefix", "soft-sink", "deep-sink"])
def test_peft_loads_the_export_with_the_same_logits(method, runs, exports):
    from eptk.models import load_model

    config = json.loads((exports[method] / "adapter_config.json").read_text())
    assert config["peft_type"] == ("PROMPT_TUNING" if method.startswith("soft") else "PREFIX_TUNING")
    slots = 21 if method.endswith("-sink") else 20
    assert config["num_virtual_tokens"] == slots and config["task_type"] == "CAUSAL_LM"
    assert sorted(p.name for p in exports[method].iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]

    tokenizer = load_model("tiny").tokenizer
    ids, mask = _batch(tokenizer)
    ours, tuned = _eptk_logits(runs[method], ids, mask)
    theirs, wrapped = _peft_logits("tiny", exports[method], ids, mask)
    assert _rel(ours, theirs, mask) <= TOL
    with torch.no_grad():  # the prompt matters: the comparison is not trivially passing
        plain = load_model("tiny").model(input_ids=ids, attention_mask=mask).logits
    assert _rel(ours, plain, mask) > 1e-2

    if not method.startswith("soft"):  # PEFT's cache holds eptk's slot keys/values, layer by layer (GQA: 2 kv heads)
        cache = wrapped.get_prompt(batch_size=1)
        with torch.no_grad():
            kv = tuned.prefix()
        assert config["num_attention_heads"] == 2 and config["token_dim"] == 2 * 16
        for l, (k, v) in kv.items():
            torch.testing.assert_close(cache.layers[l].keys[0], k, rtol=0, atol=1e-6)
            torch.testing.assert_close(cache.layers[l].values[0], v, rtol=0, atol=1e-6)


@pytest.mark.parametrize("model,method", [("tiny:gpt2", "soft"), ("tiny:gemma3", "soft"), ("tiny:gemma2", "soft"),
                                          ("tiny:gemma2", "deep")])
def test_other_families_export_and_import(model, method, tmp_path, run_cli):
    """PEFT gives eptk's logits on GPT-2 (positions added to inputs_embeds), Gemma-3 and Gemma-2 (√d-scaled
    embedding module, which PEFT's prompt bypasses as eptk's does; Gemma-2's windows and soft-caps), and
    the import gives them back."""
    from eptk.models import load_model

    run = _tune(tmp_path / "run", model, method, *(["--layers", "all"] if method == "deep" else []))
    assert run_cli("export", run, "--out", tmp_path / "adapter")[0] == 0
    code, _, err = run_cli("import-peft", tmp_path / "adapter", "--out", tmp_path / "imported")
    assert code == 0, err
    ids, mask = _batch(load_model(model).tokenizer)
    ours, _ = _eptk_logits(run, ids, mask)
    theirs, _ = _peft_logits(model, tmp_path / "adapter", ids, mask)
    again, _ = _eptk_logits(tmp_path / "imported", ids, mask)
    assert _rel(ours, theirs, mask) <= TOL
    assert _rel(ours, again, mask) <= TOL


def test_deep_without_soft_is_refused(tmp_path, run_cli):
    run = _tune(tmp_path / "run", "tiny", "deep", "--layers", "last:2", "--no-soft")
    code, _, err = run_cli("export", run, "--format", "peft", "--out", tmp_path / "adapter")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "soft" in err and "Traceback" not in err
    assert not (tmp_path / "adapter").exists()


def test_unknown_format_names_the_valid_one(runs, tmp_path, run_cli):
    code, _, err = run_cli("export", runs["soft"], "--format", "onnx", "--out", tmp_path / "x")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "peft" in err


@pytest.mark.parametrize("method", ["soft", "prefix", "deep"])
def test_import_round_trips(method, runs, exports, tmp_path, run_cli):
    from safetensors.torch import load_file

    import eptk
    from eptk.models import load_model

    code, _, err = run_cli("import-peft", exports[method], "--out", tmp_path / "imported")
    assert code == 0, err
    imported = tmp_path / "imported"
    config = json.loads((imported / "config.json").read_text())
    assert config["prior"] == "imported" and config["model"] == "tiny" and config["tokens"] == 20
    assert config["method"] == ("soft" if method == "soft" else "prefix")
    assert not (imported / "eval.json").exists()
    prior, post = load_file(str(imported / "prior.safetensors")), load_file(str(imported / "posterior.safetensors"))
    assert prior.keys() == post.keys() and all(torch.equal(prior[k], post[k]) for k in prior)

    tuned = eptk.load_run(runs[method])
    if method == "deep":  # the slot pass's keys/values, now raw prefix tensors
        with torch.no_grad():
            want = {}
            for l, (k, v) in tuned.prefix().items():
                want[f"prefix.{l}.key"], want[f"prefix.{l}.value"] = k, v
    else:
        want = load_file(str(runs[method] / "posterior.safetensors"))
    assert post.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(post[name], want[name], rtol=0, atol=1e-6 if method == "deep" else 0)

    ids, mask = _batch(load_model("tiny").tokenizer)
    ours, _ = _eptk_logits(runs[method], ids, mask)
    again, _ = _eptk_logits(imported, ids, mask)
    assert _rel(ours, again, mask) <= TOL


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_import_an_adapter_saved_by_peft(kind, tmp_path, run_cli):
    """A prompt trained elsewhere: PEFT's own save_pretrained, imported and run through eptk."""
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    from eptk.models import load_model
    cls = PromptTuningConfig if kind == "prompt" else PrefixTuningConfig
    torch.manual_seed(1)
    model = get_peft_model(load_model("tiny").model, cls(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3))
    with torch.no_grad():
        weight = model.prompt_encoder["default"].embedding.weight
        weight.copy_(torch.randn_like(weight) * (0.5 if kind == "prompt" else 1.0))
    model.save_pretrained(str(tmp_path / "adapter"))
    code, _, err = run_cli("import-peft", tmp_path / "adapter", "--model", "tiny", "--task", "arith",
                           "--out", tmp_path / "run")
    assert code == 0, err
    ids, mask = _batch(load_model("tiny").tokenizer)
    ours, _ = _eptk_logits(tmp_path / "run", ids, mask)
    theirs, _ = _peft_logits("tiny", tmp_path / "adapter", ids, mask)
    assert _rel(ours, theirs, mask) <= TOL


def test_import_refuses_what_is_not_an_adapter(runs, tmp_path, run_cli):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", runs["soft"], tmp_path / "missing"):
        code, _, err = run_cli("import-peft", folder, "--out", tmp_path / "out")
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and "adapter" in err
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "task_type": "CAUSAL_LM"}))
    code, _, err = run_cli("import-peft", lora, "--out", tmp_path / "out")
    assert code == 2 and "PROMPT_TUNING" in err and "PREFIX_TUNING" in err
    assert not (tmp_path / "out").exists()
