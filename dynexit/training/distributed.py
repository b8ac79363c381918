"""What training needs under ``torchrun`` besides DDP itself: exact validation shards, gradient averaging.

- :class:`ShardSampler`: process r of W gets items r, r + W, r + 2W, ... of a dataset, with no padding,
  so that per-rank counts summed with ``all_reduce`` count every validation sample exactly once
  (torch's ``DistributedSampler`` pads the last shard with repeated samples to even the shards out);
- :func:`average_gradients`, :func:`broadcast_module`: data-parallel training of a part of a model
  (the exits on a frozen backbone), as DDP does for a whole one (Li et al., "PyTorch Distributed:
  Experiences on Accelerating Data Parallel Training", VLDB 2020): every rank starts from rank 0's
  weights and steps with the gradient averaged over the ranks.
"""

from __future__ import annotations

import torch


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardSampler(torch.utils.data.Sampler):
    """Positions ``rank, rank + world, ...`` of ``n`` items: disjoint shards covering each item once.

    ``rank`` / ``world`` default to the process group's (0 and 1 without one). Shards differ in length
    by at most one item; nothing is padded or repeated.
    """

    def __init__(self, n: int, rank: int | None = None, world_size: int | None = None):
        r, w = world()
        self.n, self.rank, self.world = int(n), r if rank is None else int(rank), w if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} outside a world of {self.world} processes")

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def shard_loader(dataset, batch_size: int = 512, num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A validation DataLoader over this process's :class:`ShardSampler` shard of ``dataset`` (all of it alone)."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset)),
                                       num_workers=num_workers)


def average_gradients(params) -> None:
    """Replace each parameter's ``.grad`` by its mean over the ranks (no-op alone); parameters
    without a gradient are given zeros first, so every rank joins the same collectives."""
    import torch.distributed as dist

    rank, size = world()
    if size == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(size)


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank's ``module`` (no-op alone)."""
    import torch.distributed as dist

    if world()[1] == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)
