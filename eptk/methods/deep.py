"""`deep`: a soft prompt plus, at each chosen layer l ≥ 1, P trainable vectors that replace the slots'
hidden states entering layer l (the paper's "prepend to each layer's input, cut from its output").

A pre-hook on each chosen decoder layer swaps in the layer's vectors during this prompt's slot pass
only. `--no-soft` drops the layer-0 vectors: the slots below the first chosen layer then carry zeros
and record no keys/values. PEFT: exported as PREFIX_TUNING (every layer's slot keys/values), which
needs slots at every layer, so a deep prompt without a soft prompt is refused.
"""
from __future__ import annotations

import torch

from ..attention import SlotPass, current_pass
from ..errors import EptkUsageError
from ..spaces import TensorSpec, parse_layers
from .base import register_method
from .peft_prefix import prefix_adapter
from .soft import SoftPrompt, slot_pass


@register_method
class DeepPrompt(SoftPrompt):
    name = "deep"
    takes_layers = True
    reports_prefix_mass = True
    peft_type = None  # its export is a PREFIX_TUNING adapter, which imports as a prefix prompt
    patterns = {r"soft": "embedding", r"deep\.(\d+)": "activation"}

    def __init__(self, tokens: int, dims: dict, layers=(), soft: bool = True, keep_sink: bool = False):
        super().__init__(tokens, dims, layers, soft, keep_sink)
        self.layers, self.soft = [int(l) for l in layers], bool(soft)
        if not self.soft and not self.layers:
            raise EptkUsageError("a deep prompt without a soft prompt needs at least one layer")

    @classmethod
    def check_options(cls, *, soft=True, keep_sink=False):
        super().check_options(soft=soft, keep_sink=keep_sink)
        if keep_sink and not soft:
            raise EptkUsageError("--keep-sink needs the layer-0 slots, where the sink token enters: drop --no-soft")

    @classmethod
    def resolve_layers(cls, spec, num_layers):
        return parse_layers(spec, num_layers)

    def tensor_specs(self):
        specs = super().tensor_specs() if self.soft else {}
        shape = (self.tokens, self.dims["hidden_size"])
        specs.update({f"deep.{l}": TensorSpec(f"deep.{l}", shape, l, "activation") for l in self.layers})
        return specs

    def install(self, prompted):
        layers = prompted.family.decoder_layers(prompted.model)
        return [layers[l].register_forward_pre_hook(self._hook(prompted, l), with_kwargs=True) for l in self.layers]

    def _hook(self, prompted, layer: int):
        def hook(module, args, kwargs):
            state = current_pass()
            if not isinstance(state, SlotPass) or state.owner is not prompted:
                return None
            hidden = self.slot_states(prompted, layer, args[0] if args else kwargs["hidden_states"])
            if args:
                return (hidden,) + tuple(args[1:]), kwargs
            return args, dict(kwargs, hidden_states=hidden)
        return hook

    def slot_states(self, prompted, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """The slots' hidden states [1,S,d] entering `layer` in place of `hidden`: the layer's vectors (on the
        layer's device, which a dispatched model may place elsewhere), behind the model's own sink state (row 0,
        never replaced) with --keep-sink."""
        vectors = prompted.prompt_tensor(f"deep.{layer}").to(hidden.device, prompted.dtype).unsqueeze(0)
        return torch.cat([hidden[:, :1], vectors], dim=1) if self.keep_sink else vectors

    def prefix(self, prompted):
        if self.soft:
            return slot_pass(prompted, prompted.prompt_tensor("soft"))
        zeros = torch.zeros(self.tokens, self.dims["hidden_size"], device=prompted.device)
        return slot_pass(prompted, zeros, first_layer=self.layers[0])

    def export_problem(self):
        if self.soft:
            return None
        return (f"is a deep prompt without a soft prompt: layers 0..{min(self.layers)}-1 have no prompt slots, "
                f"which PEFT prefix tuning (P keys/values at every layer) cannot express; tune with --soft to export it")

    def to_peft(self, source):
        return prefix_adapter(source.prompted())
