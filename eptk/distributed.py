"""Data parallelism over torch.distributed (torchrun / accelerate launch); one process is the default.

Each rank takes every world-th example of each global batch; the loss is normalized by the global
batch's answer tokens, so summing the ranks' gradients gives exactly the single-process gradient.
Only rank 0 touches the run directory: it reads the checkpoint on resume and broadcasts the step,
the prompt parameters and the optimizer state; it alone logs, evaluates and writes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this object initialized the process group (and closes it)

    @classmethod
    def from_env(cls) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        owns = False
        if not dist.is_initialized():
            # Imported before the group exists, since its functions take `group=group.WORLD` as a default
            # evaluated at import: imported after (transformers imports it via fsdp), they pin the default
            # group forever, destroy_process_group cannot free it, and gloo's worker threads then free
            # their last collective during interpreter shutdown and abort ("terminate called without an
            # active exception", one exit in five).
            import torch.distributed.nn.functional  # noqa: F401
            if torch.cuda.is_available():
                if local_rank < torch.cuda.device_count():  # more ranks than GPUs: a --device cpu run
                    torch.cuda.set_device(local_rank)
                # NCCL for the CUDA tensors, gloo for the small CPU ones (scalars, the step, a CPU run).
                backend = "cuda:nccl,cpu:gloo"
            else:
                backend = "gloo"
            dist.init_process_group(backend)
            owns = True
        return cls(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, owns_group=owns)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def default_device(self) -> str:
        if torch.cuda.is_available():
            return f"cuda:{self.local_rank}" if self.world > 1 else "cuda"
        return "cpu"

    def shard(self, items: list) -> list:
        return items[self.rank::self.world]

    def all_reduce_grads(self, params) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)

    def broadcast_params(self, params) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def broadcast_optimizer_state(self, optimizer, params) -> None:
        """Give every rank rank 0's Adam moments and step counts (rank 0 alone read the checkpoint)."""
        if self.world == 1:
            return
        import torch.distributed as dist
        for p in params:
            state = optimizer.state[p]
            keys = ("exp_avg", "exp_avg_sq", "step")
            has = self.broadcast_int(int(all(k in state for k in keys)) if self.is_main else 0)
            if not has:
                optimizer.state.pop(p, None)
                continue
            if not self.is_main:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            for key in ("exp_avg", "exp_avg_sq"):
                dist.broadcast(state[key], src=0)
            step = torch.tensor([float(state["step"]) if self.is_main else 0.0], dtype=torch.float64)
            dist.broadcast(step, src=0)
            if self.is_main:
                continue
            state["step"] = torch.tensor(float(step[0]), dtype=torch.float32)

    def sum_values(self, values) -> list[float]:
        """Sum a few floats over the ranks (one collective)."""
        values = [float(v) for v in values]
        if self.world == 1:
            return values
        import torch.distributed as dist
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(x) for x in t]

    def broadcast_int(self, value: int) -> int:
        if self.world == 1:
            return value
        import torch.distributed as dist
        t = torch.tensor([value], dtype=torch.long)
        dist.broadcast(t, src=0)
        return int(t)

    def broadcast_error(self, message: str | None) -> str | None:
        """Rank 0's error message (or None) on every rank, so that all ranks fail together. It travels as
        UTF-8 bytes in a tensor (the object collectives pickle)."""
        if self.world == 1:
            return message
        import torch.distributed as dist
        data = (message or "").encode("utf-8") if self.is_main else b""
        size = self.broadcast_int(len(data) if message is not None else -1)
        if size < 0:
            return None
        buffer = torch.tensor(list(data), dtype=torch.uint8) if self.is_main else torch.zeros(size, dtype=torch.uint8)
        dist.broadcast(buffer, src=0)
        return bytes(buffer.tolist()).decode("utf-8")

    def close(self, synchronize: bool = False) -> None:
        """Leave the process group this object created. `synchronize` where every rank gets here (after
        the last step): a barrier first, so that no rank tears its connections down while another still
        uses them; rank 0 then evaluates alone. Error paths skip it: a rank that failed alone must not
        wait in a collective the others never join."""
        if self.owns_group:
            import torch.distributed as dist
            if dist.is_initialized():
                if synchronize:
                    dist.barrier()
                dist.destroy_process_group()
            self.owns_group = False
