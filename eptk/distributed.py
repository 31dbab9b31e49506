"""Data parallelism over torch.distributed (torchrun / accelerate launch); one process is the default.

Each rank takes every world-th example of each global batch; the loss is normalized by the global
batch's answer tokens, so summing the ranks' gradients gives exactly the single-process gradient.
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

    @classmethod
    def from_env(cls) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
        return cls(rank=dist.get_rank(), world=dist.get_world_size(),
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")))

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

    def sum_scalar(self, value: float) -> float:
        if self.world == 1:
            return value
        import torch.distributed as dist
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t)

    def broadcast_int(self, value: int) -> int:
        if self.world == 1:
            return value
        import torch.distributed as dist
        t = torch.tensor([value], dtype=torch.long)
        dist.broadcast(t, src=0)
        return int(t)
