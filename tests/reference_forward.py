"""The plain full forward over [slots ; tokens] that the two-pass design must reproduce.

Built from the prompt's declared tensors only: key/value tensors become a prefilled HF cache (the way
PEFT prefix tuning runs); otherwise inputs_embeds = [embedding-space tensor (or zeros) ; token
embeddings], and each activation-space tensor replaces the slot states entering its layer through a
pre-hook ("prepend to each layer's input, cut from its output"). With --keep-sink the sink token's embedding
goes first and the pre-hooks leave its state alone. A deep prompt without a soft prompt has no slots
below its first layer: there the tokens' queries are masked off the slot keys. Attention is written out
here (softmax(QKᵀ·scale + mask)·V over repeated key/value heads; `attn` picks an HF one instead), no eptk
code in the forward, and records each layer's probabilities for the prefix-mass reference.
"""
import torch

from eptk.families import decoder_layers

REFERENCE = "eptk_reference"
_STATE = {"probs": {}, "hide_slots_below": 0, "slots": 0}


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [B,Hq,Tq,D], key/value [B,Hkv,S,D]; the mask is sdpa's (bool [B,1,Tq,S], True = attend) or None
    for plain causal attention. Returns ([B,Tq,Hq,D], probabilities [B,Hq,Tq,S])."""
    B, Hq, Tq, D = query.shape
    S = key.shape[2]
    k = key.repeat_interleave(Hq // key.shape[1], dim=1)
    v = value.repeat_interleave(Hq // value.shape[1], dim=1)
    scale = D ** -0.5 if scaling is None else scaling
    scores = (query @ k.transpose(-1, -2)) * scale
    keep = torch.ones(Tq, S, dtype=torch.bool, device=query.device).tril(S - Tq)  # bottom-right causal
    keep = keep.expand(B, 1, Tq, S)
    if attention_mask is not None:
        keep = keep & attention_mask.bool()
    P = _STATE["slots"]
    if module.layer_idx < _STATE["hide_slots_below"]:
        rows = torch.arange(S - Tq, S, device=query.device) >= P   # the tokens' queries
        hidden = rows[:, None] & (torch.arange(S, device=query.device) < P)[None, :]
        keep = keep & ~hidden
    probs = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # a query with no key at all reads nothing
    _STATE["probs"][module.layer_idx] = probs
    return (probs @ v).transpose(1, 2).contiguous(), probs


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(REFERENCE, _attention)
    AttentionMaskInterface.register(REFERENCE, sdpa_mask)


def full_forward(prompted, input_ids, attention_mask, keep_graph=False, probs=None, attn=REFERENCE,
                 attentions=False):
    """Logits [B,T,V] of the real tokens; `probs` (a dict) receives layer -> attention probabilities
    [B,Hq,T,S] of the real tokens' queries (S: every key, slots first); with `attentions`, also each layer's
    attention probabilities [B,Hq,S,S] over the whole [slots ; tokens] sequence, as HF returns them."""
    _register()
    grab = (lambda t: t) if keep_graph else (lambda t: t.detach())
    model = prompted.model
    prev = model.config._attn_implementation
    model.set_attn_implementation(attn)
    hooks = []
    P, B = prompted.slots, input_ids.shape[0]
    sink = int(prompted.method.keep_sink)
    _STATE.update(probs={}, hide_slots_below=0, slots=P)
    try:
        full_mask = torch.cat([attention_mask.new_ones(B, P), attention_mask], dim=1)
        positions = (full_mask.long().cumsum(-1) - 1).clamp_min(0)
        specs = prompted.method.tensor_specs().values()
        by_space = {space: {s.layer: s.name for s in specs if s.space == space}
                    for space in ("embedding", "activation", "key", "value")}
        if by_space["key"]:
            from transformers import DynamicCache
            cache = DynamicCache(config=model.config)
            for l in range(prompted.dims["num_layers"]):
                k = grab(prompted.param(by_space["key"][l])).unsqueeze(0).expand(B, -1, -1, -1)
                v = grab(prompted.param(by_space["value"][l])).unsqueeze(0).expand(B, -1, -1, -1)
                cache.update(k.contiguous(), v.contiguous(), l)
            out = model(input_ids=input_ids, attention_mask=full_mask, position_ids=positions[:, P:],
                        past_key_values=cache, use_cache=True)
            logits = out.logits.float()
        else:
            if not by_space["embedding"]:
                _STATE["hide_slots_below"] = min(by_space["activation"])
            embeds = model.get_input_embeddings()(input_ids)
            soft = grab(prompted.param(by_space["embedding"][0])) if by_space["embedding"] \
                else torch.zeros(P - sink, embeds.shape[-1])
            scale = prompted.family.embedding_scale(model)  # slots are layer-0 states; the model scales inputs
            soft = soft / scale
            if sink:  # the sink token's embedding, as the model's own input (unscaled like `embeds`)
                soft = torch.cat([model.get_input_embeddings()(torch.tensor([prompted.sink_token_id]))[0:1], soft])
            embeds = torch.cat([soft.unsqueeze(0).expand(B, -1, -1), embeds], dim=1)
            layers = decoder_layers(model)
            for l, name in by_space["activation"].items():
                vec = grab(prompted.param(name))

                def hook(module, args, kwargs, vec=vec):
                    hs = args[0] if args else kwargs["hidden_states"]
                    hs = torch.cat([hs[:, :sink], vec.to(hs.dtype).unsqueeze(0).expand(hs.shape[0], -1, -1),
                                    hs[:, P:]], dim=1)
                    if args:
                        return (hs,) + tuple(args[1:]), kwargs
                    return args, dict(kwargs, hidden_states=hs)
                hooks.append(layers[l].register_forward_pre_hook(hook, with_kwargs=True))
            out = model(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions,
                        output_attentions=attentions)
            logits = out.logits[:, P:].float()
            if attentions:
                return logits, out.attentions
        if probs is not None:
            T = input_ids.shape[1]
            probs.update({l: p[:, :, -T:].detach() for l, p in _STATE["probs"].items()})
        return logits
    finally:
        for h in hooks:
            h.remove()
        model.set_attn_implementation(prev)
