"""`eptk tune`: build the prompt from its prior, train it against a frozen model, write the run directory.

The loop reads top to bottom: resolve settings -> load model and task -> prior -> prompt ->
(AdamW, warm-up + schedule, clipping, accumulation, MAP prior term) -> checkpoints -> eval.
Data order is a pure function of (seed, step), so a resumed or multi-process run sees the same
batches as an uninterrupted single-process one.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from pathlib import Path

import torch

from .batches import encode_batch, take_rows
from .config import TuneConfig, portable_paths, versions
from .errors import EptkUsageError, Stop
from .early_stop import EarlyStop
from .evaluate import answer_loss, evaluate, item_rows, skipped
from .families import family_of
from .io import crash_point
from .methods import get_method
from .models import input_device, load_frozen
from .priors import PriorContext, build_prior, jitter, parse_spec
from .progress import Bar
from .prompts import PromptedModel, text_keys_values
from .rerun import start_note
from .runs import TUNED, prepare_out_dir
from .signals import on_stop_signals, restore_handlers


def lr_factor(step: int, cfg: TuneConfig) -> float:
    """Linear warm-up, then cosine / linear decay to zero over the run's steps, or constant. A run that
    `--resume --steps N` extended (or shortened) decays over its old total before the step it resumed at
    and over N from there on (`TuneConfig.schedule_steps`): the schedule is recomputed for the new
    total and applied from the resumed step, so the learning rate jumps there."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup) / max(1, cfg.schedule_steps(step) - cfg.warmup)
    if cfg.schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def batch_indices(seed: int, step: int, n_train: int, batch: int) -> torch.Tensor:
    """The global batch of a step: a pure function of (seed, step)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    if batch <= n_train:
        return torch.randperm(n_train, generator=gen)[:batch]
    return torch.randint(n_train, (batch,), generator=gen)


def prior_context(loaded, cfg: TuneConfig, progress: bool = False) -> PriorContext:
    family, _ = parse_spec(cfg.prior)
    stats = reference = None
    if family.needs_stats:  # captured lazily, on a family's first look-up
        from .stats_cache import REFERENCE_SEED, StatsCache
        stats = StatsCache(loaded, cfg.model, cfg.task, samples=cfg.stats_samples, seed=cfg.seed)
        reference = stats if cfg.seed == REFERENCE_SEED else \
            StatsCache(loaded, cfg.model, cfg.task, samples=cfg.stats_samples, seed=REFERENCE_SEED)
    return PriorContext(embeddings=family_of(loaded.model).token_embeddings(loaded.model), tokenizer=loaded.tokenizer,
                        task=cfg.task, model=cfg.model, seed=cfg.seed, stats=stats, reference_stats=reference,
                        progress=progress, text_kv=functools.lru_cache(maxsize=4)(
                            lambda ids: text_keys_values(loaded.model, loaded.tokenizer, ids)))


def tune(cfg: TuneConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
         dist=None, rerun_of: Path | None = None) -> Path:
    """Run prompt-tuning; returns the run directory. `dist` is a (rank, world) pair under torchrun; `rerun_of`: the
    run this one reruns with the same start (eptk.rerun), whose prior the start is compared with before training.

    Order: every check that needs no model (eptk.preflight), then the model and what needs it (layers,
    the prior, captured statistics), then the run directory: bad input never leaves anything on disk."""
    from .distributed import Distributed
    from .preflight import check_context, check_tune

    dist = dist or Distributed.from_env()
    try:
        plan = check_tune(cfg, resume=resume, overwrite=overwrite, default_device=dist.default_device())
        if cfg.device_map and dist.world > 1:
            raise EptkUsageError("--device-map splits one process's model over GPUs; under torchrun every rank "
                                 "holds a whole copy (data parallel): use one or the other")
    except BaseException:
        dist.close()
        raise
    device, out = plan.device, plan.out
    if resume and cfg.steps != plan.run_steps and plan.resume_step > 0:
        # the steps so far ran under the old total's schedule; record it, so lr_factor and --config follow
        cfg.extensions = [*cfg.extensions, {"at_step": plan.resume_step, "steps": plan.run_steps}]
    loaded = load_frozen(cfg.model, device, trust_remote_code=cfg.trust_remote_code,
                         device_map=cfg.device_map or None, offload_dir=cfg.offload_dir or None,
                         allow_pickle_weights=cfg.allow_pickle_weights)
    device = input_device(loaded.model)  # batches enter where the embeddings execute (--device-map moves them)
    dims = family_of(loaded.model).dims(loaded.model)
    method = get_method(cfg.method)(cfg.tokens, dims, cfg.method_options())  # a layer out of range: refused here
    check_context(plan, cfg, loaded.model, loaded.tokenizer, method)  # before the prior may capture statistics
    specs = method.tensor_specs()
    resolved = run_config(cfg, method, out, loaded)
    # The prior may capture activation statistics (into the statistics cache, never into the run).
    ctx = prior_context(loaded, cfg, progress=progress and dist.is_main)
    prior = build_prior(cfg.prior, ctx, specs)
    init = jitter(prior.sample(torch.Generator().manual_seed(cfg.seed)), cfg.prior_jitter, cfg.seed)
    prompted = PromptedModel(loaded.model, loaded.tokenizer, method, backend=cfg.backend,
                             grad_checkpointing=cfg.grad_checkpointing,
                             parameters=method.build_parameters(init, seed=cfg.seed))
    start = prompted.tensors()  # the prompt the run starts from: the prior's sample, as the parameters materialize it
    resolved["parameters"] = sum(p.numel() for p in prompted.parameters_by_name().values())
    if prompted.sink_token_id is not None:
        resolved["sink_token_id"] = prompted.sink_token_id
    prior.to(device)
    resolved["lr_scales"] = prompted.trainable.lr_scales(lr_scales(start, cfg.lr_scale))
    if ctx.stats is not None and (ctx.stats.folders or ctx.reference_stats.folders):
        # eptk analyze finds the data region here (the run seed's capture where the prior used one)
        resolved["stats"] = {**ctx.reference_stats.folders, **ctx.stats.folders}
    rates = {k: d.acceptance_rate for k, d in prior.dists.items() if hasattr(d, "acceptance_rate")}
    if rates:
        resolved["prior_acceptance_rate"] = rates
    resolved = portable_paths(resolved, out.parent)  # no folder of this machine in config.json (config.PATH_SETTINGS)
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
        if run is not None:
            _write_start(run, resolved, start, cfg, plan, resume)
            if rerun_of is not None and not resume and (note := start_note(start, rerun_of, resolved["versions"])):
                print(note, file=sys.stderr)
        return _train(cfg, run, plan, loaded, prompted, prior, resume, progress, device, dist, resolved["lr_scales"])
    finally:
        if run is not None:
            run.release()
        dist.close()


def run_config(cfg: TuneConfig, method, out: Path, loaded) -> dict:
    """What config.json records of a run: every setting, the method's options at the top level beside them (as the
    method records them), the model's dimensions, where it came from and the package versions."""
    settings = dataclasses.asdict(cfg)
    del settings["options"]
    return dict(settings, **method.config_entries(), **method.dims, out=str(out), model_source=loaded.source,
                model_id=loaded.identity, versions=versions(), name=out.name)


