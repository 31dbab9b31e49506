"""The plain full forward over [slots ; tokens] that the two-pass design must reproduce.

Built from the prompt's materialized tensors only (`prompted.prompt()`, differentiable in the parameters): key/value tensors become a prefilled HF cache (the way
PEFT prefix tuning runs); otherwise inputs_embeds = [embedding-space tensor (or zeros) ; token
embeddings], and each activation-space tensor replaces the slot states entering its layer through a
pre-hook ("prepend to each layer's input, cut from its output"). With --keep-sink the sink token's embedding
goes first and the pre-hooks leave its state alone. Plain HF attention, no eptk code in the forward: "eager"
by default, the one implementation of every feature (transformers 5.24's "sdpa" refuses Gemma-2's attention
soft-cap, 5.17's ignores it), with HF's own masks (sliding windows counted over the indices of [slots ;
tokens], padding included) and HF's own LM head (final soft-cap). A deep prompt without a soft prompt
has no slots below its first layer: there the tokens' queries are masked off the slot keys (the default
`attn`, the family's own eager attention behind that one extra mask). `probs` receives each layer's
attention probabilities of the real tokens' queries, for the prefix-mass reference. `keep` (indices of real
tokens) computes the logits at those positions only: a 262k-token vocabulary over every position of a long
sequence would be gigabytes.
"""
import sys

import torch

from eptk.families import decoder_layers
from eptk.transformers_api import cache_kwargs

REFERENCE = "eptk_reference"
_HIDE = {"below": 0, "slots": 0}  # layers below `below` hide the first `slots` keys from the tokens' queries


def _attention(module, query, key, value, attention_mask, **kwargs):
    """The family's own eager attention (soft-caps, windows and all), with the slot keys masked off the
    tokens' queries at layers below the first deep layer of a --no-soft prompt."""
    eager = sys.modules[type(module).__module__].eager_attention_forward
    if module.layer_idx < _HIDE["below"] and attention_mask is not None:
        P, Tq, S = _HIDE["slots"], query.shape[2], key.shape[2]
        rows = torch.arange(S - Tq, S, device=query.device) >= P
        hidden = rows[:, None] & (torch.arange(S, device=query.device) < P)[None, :]
        # a finite minimum, like HF's masks: a pad row left with no key stays finite instead of NaN
        attention_mask = attention_mask[..., :S].masked_fill(hidden, torch.finfo(attention_mask.dtype).min)
    return eager(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(REFERENCE, _attention)
    AttentionMaskInterface.register(REFERENCE, eager_mask)


def _record(probs, out, T) -> None:
    """Each layer's attention probabilities of the T real tokens' queries, over every key."""
    if probs is not None:
        probs.update({l: p[:, :, -T:].detach() for l, p in enumerate(out.attentions)})


def full_forward(prompted, input_ids, attention_mask, keep_graph=False, attn=REFERENCE, attentions=False,
                 probs=None, keep=None):
    """Logits of the real tokens (those at `keep` only, when given); with `attentions` (eager), also each layer's attention probabilities
    [B,Hq,S,S] over the whole [slots ; tokens] sequence; `probs` (a dict) receives layer -> the real
    tokens' rows of those [B,Hq,T,S]."""
    _register()
    grab = (lambda t: t) if keep_graph else (lambda t: t.detach())
    model = prompted.model
    prev = model.config._attn_implementation
    model.set_attn_implementation(attn)
    hooks = []
    try:
        P, B = prompted.slots, input_ids.shape[0]
        sink = int(prompted.method.keep_sink)
        full_mask = torch.cat([attention_mask.new_ones(B, P), attention_mask], dim=1)
        positions = (full_mask.long().cumsum(-1) - 1).clamp_min(0)
        specs = prompted.method.tensor_specs().values()
        prompt = prompted.prompt()
        by_space = {space: {s.layer: s.name for s in specs if s.space == space}
                    for space in ("embedding", "activation", "key", "value")}
        if by_space["key"]:
            from transformers import DynamicCache
            cache = DynamicCache(config=model.config)
            for l in range(prompted.dims["num_layers"]):
                k = grab(prompt[by_space["key"][l]]).unsqueeze(0).expand(B, -1, -1, -1)
                v = grab(prompt[by_space["value"][l]]).unsqueeze(0).expand(B, -1, -1, -1)
                cache.update(k.contiguous(), v.contiguous(), l)
            out = model(input_ids=input_ids, attention_mask=full_mask, position_ids=positions[:, P:],
                        use_cache=True, output_attentions=probs is not None, **cache_kwargs(model, cache),
                        logits_to_keep=0 if keep is None else torch.as_tensor(keep))
            _record(probs, out, input_ids.shape[1])
            return out.logits.float()
        if not by_space["embedding"] and by_space["activation"]:
            _HIDE.update(below=min(by_space["activation"]), slots=P)
        embeds = model.get_input_embeddings()(input_ids)
        soft = grab(prompt[by_space["embedding"][0]]) if by_space["embedding"] else torch.zeros(P - sink, embeds.shape[-1])
        if sink:
            soft = torch.cat([model.get_input_embeddings()(torch.tensor([prompted.sink_token_id]))[0:1], soft])
        embeds = torch.cat([soft.unsqueeze(0).expand(B, -1, -1), embeds], dim=1)
        layers = decoder_layers(model)
        for l, name in by_space["activation"].items():
            vec = grab(prompt[name])

            def hook(module, args, kwargs, vec=vec):
                hs = args[0] if args else kwargs["hidden_states"]
                hs = torch.cat([hs[:, :sink], vec.to(hs.dtype).unsqueeze(0).expand(hs.shape[0], -1, -1), hs[:, P:]], dim=1)
                if args:
                    return (hs,) + tuple(args[1:]), kwargs
                return args, dict(kwargs, hidden_states=hs)
            hooks.append(layers[l].register_forward_pre_hook(hook, with_kwargs=True))
        out = model(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions,
                    output_attentions=attentions or probs is not None,
                    logits_to_keep=0 if keep is None else P + torch.as_tensor(keep))
        logits = (out.logits[:, P:] if keep is None else out.logits).float()
        _record(probs, out, input_ids.shape[1])
        return (logits, out.attentions) if attentions else logits
    finally:
        _HIDE.update(below=0, slots=0)
        for h in hooks:
            h.remove()
        model.set_attn_implementation(prev)
