"""`deep`: a soft prompt plus, at each chosen layer l ≥ 1, P trainable vectors that replace the slots'
hidden states entering layer l (the paper's "prepend to each layer's input, cut from its output").

A pre-hook on each chosen decoder layer swaps in the layer's vectors during this prompt's slot pass
only. `--no-soft` drops the layer-0 vectors: the slots below the first chosen layer then carry zeros
and record no keys/values. PEFT: exported as PREFIX_TUNING (every layer's slot keys/values), which
needs slots at every layer, so a deep prompt without a soft prompt is refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import PackedPass, SlotPass, current_pass
from ..errors import EptkUsageError
from ..options import option
from ..spaces import TensorSpec, check_layer_spec, parse_layers
from .base import register_method
from .peft_prefix import prefix_adapter
from .soft import SlotOptions, SoftPrompt, slot_inputs


@dataclass(frozen=True)
class DeepOptions(SlotOptions):
    layers: str = option("last:3", "the layers whose slot states are replaced: all, last:N (the paper: last:3) or "
                                   "a comma list like 4,8,12", check=check_layer_spec,
                         in_name=lambda spec: str(spec).replace("last:", "last"))
    soft: bool = option(True, "also tune the layer-0 (soft) vectors")

    def check(self):
        if self.keep_sink and not self.soft:
            raise EptkUsageError("--keep-sink needs the layer-0 slots, where the sink token enters: drop --no-soft")


@register_method
class DeepPrompt(SoftPrompt):
    name = "deep"
    Options = DeepOptions
    reports_prefix_mass = True
    peft_type = None  # its export is a PREFIX_TUNING adapter, which imports as a prefix prompt
    patterns = {r"soft": "embedding", r"deep\.(\d+)": "activation"}
    contract_options = {"layers": "all"}  # the default last:3 needs 4 layers

    def __init__(self, tokens, dims, options=None):
        super().__init__(tokens, dims, options)
        self.layers, self.soft = parse_layers(self.options.layers, self.dims["num_layers"]), bool(self.options.soft)

    @classmethod
    def options_from_config(cls, config):
        """config.json keeps the resolved layers under `layers` and the spec given under `layers_spec` (older
        runs: the resolved list alone)."""
        values = super().options_from_config(config)
        spec = config.get("layers_spec", config.get("layers"))
        if isinstance(spec, list):
            spec = ",".join(str(int(l)) for l in spec)
        if spec is not None:
            values["layers"] = spec
        return values

    def config_entries(self):
        return dict(super().config_entries(), layers=self.layers, layers_spec=self.options.layers)

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
            if not isinstance(state, (SlotPass, PackedPass)) or state.owner is not prompted:
                return None
            given = args[0] if args else kwargs["hidden_states"]
            hidden = self.slot_states(prompted, layer, given[:, :self.slots])
            if given.shape[1] > self.slots:  # the packed pass: the token rows follow the slots in row 0
                hidden = torch.cat([hidden, given[:, self.slots:]], dim=1)
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

    def slot_pass_inputs(self, prompted):
        if self.soft:
            return super().slot_pass_inputs(prompted)
        zeros = torch.zeros(self.tokens, self.dims["hidden_size"], device=prompted.device)
        return slot_inputs(prompted, zeros), self.layers[0]

    def export_problem(self):
        if self.soft:
            return None
        return (f"is a deep prompt without a soft prompt: layers 0..{min(self.layers)}-1 have no prompt slots, "
                f"which PEFT prefix tuning (P keys/values at every layer) cannot express; tune with --soft to export it")

    def to_peft(self, source):
        return prefix_adapter(source.prompted())
