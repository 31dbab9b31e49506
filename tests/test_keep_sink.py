"""--keep-sink: one extra first slot left to the model (its BOS, else EOS, token), never trained and never replaced.
The two passes equal the full forward with that slot; the per-slot prefix mass equals the attention probabilities
of the full forward; the option is refused where it cannot apply; older runs read as without it."""
import json

import pytest
import torch

from eptk.config import TuneConfig
from eptk.errors import EptkUsageError
from eptk.families import decoder_layers, model_dims
from eptk.methods import build_method, get_method, method_from_config
from eptk.options import fields_of
from eptk.prompts import PromptedModel
from reference_forward import full_forward
from test_two_pass import PACKED, TOL, WINDOWED, batch, rel_err


def sink_prompted(loaded, method="deep", layers="all", keep_sink=True, tokens=5, seed=0, packed=True):
    dims = model_dims(loaded.model)
    declared = fields_of(get_method(method).Options)  # only the options this method has (prefix: none)
    options = {k: v for k, v in {"keep_sink": keep_sink, "layers": layers}.items() if k in declared}
    prompt = build_method(method, tokens, dims, options)
    gen = torch.Generator().manual_seed(seed)
    init = {k: torch.randn(s.shape, generator=gen) * 0.5 for k, s in prompt.tensor_specs().items()}
    prompted = PromptedModel(loaded.model, loaded.tokenizer, prompt, init, backend="torch")
    prompted.pack_passes = packed
    return prompted


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gpt2"])
@pytest.mark.parametrize("method,layers", [("soft", "all"), ("deep", "all"), ("deep", "last:1")])
@pytest.mark.parametrize("left", [False, True])
@PACKED
def test_two_pass_equals_full_forward_with_the_sink_slot(tiny_models, family, method, layers, left, packed):
    prompted = sink_prompted(tiny_models[family], method, layers, packed=packed)
    try:
        assert prompted.slots == prompted.tokens + 1 and prompted.sink_token_id == 1  # tiny: <bos>
        assert all(tuple(p.shape) == (5, model_dims(prompted.model)["hidden_size"]) for p in prompted.parameters_by_name().values())
        ids, mask = batch(left=left)
        with torch.no_grad():
            two_pass = prompted(ids, mask).logits
            full = full_forward(prompted, ids, mask)
            without = full_forward(sink_prompted(tiny_models[family], method, layers, keep_sink=False), ids, mask)
        assert rel_err(two_pass, full, mask) <= TOL, f"{family} {method} {layers} left={left}"
        # (unless Mistral's 6-position window hides the sink from every token and deep replaces every slot state)
        if not (family in WINDOWED and (method, layers) == ("deep", "all")):
            assert rel_err(two_pass, without, mask) > 1e-3, "the sink slot changes the function"
    finally:
        prompted.remove_hooks()


@PACKED
def test_gradients_match_the_full_forward_and_reach_only_the_prompt(tiny_models, packed):
    prompted = sink_prompted(tiny_models["llama"], "deep", "1,3", packed=packed)
    try:
        ids, mask = batch()
        labels = ids.masked_fill(mask == 0, -100)
        prompted(ids, mask, labels=labels).loss.backward()
        two = {n: p.grad.clone() for n, p in prompted.parameters_by_name().items()}
        prompted.zero_grad()
        logits = full_forward(prompted, ids, mask, keep_graph=True)
        where = labels[:, 1:] != -100
        torch.nn.functional.cross_entropy(logits[:, :-1][where], labels[:, 1:][where]).backward()
        for n, p in prompted.parameters_by_name().items():
            assert float((two[n] - p.grad).abs().max() / p.grad.abs().max()) < 1e-4, n
        assert prompted.model.get_input_embeddings().weight.grad is None  # the sink's embedding is not trained
    finally:
        prompted.remove_hooks()


def test_slot_pass_keeps_row_0_the_models_own(tiny_models):
    """Layer 0 receives the sink token's embedding in row 0; every deep layer passes row 0 on as it came and
    puts its vectors in rows 1..P."""
    loaded = tiny_models["llama"]
    prompted = sink_prompted(loaded, "deep", "all")
    seen, handles = {}, []
    layers = decoder_layers(loaded.model)

    def grab(tag, l):
        def hook(module, args, kwargs):
            seen[(tag, l)] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        return hook
    try:
        for l, layer in enumerate(layers):  # before and after the method's own pre-hook
            handles.append(layer.register_forward_pre_hook(grab("in", l), with_kwargs=True, prepend=True))
            handles.append(layer.register_forward_pre_hook(grab("out", l), with_kwargs=True))
        with torch.no_grad():
            prompted.prefix()
        bos = loaded.model.get_input_embeddings().weight[1]
        torch.testing.assert_close(seen[("out", 0)][0, 0], bos, rtol=0, atol=0)
        torch.testing.assert_close(seen[("out", 0)][0, 1:], prompted.prompt_tensor("soft").detach(), rtol=0, atol=0)
        for l in range(1, len(layers)):
            assert seen[("out", l)].shape[1] == 6
            torch.testing.assert_close(seen[("out", l)][0, 0], seen[("in", l)][0, 0], rtol=0, atol=0)
            torch.testing.assert_close(seen[("out", l)][0, 1:], prompted.prompt_tensor(f"deep.{l}").detach(), rtol=0, atol=0)
            assert not torch.equal(seen[("in", l)][0, 0], bos)  # it is the model's state, carried up the layers
    finally:
        for h in handles:
            h.remove()
        prompted.remove_hooks()


