"""`eptk tune`: build the prompt from its prior, train it against a frozen model, write the run directory.

The loop reads top to bottom: resolve settings -> load model and task -> prior -> prompt ->
(AdamW, warm-up + schedule, clipping, accumulation, MAP prior term) -> checkpoints -> eval.
Data order is a pure function of (seed, step), so a resumed or multi-process run sees the same
batches as an uninterrupted single-process one.
"""
from __future__ import annotations

import dataclasses
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import EptkUsageError, choices
from .evaluate import answer_loss, score
from .models import DEFAULT_MODEL, load_model, model_dims
from .priors import ParamInfo, PriorContext, build_prior, parse_spec
from .prompts import METHODS, NO_PROMPT, PromptedModel, layer_of, param_shapes, parse_layers
from .runs import prepare_out_dir
from .tasks import encode_batch, load_task, take_rows

SCHEDULES = ("cosine", "linear", "constant")
NAN_POLICIES = ("stop", "skip")
LR_SCALES = ("prior", "none")


@dataclass
class TuneConfig:
    model: str = DEFAULT_MODEL
    task: str = "arith"
    method: str = "deep"
    prior: str = "normal"
    prior_weight: float = 0.0
    tokens: int = 20
    layers: str = "last:3"
    soft: bool = True
    steps: int = 150
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-2
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: int = 10
    clip: float = 1.0
    eval_every: int = 25
    eval_size: int = 100
    test_size: int = 200
    train_size: int = 4000
    checkpoint_every: int = 50
    seed: int = 0
    out: str = ""
    backend: str = "auto"
    device: str = "auto"
    nan_policy: str = "stop"
    lr_scale: str = "prior"
    trust_remote_code: bool = False
    stats_samples: int = 2048
    device_map: str = ""
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Checks that need no model: fail before anything is loaded or written."""
        if self.method not in METHODS:
            raise EptkUsageError(f"unknown method {self.method!r}; valid: {choices(METHODS)}")
        positive = {"tokens": self.tokens, "steps": self.steps, "batch-size": self.batch_size,
                    "grad-accum": self.grad_accum}
        for name, value in positive.items():
            if value < 1:
                raise EptkUsageError(f"--{name} must be at least 1 (got {value})")
        for name, value in {"lr": self.lr}.items():
            if not (value > 0 and math.isfinite(value)):
                raise EptkUsageError(f"--{name} must be a positive number (got {value})")
        nonneg = {"prior-weight": self.prior_weight, "eval-every": self.eval_every, "warmup": self.warmup,
                  "clip": self.clip, "weight-decay": self.weight_decay, "checkpoint-every": self.checkpoint_every}
        for name, value in nonneg.items():
            if not (value >= 0 and math.isfinite(value)):
                raise EptkUsageError(f"--{name} must be a non-negative number (got {value})")
        if self.schedule not in SCHEDULES:
            raise EptkUsageError(f"unknown schedule {self.schedule!r}; valid: {choices(SCHEDULES)}")
        from .models import DEVICE_MAPS
        if self.device_map and self.device_map not in DEVICE_MAPS:
            raise EptkUsageError(f"unknown --device-map {self.device_map!r}; valid: {choices(DEVICE_MAPS)}")
        if self.lr_scale not in LR_SCALES:
            raise EptkUsageError(f"unknown --lr-scale {self.lr_scale!r}; valid: {choices(LR_SCALES)}")
        if self.nan_policy not in NAN_POLICIES:
            raise EptkUsageError(f"unknown --nan-policy {self.nan_policy!r}; valid: {choices(NAN_POLICIES)}")
        from eptk.kernels import BACKENDS
        if self.backend not in BACKENDS:
            raise EptkUsageError(f"unknown --backend {self.backend!r}; valid: {choices(BACKENDS)}")
        parse_spec(self.prior)

    @classmethod
    def from_dict(cls, data: dict) -> "TuneConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise EptkUsageError(f"unknown --device {name!r}; valid: auto, cpu, cuda, cuda:N") from None


def versions() -> dict:
    import platform

    import transformers

    import eptk
    out = {"eptk": eptk.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version()}
    try:
        import triton
        out["triton"] = triton.__version__
    except Exception:
        pass
    return out


def lr_factor(step: int, cfg: TuneConfig) -> float:
    """Linear warm-up, then cosine / linear decay to zero, or constant."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def batch_indices(seed: int, step: int, n_train: int, batch: int) -> torch.Tensor:
    """The global batch of a step: a pure function of (seed, step)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    if batch <= n_train:
        return torch.randperm(n_train, generator=gen)[:batch]
    return torch.randint(n_train, (batch,), generator=gen)


def prior_context(loaded, cfg: TuneConfig) -> PriorContext:
    family, _ = parse_spec(cfg.prior)
    stats = None
    if family.needs_stats:
        from .capture import StatsProvider
        stats = StatsProvider(loaded, cfg.model, cfg.task, samples=cfg.stats_samples, seed=cfg.seed)
    emb = loaded.model.get_input_embeddings().weight.detach().float().cpu()
    return PriorContext(embeddings=emb, tokenizer=loaded.tokenizer, task=cfg.task, model=cfg.model,
                        seed=cfg.seed, stats=stats)


class Stop(Exception):
    """A signal asked the run to stop; the checkpoint is written. Exit code 128 + the signal's number."""
    def __init__(self, signal_name: str, step: int, out):
        super().__init__(f"stopped by {signal_name} after step {step}; checkpoint written, "
                         f"continue with: eptk tune --resume {out}")
        self.exit_code = 128 + int(signal.Signals[signal_name])


