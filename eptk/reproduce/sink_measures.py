"""What claim 6 measures with the model itself: the attention mass the unprompted model puts on position 0 (the
sink a kept slot should take over), and how large the replaced slot states are after each layer's input norm
compared with the real tokens' states there."""
from __future__ import annotations

import math

import torch


@torch.no_grad()
def position0_mass(model, tokenizer, prompts: list[str]) -> dict[int, float]:
    """Per decoder layer (1-based input index l = layer l's input, as deep prompts count), the unprompted model's
    mean attention probability on key position 0, over heads and the query positions after it. One sequence at a
    time (no padding), eager attention so the probabilities are returned."""
    from ..attention import attention_implementation
    from ..families import family_of

    with attention_implementation(model, "eager"):
        sums: dict[int, float] = {}
        count = 0
        for text in prompts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"].to(family_of(model).token_embeddings(model).device)
            if ids.shape[1] < 2:
                continue
            out = model(input_ids=ids, output_attentions=True)
            for index, probs in enumerate(out.attentions):   # [1, H, T, T] of decoder layer `index`
                sums[index] = sums.get(index, 0.0) + float(probs[0, :, 1:, 0].mean())
            count += 1
    return {layer: total / count for layer, total in sums.items()} if count else {}


@torch.no_grad()
def replaced_norm_ratio(model, tokenizer, prompts: list[str], posterior: dict[str, torch.Tensor]) -> float:
    """Mean over the run's deep layers l of ‖norm_l(slot state)‖ / ‖norm_l(real token state)‖, norm_l being decoder
    layer l's input norm and the token states those entering layer l on the given prompts."""
    from ..families import family_of
    from ..methods import locate

    family = family_of(model)
    layers = family.decoder_layers(model)
    device = family.token_embeddings(model).device
    states: dict[int, list[torch.Tensor]] = {}
    for text in prompts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"].to(device)
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        for layer in range(1, len(layers)):
            states.setdefault(layer, []).append(hidden[layer][0])
    ratios = []
    for name, tensor in posterior.items():
        place = locate(name)
        if place is None or place[0] < 1 or not name.startswith("deep."):
            continue
        layer = place[0]
        norm = layers[layer].input_layernorm
        slots = norm(tensor.to(device, torch.float32)).norm(dim=-1).mean()
        tokens = norm(torch.cat(states[layer])).norm(dim=-1).mean()
        ratios.append(float(slots / tokens))
    return sum(ratios) / len(ratios) if ratios else math.nan