def full_forward_masses(prompted, ids, mask) -> dict:
    """layer -> [Hq] attention mass of the full forward over [slots ; tokens] on all slots, on slot 0 and on
    slots 1.., each averaged over the real query rows (padding rows excluded)."""
    with torch.no_grad():
        _, attn = full_forward(prompted, ids, mask, attn="eager", attentions=True)
    S, real = prompted.slots, mask.bool()
    masses = {}
    for l, probs in enumerate(attn):
        queries = probs[:, :, S:]                                              # [B,H,T,S+T]
        masses[l] = [(queries[..., cols].sum(-1) * real[:, None]).sum((0, 2)) / real.sum()
                     for cols in (slice(0, S), slice(0, 1), slice(1, S))]
    return masses


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2"])  # Mistral: windows; Gemma-2: soft-caps too
@pytest.mark.parametrize("keep_sink", [False, True])
@pytest.mark.parametrize("left", [False, True])
def test_slot_mass_equals_the_full_forward_attention(tiny_models, family, keep_sink, left):
    """prefix_mass (all slots) and prefix_mass_first_slot (slot 0) are the attention probabilities of the full
    forward on those key columns, averaged over real query rows (padding rows excluded): with sliding windows
    that hide the first slots from later tokens, and with Gemma-2's attention soft-cap."""
    prompted = sink_prompted(tiny_models[family], "deep", "last:2", keep_sink=keep_sink)
    try:
        ids, mask = batch(left=left)
        total, first = prompted.slot_mass(ids, mask)
        for l, (want_total, want_first, _) in full_forward_masses(prompted, ids, mask).items():
            torch.testing.assert_close(total[l].float(), want_total.float(), rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(first[l].float(), want_first.float(), rtol=1e-4, atol=1e-6)
    finally:
        prompted.remove_hooks()


def test_eval_records_the_full_forward_masses(tiny_models):
    """eval.json's prefix_mass, prefix_mass_first_slot and prefix_mass_other_slots are the full forward's
    attention on all slots, on the sink and on the trained slots, over the evaluated examples."""
    from eptk.batches import encode_batch
    from eptk.evaluate import evaluate
    from eptk.tasks import load_task

    prompted = sink_prompted(tiny_models["llama"], "deep", "last:2")
    try:
        task = load_task("arith")
        examples = task.examples("test", 3)
        result = evaluate(prompted, task, examples)
        encoded = encode_batch(prompted.tokenizer, examples)
        for l, masses in full_forward_masses(prompted, encoded["input_ids"], encoded["attention_mask"]).items():
            for key, want in zip(("prefix_mass", "prefix_mass_first_slot", "prefix_mass_other_slots"), masses):
                torch.testing.assert_close(torch.tensor(result[key][f"layer{l}"]), want.float(), rtol=0, atol=2e-6,
                                           msg=lambda m: f"{key} layer {l}: {m}")
    finally:
        prompted.remove_hooks()


def test_tune_records_the_sink_and_eval_splits_the_mass(tmp_path, run_cli):
    out = tmp_path / "run"
    code, _, err = run_cli("tune", "--model", "tiny", "--method", "deep", "--layers", "all", "--keep-sink",
                           "--tokens", "4", "--steps", "2", "--batch-size", "2", "--eval-size", "2", "--test-size", "2",
                           "--quiet", "--out", out)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["keep_sink"] is True and config["sink_token_id"] == 1
    from safetensors.torch import load_file
    post = load_file(str(out / "posterior.safetensors"))
    assert all(tuple(t.shape) == (4, 64) for t in post.values())  # P trainable rows, the run format's shape
    ev = json.loads((out / "eval.json").read_text())
    for l in range(4):  # the values themselves are checked against the full forward above
        total, first = (ev[k][f"layer{l}"] for k in ("prefix_mass", "prefix_mass_first_slot"))
        assert len(ev["prefix_mass_other_slots"][f"layer{l}"]) == len(total) == len(first) == 4  # one per head
        assert all(0 <= f <= t + 1e-6 for t, f in zip(total, first))
    import eptk
    tuned = eptk.load_run(out)
    assert tuned.slots == 5 and tuned.method.keep_sink


@pytest.mark.parametrize("args,message", [(["--method", "prefix"], "has no option --keep-sink"),
                                          (["--method", "deep", "--no-soft"], "drop --no-soft")])
def test_keep_sink_is_refused_where_it_cannot_apply(tmp_path, run_cli, args, message):
    out = tmp_path / "run"
    code, _, err = run_cli("tune", "--model", "tiny", *args, "--keep-sink", "--steps", "1", "--quiet", "--out", out)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "soft, deep" in err or "no-soft" in err
    assert not out.exists()
    options = {"keep_sink": True, **({"soft": False} if "--no-soft" in args else {})}
    with pytest.raises(EptkUsageError):
        TuneConfig(method=args[1], options=options).validate()


def test_runs_without_the_key_read_as_no_sink():
    old = {"method": "deep", "tokens": 3, "layers": [2], "soft": True, "hidden_size": 64, "num_layers": 4,
           "num_heads": 4, "num_kv_heads": 2, "head_dim": 16}
    assert TuneConfig.from_dict(old).method_options().keep_sink is False
    method = method_from_config(old)
    assert method.keep_sink is False and method.slots == 3
    assert method_from_config(dict(old, keep_sink=True)).slots == 4
