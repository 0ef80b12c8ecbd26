"""torchrun processes: this process's device, joining and leaving the process group, sharing
work out and gathering results, and the random states that make every process draw alike.

Without torchrun every helper acts as for one process (all the work, no communication).
"""

import contextlib
import logging
import os
import random
from typing import NamedTuple

import numpy as np

import run_utils
from run_utils import UsageError

# loaded on first use, so that --help and argument errors appear at once
torch = run_utils.LazyModule("torch")


def resolve_device(name, local_rank=0):
    """``auto`` -> the local rank's GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available; use --device cpu")
    return device


def autocast_dtype(precision, device):
    """The autocast dtype for ``--precision`` on ``device`` (None: plain fp32)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class Processes(NamedTuple):
    """This process's device and rank, and the number of processes (1 without torchrun)."""

    device: "torch.device"
    rank: int
    world_size: int

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def folder_lock(self, folder):
        """``run_utils.FolderLock(folder)`` in rank 0, which alone writes results; nothing in
        the other processes."""
        return run_utils.FolderLock(folder) if self.is_main else contextlib.nullcontext()


def setup_processes(device):
    """Join the torchrun process group (if torchrun started this process; one node or several
    through its rendezvous) and pick the device (``--device``; ``auto``: the local rank's GPU).
    Processes other than rank 0 log warnings and errors only."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    processes = Processes(device, torch.distributed.get_rank() if world_size > 1 else 0, world_size)
    if not processes.is_main:
        logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))
    return processes


def leave_processes():
    """Leave the torchrun process group, if this process joined one."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def process_group(device):
    """The block runs in this process and the others of its torchrun process group (if any):
    ``setup_processes(device)`` gives the block its ``Processes``, and the group is left after
    the block, also after an error."""
    try:
        yield setup_processes(device)
    finally:
        leave_processes()


def is_main_process():
    """Whether this process is rank 0 of the torchrun process group (or runs alone); only it
    writes results and shows progress bars."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def barrier():
    """Wait for every process of the torchrun process group (nothing without one)."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the block before the other processes do (they then read what it saved:
    noise ceilings, caches, the run folder), as every process sees the same file system."""
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        torch.distributed.barrier()
    yield
    if torch.distributed.is_initialized() and torch.distributed.get_rank() == 0:
        torch.distributed.barrier()


def process_share(n):
    """This process's contiguous share of ``range(n)`` (a slice; as ``np.array_split`` cuts it
    over the processes; all of it without torchrun)."""
    if not torch.distributed.is_initialized():
        return slice(0, n)
    base, extra = divmod(n, torch.distributed.get_world_size())
    rank = torch.distributed.get_rank()
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def process_items(costs):
    """The indices of the items (``costs``: one number each) this process handles, the items
    dealt out greedily, costliest first, to the process with the least work so far; every
    item without torchrun. The same on every process, for the same ``costs``."""
    if not torch.distributed.is_initialized():
        return list(range(len(costs)))
    loads = [0.0] * torch.distributed.get_world_size()
    mine = []
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        process = loads.index(min(loads))
        loads[process] += costs[index]
        if process == torch.distributed.get_rank():
            mine.append(index)
    return sorted(mine)


def gather_from_processes(part):
    """Every process's ``part`` (any picklable object), in rank order: ``[part]`` without
    torchrun."""
    if not torch.distributed.is_initialized():
        return [part]
    parts = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, part)
    return parts


def rng_state():
    """The global random states of Python, numpy, torch and CUDA (for checkpoints)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    """Put back the global random states ``rng_state`` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed):
    """Seed the global random states of Python, numpy and torch (and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed):
    """Every global random state seeded with ``seed`` for a block, then put back: transformers
    draws SpecAugment masks and layerdrop from numpy's, dropout from torch's."""
    state = rng_state()
    seed_everything(seed)
    try:
        yield
    finally:
        set_rng_state(state)


def sum_across_processes(tensors):
    """Add up each tensor over the processes, in place (nothing without torchrun); one
    all-reduce for all of them. ``tensors``: same device and dtype."""
    if not torch.distributed.is_initialized() or not tensors:
        return
    flat = torch.cat([tensor.reshape(-1) for tensor in tensors])
    torch.distributed.all_reduce(flat)
    for tensor, summed in zip(tensors, flat.split([tensor.numel() for tensor in tensors])):
        tensor.copy_(summed.view_as(tensor))


def sum_gradients(parameters):
    """Add up the gradients of ``parameters`` over the processes (nothing without torchrun):
    with each process's loss its share of the whole, the sum is the whole loss's gradient. A
    parameter without a gradient in some processes counts as zero there; one without a
    gradient in any keeps none, so that the optimiser skips it as one process's would."""
    if not torch.distributed.is_initialized():
        return
    parameters = list(parameters)
    present = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float32,
                           device=parameters[0].device)
    torch.distributed.all_reduce(present)
    used = [p for p, count in zip(parameters, present.tolist()) if count > 0]
    for parameter in used:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    sum_across_processes([parameter.grad for parameter in used])