def _write_start(run, resolved: dict, start, cfg: TuneConfig, plan, resume: bool) -> None:
    """A fresh run: config.json and prior.safetensors (the prompt it starts from). A resumed one: its config.json
    with the new --steps (a finished run reopened first), and its prior if it died before writing it."""
    if not resume:
        run.write_config(resolved)
        crash_point("config")  # a config and no prior yet
    elif cfg.steps != plan.run_steps:
        config = run.config()
        if run.is_complete():
            run.reopen()
        config.update(steps=cfg.steps, extensions=cfg.extensions)
        run.write_config(config)
    if not resume or not run.has_tensors("prior"):
        run.write_prior(start)


def lr_scales(init: dict[str, torch.Tensor], mode: str) -> dict[str, float]:
    """Per-prompt-tensor learning-rate multipliers (the parameters take theirs from these: PromptParameters.lr_scales).
    "prior": RMS of the tensor's prior sample over the RMS of the layer-0 (soft) sample, so that a deep vector
    living at activation scale 500 moves the same share of its scale per Adam step as a token-embedding-scale
    one; "none": 1 everywhere."""
    rms = {name: float(t.float().pow(2).mean().sqrt()) for name, t in init.items()}
    ref = rms.get("soft") or next(iter(rms.values()), 0.0)
    if mode == "none" or not ref:
        return {name: 1.0 for name in init}
    return {name: (value / ref if value > 0 else 1.0) for name, value in rms.items()}


