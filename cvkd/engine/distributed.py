"""Multi-process training on PyTorch's own engine: ``torchrun`` sets the env, we set up the process group, shard the
data with a DistributedSampler and wrap the trainable parts in DistributedDataParallel. NCCL on CUDA, gloo on CPU."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from ..config import ConfigError
from ..runs import pick_device


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device_name: str) -> tuple[Dist, torch.device]:
    """Read torchrun's env (WORLD_SIZE, RANK, LOCAL_RANK); one process = no process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), pick_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local), device


def cleanup(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(d: Dist, obj):
    """Rank 0's value of a picklable object, on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def broadcast_tensors(d: Dist, tensors) -> None:
    """Overwrite each tensor in place with rank 0's value."""
    if d.enabled:
        for t in tensors:
            dist.broadcast(t, src=0)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def mean_across(d: Dist, value: torch.Tensor) -> torch.Tensor:
    if not d.enabled:
        return value
    v = value.detach().clone().float()
    dist.all_reduce(v)
    return v / d.world


def sum_across(d: Dist, value: torch.Tensor) -> torch.Tensor:
    if not d.enabled:
        return value
    v = value.detach().clone().float()
    dist.all_reduce(v)
    return v


def sharded_loader(d: Dist, dataset, global_batch: int, workers: int, seed: int, epoch: int, collate_fn, init_fn):
    """Each rank gets ``global_batch / world`` images per step from its shard; shuffling seeded per epoch."""
    if global_batch % d.world:
        raise ConfigError(f"train.batch={global_batch} must be divisible by the number of processes ({d.world})")
    sampler = DistributedSampler(dataset, num_replicas=d.world, rank=d.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return DataLoader(dataset, batch_size=global_batch // d.world, sampler=sampler, num_workers=workers,
                      collate_fn=collate_fn, worker_init_fn=init_fn, pin_memory=torch.cuda.is_available())


def check_replicas(d: Dist, module: torch.nn.Module) -> bool:
    """True when every rank holds bit-identical parameters (compares per-tensor sums and sums of squares)."""
    if not d.enabled:
        return True
    sig = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().pow(2).sum()])
                       for p in module.parameters()]).flatten()
    gathered = [torch.zeros_like(sig) for _ in range(d.world)]
    dist.all_gather(gathered, sig)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])
