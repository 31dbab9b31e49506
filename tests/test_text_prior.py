"""`--prior text:<words>` on a prefix's keys/values: before any training, the prompted model's logits are the
frozen model's own with that text (cycled to P tokens) in front of the real tokens, for every registered method
whose prompt is keys/values (prefix, prefix-mlp: its encoder starts at the sample), on a plain Hugging Face
forward of a freshly loaded model."""
import pytest
import torch

from eptk.config import TuneConfig
from eptk.families import model_dims
from eptk.methods import METHODS, build_method
from eptk.models import load_model
from eptk.priors import build_prior
from eptk.prompts import PromptedModel
from eptk.train import prior_context

TEXT = "12+34=46 and 7*8=56"
KV_METHODS = sorted(n for n, cls in METHODS.items()
                    if any(space == "key" for space in cls.patterns.values()))


def test_the_key_value_methods_are_found():
    assert {"prefix", "prefix-mlp"} <= set(KV_METHODS)


@pytest.mark.parametrize("name", KV_METHODS)
@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
@pytest.mark.parametrize("extra", [0, 4])  # P = the text's token count; P longer: the text cycled
def test_text_prior_is_the_text_in_front(tiny_models, name, family, extra):
    loaded = tiny_models[family]
    ids = loaded.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    P = len(ids) + extra
    front = torch.tensor((ids * 2)[:P])
    method = build_method(name, P, model_dims(loaded.model))
    spec = f"text:{TEXT}"
    ctx = prior_context(loaded, TuneConfig(model=f"tiny:{family}", prior=spec))
    init = build_prior(spec, ctx, method.tensor_specs()).sample(torch.Generator().manual_seed(0))
    prompted = PromptedModel(loaded.model, loaded.tokenizer, method, backend="torch",
                             parameters=method.build_parameters(init, seed=0))
    try:
        x = torch.randint(5, 90, (2, 9), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ours = prompted(x, torch.ones_like(x)).logits
            plain = load_model(f"tiny:{family}").model  # the model's own forward, no eptk code in it
            full = torch.cat([front.expand(2, -1), x], dim=1)
            theirs = plain(input_ids=full, attention_mask=torch.ones_like(full)).logits[:, P:]
        err = float((ours - theirs).abs().max() / theirs.abs().max())
        assert err <= 1e-5, err
    finally:
        prompted.remove_hooks()