def _train(cfg, run, plan, loaded, prompted, prior, resume, progress, device, dist, scales):
    tok = loaded.tokenizer
    out, train, val = plan.out, plan.train, plan.val

    params = prompted.parameters_by_name()
    trainable = list(params.values())
    optimizer = torch.optim.AdamW([{"params": [p], "lr_scale": scales[n]} for n, p in params.items()],
                                  lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    early = EarlyStop(cfg.early_stop, cfg.early_stop_delta)
    if resume:
        start = _restore(run, prompted, optimizer, params, dist, early)
        if start > 0:
            dist.broadcast_optimizer_state(optimizer, trainable)
    dist.broadcast_params(trainable)
    use_amp = device.type == "cuda"
    stop_flag = {"signal": None}
    handlers = on_stop_signals(lambda name: stop_flag.update(signal=name))
    bar = Bar(progress and dist.is_main, "[bold]tune", cfg.steps, "loss {task.fields[loss]}",
              "{task.fields[speed]} tok/s", "{task.fields[val]}", completed=start, eta=True, loss="-", speed="-", val="")
    if run is not None and start == 0 and cfg.eval_every and val and dist.is_main:
        # the prior's validation loss: where a learning curve starts, and the first candidate for the best prompt
        prior_loss = answer_loss(prompted, tok, val)
        run.log({"step": 0, "val_loss": prior_loss})
        if early.enabled:
            early.update(0, prior_loss, prompted.parameter_tensors())
    tokens_seen, t0 = 0, time.perf_counter()
    step = start
    # a run that had stopped early before it was killed stays stopped (its checkpoint holds the decision)
    end = start if early.enabled and early.bad >= early.patience else cfg.steps
    try:
        for step in range(start, end):
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
                # MAP: -lambda * log p(theta) / n, n = training examples; the prior lives on the prompt
                map_term = -cfg.prior_weight * prior.log_prob(prompted.prompt()) / len(train)
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
            evaluating = val and cfg.eval_every and (step + 1) % cfg.eval_every == 0 and \
                ((step + 1) < cfg.steps or early.enabled)  # the last step's loss is the final row's, unless it may be the best
            early_stop = False
            if evaluating:
                if dist.is_main:
                    row["val_loss"] = answer_loss(prompted, tok, val)
                    early_stop = early.enabled and early.update(step + 1, row["val_loss"],
                                                                 prompted.parameter_tensors())
                    if early_stop:
                        row["early_stop"] = {"best_step": early.best_step}
                early_stop = bool(dist.broadcast_int(int(early_stop)))
            if run is not None:
                run.log(row)
            bar.advance(loss=f"{loss_value:.4f}", speed=f"{row['tokens_per_s']:,.0f}",
                        **({"val": f"val {row['val_loss']:.4f}"} if "val_loss" in row else {}))
            last = step + 1 == cfg.steps or early_stop
            if dist.world == 1:
                stopping = stop_flag["signal"] is not None
            if run is not None and ((cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0) or last
                                    or stopping):
                _checkpoint(run, step + 1, prompted, optimizer, params, early)
            if stopping:
                raise Stop(stop_flag["signal"] or "SIGTERM", step + 1, out)
            if early_stop:
                break
    finally:
        bar.close()
        restore_handlers(handlers)
    dist.close(synchronize=True)  # every rank finished the last step; rank 0 evaluates alone
    if run is None:
        return out
    last_step = early.stopped_at or cfg.steps
    if early.enabled and early.best is not None:
        prompted.load_parameters(early.best)  # the posterior is the prompt of the best evaluation
    run.write_posterior(prompted.tensors())
    if prompted.reparameterized:
        run.write_parameters(prompted.parameter_tensors())
    crash_point("posterior")  # a posterior and no eval.json yet
    # No score without examples: --test-size 0 / --eval-size 0 skip their evaluation and say so.
    result = evaluate(prompted, plan.task, plan.test) if plan.test else skipped(plan.task, "--test-size 0")
    rows = item_rows(result)
    if early.enabled:
        result["early_stop"] = early.summary(last_step)
    final = {"step": last_step}
    if val:
        final["val_loss"] = answer_loss(prompted, tok, val)
    if plan.test:
        final["val_score"] = result[TUNED]["score"]
    if len(final) > 1:
        run.log(final)
    run.write_eval(result, rows)
    return out


def _checkpoint(run, step, prompted, optimizer, params, early) -> None:
    """The parameters (not the prompt they materialize), their Adam moments, the RNG and early stopping's state."""
    tensors = {f"param.{n}": t for n, t in prompted.parameter_tensors().items()}
    for n, p in params.items():
        state = optimizer.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"adam.{n}.{key}"] = state[key]
        if "step" in state:
            tensors[f"adam.{n}.step"] = torch.as_tensor(state["step"], dtype=torch.float64).reshape(1)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors.update(early.tensors())
    run.save_checkpoint(step, tensors, {"lr": optimizer.param_groups[0]["lr"]})


def _restore(run, prompted, optimizer, params, dist, early) -> int:
    found = run.latest_checkpoint() if run is not None else None
    if found is None:
        if run is not None:
            run.truncate_metrics(0)
        return dist.broadcast_int(0)
    tensors, state = found
    prompted.load_parameters({n: tensors[f"param.{n}"] for n in params})
    for n, p in params.items():
        if f"adam.{n}.exp_avg" in tensors:
            optimizer.state[p] = {"exp_avg": tensors[f"adam.{n}.exp_avg"].to(p.device),
                                  "exp_avg_sq": tensors[f"adam.{n}.exp_avg_sq"].to(p.device),
                                  "step": torch.tensor(float(tensors[f"adam.{n}.step"][0]))}
    torch.set_rng_state(tensors["rng.torch"])
    early.load(tensors)
    if early.enabled and early.bad >= early.patience:
        early.stopped_at = int(state["step"])
    run.truncate_metrics(int(state["step"]))
    return dist.broadcast_int(int(state["step"]))
