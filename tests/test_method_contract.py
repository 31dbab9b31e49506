"""The contract every registered method keeps, driven by the registry: a new file under eptk/methods/ gets every
test here by existing, with its default options but for those it declares in `contract_options` (valid on
every tiny model), and none of these tests names a method.

- its options: checked before anything is written (a bad value of each option and an unknown one: exit 2, one
  line, no run directory), and none takes the name of a run setting (they share config.json's top level);
- its parameters start at the prior's sample (P = 1, which every parameterization here reaches exactly);
- the two-pass forward equals the full forward over [slots ; tokens] on every tiny family, both paddings, and
  the parameters' gradients match too;
- a trained run: load_run gives the logits of the parameters it saved; a run stopped at a checkpoint and resumed
  ends bitwise equal to one that ran straight through; `eptk analyze` reads it;
- PEFT, for a method that exports: PEFT loads the adapter and gives eptk's logits; the adapter imports back to a
  run with the same logits (1e-5); a reparameterized method's saved parameters, loaded into PEFT's own
  training-mode encoder of the exported type, produce the exported prompt (the materialize step and the PEFT
  mapping checked against PEFT's code).
"""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from eptk.config import TuneConfig
from eptk.families import model_dims
from eptk.loading import run_logits
from eptk.methods import METHODS, build_method
from eptk.models import TINY_FAMILIES
from eptk.options import as_arguments, fields_of, flag, kind_of
from eptk.prompts import PromptedModel
from reference_forward import full_forward

NAMES = sorted(METHODS)
TOL = 1e-4
TUNE = ["--model", "tiny", "--batch-size", "2", "--eval-size", "2", "--test-size", "2", "--train-size", "16",
        "--tokens", "3", "--lr", "0.05", "--warmup", "1", "--checkpoint-every", "2", "--quiet"]


def prompted_model(loaded, name, tokens=3, seed=0):
    """`name` with its contract options, its parameters built from a random prompt (0.5 x N(0,1))."""
    method = build_method(name, tokens, model_dims(loaded.model), METHODS[name].contract_options)
    gen = torch.Generator().manual_seed(seed)
    init = {k: torch.randn(s.shape, generator=gen) * 0.5 for k, s in method.tensor_specs().items()}
    parameters = method.build_parameters(init, seed=seed)
    return PromptedModel(loaded.model, loaded.tokenizer, method, backend="torch", parameters=parameters), init


def batch(left):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 90, (3, 11), generator=gen)
    mask = torch.ones_like(ids)
    if left:
        mask[1, :4], mask[2, :1] = 0, 0
    else:
        mask[1, 7:], mask[2, 10:] = 0, 0
    return ids, mask


def rel_err(a, b, mask):
    m = mask.bool()
    return float((a - b).abs()[m].max() / b[m].abs().max())


# ---- options ------------------------------------------------------------------------------------

def bad_values(f):
    """Values the declaration of option `f` refuses."""
    meta, kind = f.metadata, kind_of(f)
    if kind == "bool":
        return ["maybe"]  # --flag=maybe: a bool option takes no value
    out = []
    if kind in ("int", "float"):
        out.append("x")
        if meta["low"] is not None:
            out.append(str(meta["low"] - 1))
        if meta["high"] is not None:
            out.append(str(meta["high"] + 1))
    if meta["choices"] is not None:
        out.append("not-a-choice")
    if meta["check"] is not None:
        out.append("not:a:spec")
    return out