def tune(cfg: TuneConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
         dist=None) -> Path:
    """Run prompt-tuning; returns the run directory. `dist` is a (rank, world) pair under torchrun."""
    from .distributed import Distributed

    dist = dist or Distributed.from_env()
    cfg.validate()
    task = load_task(cfg.task, cfg.seed)
    device = resolve_device(cfg.device if cfg.device != "auto" else dist.default_device())
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if cfg.device_map and dist.world > 1:
        raise EptkUsageError("--device-map splits one process's model over GPUs; under torchrun every rank holds "
                             "a whole copy (data parallel): use one or the other")
    loaded = load_model(cfg.model, device=device, dtype=dtype, trust_remote_code=cfg.trust_remote_code,
                        device_map=cfg.device_map or None)
    if cfg.device_map:
        device = loaded.model.get_input_embeddings().weight.device  # batches enter where the embeddings are
    dims = model_dims(loaded.model)
    layers = parse_layers(cfg.layers, dims["num_layers"]) if cfg.method == "deep" else []
    shapes = param_shapes(cfg.method, cfg.tokens, dims, layers, cfg.soft)
    out = Path(cfg.out or default_run_name(cfg))
    resolved = dict(dataclasses.asdict(cfg), out=str(out), layers_resolved=layers, **dims,
                    model_source=loaded.source, versions=versions(), name=out.name,
                    parameters=sum(int(torch.tensor(s).prod()) for s in shapes.values()))
    resolved["layers_spec"], resolved["layers"] = cfg.layers, layers
    # Everything that can fail on bad input happens before the run directory is touched.
    params = {name: ParamInfo(name, shape, layer_of(name)) for name, shape in shapes.items()}
    ctx = prior_context(loaded, cfg)
    prior = build_prior(cfg.prior, ctx, params)
    prior.context_stats = ctx.stats
    init = prior.sample(torch.Generator().manual_seed(cfg.seed))
    prompted = PromptedModel(loaded.model, loaded.tokenizer, cfg.method, cfg.tokens, layers, cfg.soft, init,
                             cfg.backend)
    prior.to(device)
    resolved["lr_scales"] = lr_scales(init, cfg.lr_scale)
    ctx_stats = getattr(prior, "context_stats", None)
    if ctx_stats is not None and ctx_stats.folders:
        resolved["stats"] = dict(ctx_stats.folders)  # eptk analyze finds the data region here
    rates = {k: d.acceptance_rate for k, d in prior.dists.items() if hasattr(d, "acceptance_rate")}
    if rates:
        resolved["prior_acceptance_rate"] = rates
    run, error = None, None
    if dist.is_main:
        try:
            run = prepare_out_dir(out, resolved, overwrite=overwrite, resume=resume)
        except EptkUsageError as exc:
            error = str(exc)
    error = dist.broadcast_error(error)  # every rank fails with rank 0's message instead of waiting for it
    if error is not None:
        dist.close()
        raise EptkUsageError(error)
    try:
        if run is not None and not resume:
            run.write_config(resolved)
            run.write_prior(init)
        return _train(cfg, run, out, task, loaded, shapes, prompted, prior, resume, progress, device, dist,
                      resolved["lr_scales"])
    finally:
        if run is not None:
            run.release()
        dist.close()


