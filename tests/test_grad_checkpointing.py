"""`--grad-checkpointing`: the decoder layers recompute in backward, and nothing a run computes changes.

Tolerance: 1e-6 relative. Recomputation repeats the same float32 operations on the same inputs, so the
saved tensors, the gradients and the posterior agree to the last bit or, at most, by a BLAS blocking
that memory alignment changes; a recomputation outside the pass state (the classic pitfall) moves
them by more than 1e-4 or fails outright.
"""
import pytest
import torch
from safetensors.torch import load_file

from eptk.attention import PackedPass, SlotPass, TokenPass, active, current_pass
from eptk.checkpointing import check_checkpointable, checkpoint_in_pass
from eptk.errors import EptkUsageError
from test_two_pass import PACKED, batch, make_prompted

TOL = 1e-6
CASES = [("soft", "all"), ("deep", "1,2"), ("prefix", "all")]


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def prompt_gradients(prompted, left):
    """Prompt gradients of the answer loss, and how often the last decoder layer's attention ran. (Counted
    inside the layer: transformers 5.2x checkpoints the layer's forward, so the layer's own hooks run once.)"""
    calls = []
    attention = prompted.family.attention_modules(prompted.model)[-1]
    handle = attention.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        ids, mask = batch(left=left)
        prompted(ids, mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
    finally:
        handle.remove()
    return {n: p.grad.clone() for n, p in prompted.parameters_by_name().items()}, len(calls)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gpt2"])
@pytest.mark.parametrize("method,layers", CASES)
@PACKED
def test_gradients_equal_without_checkpointing(tiny_models, family, method, layers, packed):
    """Every method, GQA (llama 4/2 heads, mistral 4/1), left and right padding, deep's hooks mid-model, the
    passes packed in one forward or apart."""
    for left in (False, True):
        results = []
        for grad_checkpointing in (False, True):
            prompted = make_prompted(tiny_models[family], method, layers, packed=packed)
            prompted.grad_checkpointing = grad_checkpointing
            try:
                results.append(prompt_gradients(prompted, left))
            finally:
                prompted.remove_hooks()
        (plain, plain_calls), (ckpt, ckpt_calls) = results
        assert ckpt_calls == 2 * plain_calls, "the layers did not recompute in backward"
        for name in plain:
            assert rel_err(ckpt[name], plain[name]) <= TOL, f"{family} {method} left={left} {name}"


def test_layers_return_to_eval_mode(tiny_models):
    """Checkpointing flips the decoder layers' own flags for the pass only; evaluation afterwards is plain."""
    prompted = make_prompted(tiny_models["llama"], "deep", "1,2")
    prompted.grad_checkpointing = True
    try:
        prompt_gradients(prompted, left=False)
        for module in prompted.model.modules():
            assert not module.training
            assert not module.__dict__.get("gradient_checkpointing", False)
    finally:
        prompted.remove_hooks()


@pytest.mark.parametrize("state", [SlotPass(owner="me"), TokenPass(prefix={0: "kv"}, record_mass=True),
                                   PackedPass(slots=2, batch=1, length=3, owner="me")],
                         ids=["slot", "token", "packed"])
def test_recompute_runs_in_the_pass_it_was_recorded_in(state):
    """The backward runs outside the pass's context; the recomputation must see the same pass, without
    recording its slot keys/values or prefix mass a second time (the packed pass records nothing)."""
    seen = []

    def layer(x):
        seen.append(current_pass())
        return (x * 2).sin()

    x = torch.randn(4, requires_grad=True)
    with active(state):
        y = checkpoint_in_pass(layer, x)
    assert current_pass() is None
    y.sum().backward()
    assert len(seen) == 2 and seen[0] is state
    replay = seen[1]
    assert type(replay) is type(state) and (replay is state) == isinstance(state, PackedPass)
    if isinstance(state, SlotPass):
        assert replay.owner == "me" and replay.kv is not state.kv
    elif isinstance(state, TokenPass):
        assert replay.prefix is state.prefix and not replay.record_mass
    assert torch.allclose(x.grad, 2 * (2 * x.detach()).cos())


def test_refuses_layers_without_checkpointing_support():
    with pytest.raises(EptkUsageError, match="grad-checkpointing"):
        check_checkpointable(torch.nn.ModuleList([torch.nn.Linear(2, 2)]))


@pytest.mark.parametrize("method", ["soft", "deep", "prefix"])
def test_posterior_equal_with_and_without(tmp_path, method):
    """A few training steps of `eptk tune` give the same posterior; config.json records the setting."""
    from eptk.config import TuneConfig
    from eptk.runs import RunDir
    from eptk.train import tune

    posteriors = []
    for grad_checkpointing in (False, True):
        cfg = TuneConfig(model="tiny", method=method, options={"layers": "last:2"} if method == "deep" else {}, tokens=4, steps=3, batch_size=4, warmup=1,
                         eval_every=0, eval_size=4, test_size=4, train_size=64, checkpoint_every=0,
                         grad_checkpointing=grad_checkpointing, out=str(tmp_path / f"{method}-{grad_checkpointing}"))
        out = tune(cfg, progress=False)
        assert RunDir(out).config()["grad_checkpointing"] is grad_checkpointing
        posteriors.append(load_file(str(out / "posterior.safetensors")))
    plain, ckpt = posteriors
    moved = load_file(str(out / "prior.safetensors"))
    for name in plain:
        assert not torch.equal(plain[name], moved[name]), "training did not move the prompt"
        assert rel_err(ckpt[name], plain[name]) <= TOL, name
