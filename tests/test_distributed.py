"""Data-parallel tuning under torchrun (2 processes, gloo on CPU) against one process with the same seed.

Each rank takes a shard of every global batch and the prompt gradients are summed, so the posterior
must match the single-process one (fp32 CPU, within 1e-5); only rank 0 writes, prints and evaluates;
a resumed 2-process run (rank 0 reads the checkpoint, broadcasts step, parameters and Adam state)
ends where the uninterrupted runs end.
"""
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

TINY = ["--model", "tiny", "--method", "deep", "--layers", "last:2", "--steps", "4", "--batch-size", "4",
        "--eval-size", "4", "--test-size", "4", "--train-size", "64", "--checkpoint-every", "2", "--lr", "0.05",
        "--warmup", "0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("EPTK_DEBUG", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "eptk.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)


def _posterior(run):
    from safetensors.torch import load_file
    return load_file(str(run / "posterior.safetensors"))


def _max_diff(a, b) -> float:
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _loss_steps(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    from eptk.cli.main import main
    out = tmp_path_factory.mktemp("single") / "run"
    assert main(["tune", *TINY, "--quiet", "--out", str(out)]) == 0
    return out


def test_two_processes_match_one_and_resume(tmp_path, single):
    out = tmp_path / "ddp"
    done = _torchrun("tune", *TINY, "--out", out)  # no --quiet: rank 1 must stay silent on its own
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory:") == 1, done.stdout  # only rank 0 prints the eval
    assert "Traceback" not in done.stderr
    diff = _max_diff(_posterior(single), _posterior(out))
    assert diff <= 1e-5, diff
    assert _loss_steps(out) == [1, 2, 3, 4], "each step logged once, by rank 0 only"
    single_rows = [json.loads(l) for l in (single / "metrics.jsonl").read_text().splitlines()]
    ddp_rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(single_rows, ddp_rows):
        if "loss" in a:
            assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4
    assert json.loads((out / "eval.json").read_text())["tuned"]["n"] == 4
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        ["checkpoint", "config.json", "eval.json", "metrics.jsonl", "posterior.safetensors", "predictions.jsonl",
         "prior.safetensors"])

    # Roll the run back to its step-2 checkpoint, as if killed after it, and resume on 2 processes.
    ckpt = out / "checkpoint"
    shutil.rmtree(ckpt / "step-00000004")
    (ckpt / "latest").write_text("step-00000002\n")
    for name in ("posterior.safetensors", "eval.json"):
        (out / name).unlink()
    resumed = _torchrun("tune", "--resume", out, "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("run directory:") == 1, resumed.stdout
    diff = _max_diff(_posterior(single), _posterior(out))
    assert diff <= 1e-5, f"resumed 2-process posterior differs by {diff}"
    assert _loss_steps(out) == [1, 2, 3, 4], "no step logged twice or lost"


def test_rank0_usage_error_stops_every_rank(tmp_path, single):
    """rank 0 alone checks --out; the other ranks must fail with it, not wait in a collective."""
    done = _torchrun("tune", *TINY, "--quiet", "--out", single)  # already a run, no --overwrite
    assert done.returncode != 0
    assert done.stderr.count("error: --out") == 2, done.stderr[-3000:]  # both ranks, with rank 0's message


def test_close_frees_the_process_group(tmp_path):
    """destroy_process_group must free the group: one kept alive (transformers imports torch's fsdp,
    whose functions take the default group as a default argument) leaves gloo's worker threads to free
    their last collective during interpreter shutdown, which aborts one exit in five. The refcount says
    so deterministically."""
    script = tmp_path / "close.py"
    script.write_text(
        "import sys, pathlib, torch, torch.distributed as dist\n"
        "from eptk.distributed import Distributed\n"
        "d = Distributed.from_env()\n"
        "import transformers.modeling_utils  # noqa: F401  (imports torch.distributed.fsdp)\n"
        "[total] = d.sum_values([1.0])\n"
        "pg = dist.group.WORLD\n"
        "d.close(synchronize=True)\n"
        "refs = sys.getrefcount(pg) - 1  # -1: getrefcount's own argument\n"
        "del pg  # the script's own reference must go too, or the group is freed at shutdown: the abort itself\n"
        "pathlib.Path(sys.argv[1], f'rank{d.rank}.txt').write_text(f'{total} {refs}')\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(_free_port()), str(script), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):  # the sum crossed both ranks; only the script's own `pg` still holds the group
        assert (tmp_path / f"rank{rank}.txt").read_text() == "2.0 1"