def lr_scales(init: dict[str, torch.Tensor], mode: str) -> dict[str, float]:
    """Per-tensor learning-rate multipliers. "prior": RMS of the tensor's prior sample over the RMS of the
    layer-0 (soft) sample, so that a deep vector living at activation scale 500 moves the same share of
    its scale per Adam step as a token-embedding-scale one; "none": 1 everywhere."""
    rms = {name: float(t.float().pow(2).mean().sqrt()) for name, t in init.items()}
    ref = rms.get("soft") or next(iter(rms.values()), 0.0)
    if mode == "none" or not ref:
        return {name: 1.0 for name in init}
    return {name: (value / ref if value > 0 else 1.0) for name, value in rms.items()}


def _train(cfg, run, out, task, loaded, shapes, prompted, prior, resume, progress, device, dist, scales):
    tok = loaded.tokenizer

    trainable = [prompted.param(n) for n in shapes]
    optimizer = torch.optim.AdamW([{"params": [prompted.param(n)], "lr_scale": scales[n]} for n in shapes],
                                  lr=cfg.lr, weight_decay=cfg.weight_decay)
    train = task.examples("train", cfg.train_size)
    val = task.examples("validation", cfg.eval_size)
    if not train:
        raise EptkUsageError(f"task {cfg.task!r} has no training examples")
    start = 0
    if resume:
        start = _restore(run, prompted, optimizer, shapes, dist)
        if start > 0:
            dist.broadcast_optimizer_state(optimizer, trainable)
    dist.broadcast_params(trainable)
    use_amp = device.type == "cuda"
    stop_flag = {"signal": None}
    handlers = _install_signal_handlers(stop_flag)
    bar = _progress(progress and dist.is_main, cfg.steps, start)
    tokens_seen, t0 = 0, time.perf_counter()
    step = start
    try:
        for step in range(start, cfg.steps):
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * group["lr_scale"] * lr_factor(step, cfg)
            idx = batch_indices(cfg.seed, step, len(train), cfg.batch_size * cfg.grad_accum)
            # Tokenize the global batch once: its answer tokens normalize the loss, its rows feed the micro-batches.
            encoded = encode_batch(tok, [train[i] for i in idx.tolist()])
            total_tokens = max(1, int(encoded["labels"][:, 1:].ne(-100).sum()))
            optimizer.zero_grad(set_to_none=True)
            loss_sum, step_tokens = 0.0, 0
            for micro in range(cfg.grad_accum):
                rows = dist.shard(list(range(micro * cfg.batch_size, (micro + 1) * cfg.batch_size)))
                if not rows:
                    continue
                enc = {k: v.to(device) for k, v in take_rows(encoded, rows).items()}
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    out_ = prompted(enc["input_ids"], enc["attention_mask"], labels=enc["labels"])
                loss = out_.loss_sum / total_tokens
                loss.backward()
                loss_sum += float(out_.loss_sum)
                step_tokens += int(enc["attention_mask"].sum())
            if cfg.prior_weight > 0:
                # MAP: -lambda * log p(theta) / n, n = training examples
                map_term = -cfg.prior_weight * prior.log_prob({n: prompted.param(n) for n in shapes}) / len(train)
                if dist.is_main:
                    map_term.backward()
            dist.all_reduce_grads(trainable)
            # One collective for the loss, the tokens and a stop request: all ranks stop at the same step.
            loss_total, step_tokens, stops = dist.sum_values([loss_sum, step_tokens, stop_flag["signal"] is not None])
            loss_value = loss_total / total_tokens
            tokens_seen += int(step_tokens)
            stopping = stops > 0  # a single process looks again at the end of the step
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.clip if cfg.clip > 0 else float("inf"))
            if not (math.isfinite(loss_value) and math.isfinite(float(grad_norm))):
                if cfg.nan_policy == "stop":
                    raise EptkUsageError(f"non-finite loss or gradient at step {step} (loss {loss_value}); "
                                         f"the last good checkpoint in {out}/checkpoint is kept "
                                         f"(--nan-policy skip skips such steps)")
                optimizer.zero_grad(set_to_none=True)
            else:
                optimizer.step()
            row = {"step": step + 1, "loss": loss_value, "lr": optimizer.param_groups[0]["lr"],
                   "grad_norm": float(grad_norm), "tokens_per_s": tokens_seen / max(time.perf_counter() - t0, 1e-9)}
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and (step + 1) < cfg.steps and dist.is_main:
                row["val_loss"] = answer_loss(prompted, tok, val)
            if run is not None:
                run.log(row)
            bar.update(loss_value, row["tokens_per_s"], row.get("val_loss"))
            last = step + 1 == cfg.steps
            if dist.world == 1:
                stopping = stop_flag["signal"] is not None
            if run is not None and ((cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0) or last
                                    or stopping):
                _checkpoint(run, step + 1, prompted, optimizer, shapes)
            if stopping:
                raise Stop(stop_flag["signal"] or "SIGTERM", step + 1, out)
    finally:
        bar.close()
        _restore_signal_handlers(handlers)
    if run is None:
        return out
    posterior = prompted.tensors()
    run.write_posterior(posterior)
    result = evaluate_run(prompted, loaded, task, cfg, progress)
    final_val = answer_loss(prompted, tok, val)
    run.log({"step": cfg.steps, "val_loss": final_val, "val_score": result["tuned"]["score"]})
    run.write_eval(result)
    return out


