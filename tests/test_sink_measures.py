"""The sink measure (claim 6): the unprompted model's attention mass on position 0, per layer, read under eager
attention, and the model's own attention implementation back afterwards."""
import torch

from eptk.models import load_model
from eptk.reproduce.sink_measures import position0_mass


def test_position0_mass_is_eager_attentions_and_restores_the_implementation():
    loaded = load_model("tiny")
    model, tokenizer = loaded.model, loaded.tokenizer
    before = model.config._attn_implementation
    prompts = ["12+34=", "7+8=15", "1"]  # the one-token prompt has no query after position 0: skipped
    mass = position0_mass(model, tokenizer, prompts)
    assert model.config._attn_implementation == before != "eager"
    model.set_attn_implementation("eager")
    try:
        expected = {}
        for text in prompts[:2]:
            with torch.no_grad():
                out = model(input_ids=tokenizer(text, return_tensors="pt")["input_ids"], output_attentions=True)
            for layer, probs in enumerate(out.attentions):
                expected[layer] = expected.get(layer, 0.0) + float(probs[0, :, 1:, 0].mean()) / 2
    finally:
        model.set_attn_implementation(before)
    assert set(mass) == set(expected) == set(range(model.config.num_hidden_layers))
    assert all(abs(mass[l] - expected[l]) < 1e-6 and 0 < mass[l] < 1 for l in mass)
