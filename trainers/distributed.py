"""Data-parallel training under torchrun (gloo on CPU, nccl on CUDA). A plain `python experiment.py`
is one process and every function here is then a no-op.

    torchrun --nproc_per_node=N experiment.py --out_dir=run_1 ...

How the work is split (written by hand: SAELens's trainer is single-process, and DDP's wrapper would
not see the gradients SAELens's `step()` computes and clips inside one call):
- every rank builds the same buffer (same seed, same order of sequences and rows); each refill's
  sequences are split between the ranks, each rank runs the model on (or reads from the activation
  cache) only its share, and the shares are all-gathered, so every rank holds the same storage
  (a variant's neighbour lookups need whole sequences);
- each step's batch is split the same way: rank r trains on its contiguous share (`my_share`);
- gradients are averaged over ranks as each is accumulated (`average_gradients`: hooks that run
  inside SAELens's `loss.backward()`, so its gradient clipping and optimizer step see the average,
  as a single process with the whole batch would);
- the dead-feature counters are merged (a feature that fired on any rank fired) and the logged
  numbers are averaged over ranks, so every rank takes the same decisions;
- rank 0 alone writes checkpoints, evaluates and writes the run; the others stop after training.
Each rank's share of the batch is an equal slice, so the mean of the ranks' losses is the loss of the
whole batch for terms that are means over rows (ReLU's and TopK's); a term computed over the batch
as a whole (a contrastive loss, AuxK's dead-feature residual) sees only its rank's share.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def local_world() -> int:
    """Processes on this node (torchrun's LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def init(device: str) -> None:
    """Join torchrun's process group when started by torchrun (WORLD_SIZE > 1); nccl for CUDA, gloo
    for CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if int(os.environ.get("RANK", "0")) != 0:
        os.environ["TQDM_DISABLE"] = "1"  # one set of progress bars: rank 0's
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)


def device_for(device: str) -> str:
    """Under torchrun on CUDA, each process takes the GPU of its LOCAL_RANK."""
    if world() > 1 and device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def close() -> None:
    if world() > 1:
        dist.destroy_process_group()


def bounds(n: int, r: int | None = None, w: int | None = None) -> tuple[int, int]:
    """[start, end) of rank r's contiguous share of n items (the first n % w ranks get one more)."""
    r, w = rank() if r is None else r, world() if w is None else w
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return start, start + base + (r < extra)


def my_share(batch):
    """This rank's contiguous slice of a batch (an ActivationBatch: every field sliced alike)."""
    if world() == 1:
        return batch
    start, end = bounds(len(batch.seq))
    return type(batch)(*(getattr(batch, f)[start:end] for f in ("acts", "seq", "pos", "rows", "doc")))


def gather_fill(seq_ids: torch.Tensor, compute) -> torch.Tensor:
    """Activations [n, ...] of all `seq_ids`, each rank computing `compute(its share)` only."""
    if world() == 1:
        return compute(seq_ids)
    w, n = world(), len(seq_ids)
    mine = compute(seq_ids[slice(*bounds(n))])
    longest = bounds(n, 0, w)[1]  # rank 0's share is the longest: pad every share to it
    padded = torch.zeros((longest, *mine.shape[1:]), dtype=mine.dtype, device=mine.device)
    padded[:len(mine)] = mine
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:e - s] for p, (s, e) in zip(parts, (bounds(n, r, w) for r in range(w)))])


class GradientAverage:
    """Hooks that replace each parameter's accumulated gradient by its mean over ranks, inside
    backward (SAELens's `step()` then clips and steps on the average). Hooks are not pickled with a
    checkpoint; `release()` removes them after training."""

    def __init__(self, module: torch.nn.Module):
        self.handles = []
        if world() == 1:
            return
        for p in module.parameters():
            if p.requires_grad:
                self.handles.append(p.register_post_accumulate_grad_hook(self._average))

    @staticmethod
    def _average(p: torch.Tensor) -> None:
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad /= world()

    def release(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def merge_dead_counters(since_fired: torch.Tensor) -> None:
    """SAELens's steps-since-fired counters, in place: a feature fired if it fired on any rank."""
    if world() > 1:
        dist.all_reduce(since_fired, op=dist.ReduceOp.MIN)


def mean_over_ranks(values: dict) -> dict:
    """The mean over ranks of a dict of numbers or scalar tensors (one all-reduce); floats back."""
    if world() == 1:
        return {k: float(v) for k, v in values.items()}
    keys = list(values)
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"  # nccl: GPU tensors only
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / world() for k, v in zip(keys, t.tolist())}


@torch.no_grad()
def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """trainers.metrics.explained_variance of the whole batch, from each rank's share: the error and
    the variance about the whole batch's mean are sums, all-reduced (a mean of the ranks' values would
    measure each share about its own mean)."""
    from trainers.metrics import explained_variance as single

    if world() == 1:
        return single(x, x_hat)
    x, x_hat = x.double(), x_hat.double()
    n = torch.tensor([float(len(x))], dtype=torch.float64, device=x.device)
    parts = torch.cat([n, (x - x_hat).pow(2).sum()[None], x.pow(2).sum()[None], x.sum(0)])
    dist.all_reduce(parts, op=dist.ReduceOp.SUM)
    n, error, sum_sq, sum_x = parts[0], parts[1], parts[2], parts[3:]
    total = sum_sq - sum_x.pow(2).sum() / n  # sum ||x - mean||^2 = sum ||x||^2 - n ||mean||^2
    return float(1 - error / total.clamp_min(1e-30))