@pytest.mark.parametrize("name", NAMES)
def test_options_are_checked_before_anything_is_written(name, tmp_path, run_cli):
    options = fields_of(METHODS[name].Options)
    assert not set(options) & {f.name for f in dataclasses.fields(TuneConfig)}, \
        "a method option shares config.json's top level with the run settings"
    cases = [["--not-an-option", "1"]]
    for option, f in options.items():
        cases += [[f"{flag(option)}={value}"] for value in bad_values(f)]
    for words in cases:
        out = tmp_path / "run"
        code, _, err = run_cli("tune", *TUNE, "--method", name, "--steps", "1", *words, "--out", out)
        assert code == 2, (words, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (words, err)
        assert not out.exists(), words


# ---- parameters and the two passes ----------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_parameters_start_at_the_priors_sample(tiny_models, name):
    prompted, init = prompted_model(tiny_models["llama"], name, tokens=1)
    try:
        start = prompted.tensors()
        assert start.keys() == init.keys()
        for k in init:
            torch.testing.assert_close(start[k], init[k], rtol=1e-4, atol=1e-5, msg=f"{name} {k}")
            torch.testing.assert_close(prompted.prompt_tensor(k).detach().cpu(), start[k], rtol=0, atol=1e-6)
    finally:
        prompted.remove_hooks()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("left", [False, True])
def test_two_pass_equals_full_forward(tiny_models, name, family, left):
    prompted, _ = prompted_model(tiny_models[family], name)
    try:
        ids, mask = batch(left)
        with torch.no_grad():
            assert rel_err(prompted(ids, mask).logits, full_forward(prompted, ids, mask), mask) <= TOL
    finally:
        prompted.remove_hooks()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("family", ["llama", "gemma2"])
@pytest.mark.parametrize("left", [False, True])
def test_gradients_match_full_forward(tiny_models, name, family, left):
    prompted, _ = prompted_model(tiny_models[family], name)
    try:
        ids, mask = batch(left)
        first = mask.cumsum(-1) == 1
        labels = ids.masked_fill((mask == 0) | first, -100)
        prompted(ids, mask, labels=labels).loss.backward()
        params = prompted.parameters_by_name()
        two = {n: p.grad.clone() for n, p in params.items()}
        prompted.zero_grad()
        logits = full_forward(prompted, ids, mask, keep_graph=True)
        keep = labels[:, 1:] != -100
        torch.nn.functional.cross_entropy(logits[:, :-1][keep], labels[:, 1:][keep]).backward()
        for n, p in params.items():
            scale = float(p.grad.abs().max())
            assert scale > 0, f"{name} {n}: no gradient"
            assert float((two[n] - p.grad).abs().max()) / scale < 1e-4, f"{name} {family} left={left} {n}"
    finally:
        prompted.remove_hooks()


# ---- trained runs ----------------------------------------------------------------------------------

def tune(out, name, *extra):
    from eptk.cli.main import main
    words = as_arguments(METHODS[name].contract_options)
    assert main(["tune", *TUNE, "--method", name, *extra, *words, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Per method: `four` (4 steps straight) and `resumed` (2 steps, then --resume --steps 4); constant rate after
    a one-step warm-up, so the two follow one schedule."""
    root, made = tmp_path_factory.mktemp("contract"), {}

    def get(name):
        if name not in made:
            four = tune(root / f"{name}-four", name, "--steps", "4", "--schedule", "constant")
            cut = tune(root / f"{name}-resumed", name, "--steps", "2", "--schedule", "constant")
            tune(cut, name, "--steps", "4", "--schedule", "constant", "--resume", str(cut))
            made[name] = {"four": four, "resumed": cut}
        return made[name]
    return get


def logits_of(run, ids, mask):
    return run_logits(run, ids, mask, backend="torch")


@pytest.mark.parametrize("name", NAMES)
def test_a_resumed_run_equals_one_run_straight_through(name, runs):
    four, resumed = runs(name)["four"], runs(name)["resumed"]
    for file in ("posterior", "parameters"):
        if (four / f"{file}.safetensors").exists() or (resumed / f"{file}.safetensors").exists():
            a, b = load_file(str(four / f"{file}.safetensors")), load_file(str(resumed / f"{file}.safetensors"))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} {file}"


@pytest.mark.parametrize("name", NAMES)
def test_load_run_gives_the_saved_parameters_logits(name, runs, tiny_models):
    """The posterior (the materialized prompt load_run reads) is what the saved parameters materialize."""
    run = runs(name)["four"]
    config = json.loads((run / "config.json").read_text())
    loaded = tiny_models["llama"]
    prompted, _ = prompted_model(loaded, name)
    try:
        saved = run / "parameters.safetensors"
        if saved.exists():
            prompted.load_parameters(load_file(str(saved)))
        else:
            prompted.load_parameters(load_file(str(run / "posterior.safetensors")))
        assert config["method"] == name
        ids, mask = batch(False)
        with torch.no_grad():
            ours = prompted(ids, mask).logits
        assert rel_err(logits_of(run, ids, mask), ours, mask) <= 1e-5
    finally:
        prompted.remove_hooks()


@pytest.mark.parametrize("name", NAMES)
def test_analyze_reads_it(name, runs, tmp_path, run_cli):
    code, _, err = run_cli("analyze", runs(name)["four"], "--out", tmp_path / "analysis", "--no-plots")
    assert code == 0, err
    rows = json.loads((tmp_path / "analysis" / "summary.json").read_text())
    rows = rows if isinstance(rows, list) else rows.get("runs", rows.get("rows"))
    assert rows and {r["method"] for r in rows} == {name}


# ---- PEFT ------------------------------------------------------------------------------------------

EXPORTABLE = [n for n in NAMES if METHODS[n].exportable]


def peft_encoder(adapter: dict):
    """PEFT's own training-mode prompt encoder for an adapter config."""
    from peft import PeftConfig
    from peft.tuners.p_tuning import PromptEncoder
    from peft.tuners.prefix_tuning import PrefixEncoder
    from peft.tuners.prompt_tuning import PromptEmbedding

    fields = dict(adapter, inference_mode=False)
    config = PeftConfig.from_peft_type(**{k: v for k, v in fields.items() if k not in ("peft_version",)})
    if adapter["peft_type"] == "P_TUNING":
        return PromptEncoder(config)
    if adapter["peft_type"] == "PREFIX_TUNING":
        return PrefixEncoder(config)
    return PromptEmbedding(config, torch.nn.Embedding(8, adapter["token_dim"]))


@pytest.mark.parametrize("name", EXPORTABLE)
def test_peft_round_trip(name, runs, tmp_path, run_cli):
    pytest.importorskip("peft")
    from peft import PeftModel

    from eptk.models import load_model

    run = runs(name)["four"]
    code, _, err = run_cli("export", run, "--format", "peft", "--out", tmp_path / "adapter")
    assert code == 0, err
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    weight = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))["prompt_embeddings"]

    tokenizer = load_model("tiny").tokenizer
    tokenizer.padding_side = "right"  # PEFT places real tokens at P + index: exact for right padding
    enc = tokenizer(["12+34=", "7*8=5", "1"], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    ours = logits_of(run, ids, mask)
    wrapped = PeftModel.from_pretrained(load_model("tiny").model, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        theirs = wrapped(input_ids=ids, attention_mask=mask).logits[:, -ids.shape[1]:]
    assert rel_err(theirs, ours, mask) <= TOL, "PEFT's logits"

    code, _, err = run_cli("import-peft", tmp_path / "adapter", "--task", "arith", "--out", tmp_path / "imported")
    assert code == 0, err
    assert rel_err(logits_of(tmp_path / "imported", ids, mask), ours, mask) <= 1e-5, "imported back"

    saved = run / "parameters.safetensors"
    if METHODS[name].peft_parameters:  # PEFT's own encoder, given the saved parameters, makes the export
        encoder = peft_encoder(adapter)
        encoder.load_state_dict(load_file(str(saved)), strict=True)
        with torch.no_grad():
            made = encoder(torch.arange(weight.shape[0]).unsqueeze(0))[0]
        torch.testing.assert_close(made, weight, rtol=1e-5, atol=1e-6)