def evaluate_run(prompted, loaded, task, cfg, progress=True) -> dict:
    """Test-split scores without any prompt (baseline) and with the tuned prompt, plus prefix mass."""
    test = task.examples("test", cfg.test_size)
    baseline_model = PromptedModel(loaded.model, loaded.tokenizer, NO_PROMPT, 0, backend=cfg.backend)
    result = {"task": task.name, "split": "test", "metric": task.metric,
              "baseline": score(baseline_model, loaded.tokenizer, task, test),
              "tuned": score(prompted, loaded.tokenizer, task, test)}
    if prompted.method in ("deep", "prefix"):
        from .tasks import encode_batch as enc
        batch = enc(loaded.tokenizer, test[:64])
        mass = prompted.prefix_mass(batch["input_ids"].to(prompted.device),
                                    batch["attention_mask"].to(prompted.device))
        result["prefix_mass"] = {f"layer{l}": [round(float(x), 6) for x in v] for l, v in sorted(mass.items())}
    return result


def _checkpoint(run, step, prompted, optimizer, shapes) -> None:
    tensors = {f"param.{n}": t for n, t in prompted.tensors().items()}
    for n in shapes:
        state = optimizer.state.get(prompted.param(n), {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"adam.{n}.{key}"] = state[key]
        if "step" in state:
            tensors[f"adam.{n}.step"] = torch.as_tensor(state["step"], dtype=torch.float64).reshape(1)
    tensors["rng.torch"] = torch.get_rng_state()
    run.save_checkpoint(step, tensors, {"lr": optimizer.param_groups[0]["lr"]})


def _restore(run, prompted, optimizer, shapes, dist) -> int:
    found = run.latest_checkpoint() if run is not None else None
    if found is None:
        if run is not None:
            run.truncate_metrics(0)
        return dist.broadcast_int(0)
    tensors, state = found
    prompted.load_tensors({n: tensors[f"param.{n}"] for n in shapes})
    for n in shapes:
        p = prompted.param(n)
        if f"adam.{n}.exp_avg" in tensors:
            optimizer.state[p] = {"exp_avg": tensors[f"adam.{n}.exp_avg"].to(p.device),
                                  "exp_avg_sq": tensors[f"adam.{n}.exp_avg_sq"].to(p.device),
                                  "step": torch.tensor(float(tensors[f"adam.{n}.step"][0]))}
    torch.set_rng_state(tensors["rng.torch"])
    run.truncate_metrics(int(state["step"]))
    return dist.broadcast_int(int(state["step"]))


def _install_signal_handlers(flag):
    def handler(signum, frame):
        flag["signal"] = signal.Signals(signum).name
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    return previous


def _restore_signal_handlers(previous) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def default_run_name(cfg: TuneConfig) -> str:
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "-" for c in str(s)).strip("-")
    model = safe(Path(cfg.model).name if "/" in cfg.model else cfg.model)
    return str(Path("runs") / f"{model}-{safe(cfg.task)}-{cfg.method}-{safe(cfg.prior)}-s{cfg.seed}")


class _progress:
    """A rich progress bar with loss, tokens/s and ETA (silent when disabled)."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        self.progress = Progress(TextColumn("[bold]tune"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"),
                                 TextColumn("{task.fields[val]}"), TimeRemainingColumn())
        self.progress.start()
        self.task = self.progress.add_task("tune", total=total, completed=start, loss="-", speed="-", val="")

    def update(self, loss, speed, val=None):
        if self.enabled:
            fields = {"loss": f"{loss:.4f}", "speed": f"{speed:,.0f}"}
            if val is not None:
                fields["val"] = f"val {val:.4f}"
            self.progress.update(self.task, advance=1, **fields)

    def close(self):
        if self.enabled:
            self.progress.stop()
