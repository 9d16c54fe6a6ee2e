"""Scale-out on torch.distributed: the same commands under `torchrun` across processes, GPUs and machines.

torchrun starts one process per rank and sets RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT; `init` joins
the process group they describe (NCCL on GPUs, gloo on CPUs). Without torchrun the world is one process and
every helper here is a no-op, so the single-process code path is the same code.

Training SAEs on many ranks takes one of two layouts (`Layout`, after EleutherAI sparsify):
  data     every rank holds every SAE and trains it on its slice of each global batch; gradients (and the
           firing counts, BatchTopK's batch-wide selection, AuxK's normaliser) are reduced across ranks, so
           every rank's SAE stays identical and equal to the one-process SAE of the same global batch.
  modules  each rank owns some hooks' SAEs and trains them on the whole global batch; streamed activations
           are exchanged (all-to-all) so each rank receives its hooks' rows from every rank's model forward.
"auto" takes modules when there are at least as many hooks as ranks, else data.

A global batch does not depend on the number of ranks (a rank's part is a contiguous slice of it), so a run
resumes from its checkpoints with any number of ranks that divides the batch.
"""

from __future__ import annotations

import math
import os
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

BACKENDS = ("auto", "gloo", "nccl")
LAYOUTS = ("auto", "data", "modules")
# A collective waits this long for a rank before it fails (a rank that hangs, or one on a broken node); a rank
# that dies closes its connections, and the others fail at their next collective without waiting.
DEFAULT_TIMEOUT_S = 600


class RankFailed(RuntimeError):
    """Another rank stopped: this one cannot go on."""


def launched() -> bool:
    """Whether torchrun (or another launcher) started this process as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(backend: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Join the process group of a multi-process launch (a no-op without one, or once joined)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: give one of {', '.join(BACKENDS)}")
    if not launched() or dist.is_initialized():
        return
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("NCCL needs CUDA GPUs and torch sees none; use --dist-backend gloo to run the ranks on CPUs")
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))


def shutdown() -> None:
    """Leave the process group, all ranks together (a rank that tears down while another still talks to it can abort
    the other); after a failure the barrier fails at once and the rank just leaves."""
    if dist.is_initialized():
        try:
            dist.barrier()
        except RuntimeError:
            pass
        dist.destroy_process_group()


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def rank_env() -> int:
    """This process's rank as the launcher set it (known before the process group is joined)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0 (or one process); the launcher's RANK says so also before joining and after leaving."""
    return rank() == 0 if dist.is_initialized() else rank_env() == 0


def _collective(fn, *args):
    """Run a collective; a rank that stopped (closed connection, timeout) becomes one clear error."""
    try:
        return fn(*args)
    except RuntimeError as e:  # dist.DistError included
        first = re.sub(r"^\[[^\]]*\]\s*", "", str(e).splitlines()[0] if str(e) else "")  # gloo's source location
        if not (isinstance(e, dist.DistError) or re.search(r"connection|closed|timed? ?out|reset by peer|broken pipe",
                                                           first, re.I)):
            raise  # not a rank gone: a bug, shown as one
        raise RankFailed(f"rank {rank()} of {world()}: another rank stopped or stopped answering ({first[:120]}); "
                         "stopping too. Re-run the same command to resume from the last checkpoint") from None


def _comm(t: torch.Tensor) -> torch.Tensor:
    """NCCL moves only GPU tensors: a CPU tensor goes through the rank's GPU."""
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        return t.to(f"cuda:{torch.cuda.current_device()}")
    return t


def _all_reduce(t: torch.Tensor, op) -> torch.Tensor:
    if world() > 1:
        c = _comm(t)
        _collective(dist.all_reduce, c, op)
        if c is not t:
            t.copy_(c)
    return t


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over the ranks, in place (returned)."""
    return _all_reduce(t, dist.ReduceOp.SUM)


def all_min(t: torch.Tensor) -> torch.Tensor:
    return _all_reduce(t, dist.ReduceOp.MIN)


def all_max(t: torch.Tensor) -> torch.Tensor:
    return _all_reduce(t, dist.ReduceOp.MAX)


def all_mean_grads(params, loss: torch.Tensor) -> torch.Tensor:
    """Average the parameters' gradients and `loss` over the ranks, in one all-reduce of one flat buffer; returns the
    mean loss. Each rank's loss is the mean over its equal share of the batch, so this is the global batch's."""
    params = [p for p in params if p.grad is not None]
    flat = torch.cat([p.grad.reshape(-1) for p in params] + [loss.detach().float().reshape(1)])
    all_sum(flat).div_(world())
    i = 0
    for p in params:
        p.grad.copy_(flat[i:i + p.grad.numel()].view_as(p.grad))
        i += p.grad.numel()
    return flat[-1]


def all_gather(t: torch.Tensor) -> torch.Tensor:
    """Every rank's `t` (same shape on all), concatenated along dim 0 in rank order."""
    if world() == 1:
        return t
    c = _comm(t.contiguous())
    out = [torch.empty_like(c) for _ in range(world())]
    _collective(dist.all_gather, out, c)
    return torch.cat(out).to(t.device)


def all_to_all(send: list[torch.Tensor], recv_shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """send[r] goes to rank r; returns what each rank sent here (shapes known in advance)."""
    if world() == 1:
        return [send[0]]
    # one flat buffer each way: gloo's list form wants equal shapes
    flat = _comm(torch.cat([t.reshape(-1) for t in send]))
    sizes = [math.prod(s) for s in recv_shapes]
    out = torch.empty(sum(sizes), dtype=flat.dtype, device=flat.device)
    _collective(dist.all_to_all_single, out, flat, sizes, [t.numel() for t in send])
    return [o.reshape(s).to(send[0].device) for o, s in zip(out.split(sizes), recv_shapes)]


def barrier() -> None:
    if world() > 1:
        _collective(dist.barrier)


def agree(ok: bool, message: str, error: type[Exception] = ValueError) -> None:
    """Raise error(message) on every rank when `ok` is False on any of them (so none waits for the others)."""
    if world() > 1:
        ok = bool(all_min(torch.tensor([int(ok)])).item())
    if not ok:
        raise error(message)


def same_on_all(value: int, what: str) -> None:
    """Refuse to go on when the ranks disagree about `value` (e.g. the step they resume from)."""
    if world() == 1:
        return
    lo, hi = all_min(torch.tensor([value])).item(), all_max(torch.tensor([value])).item()
    if lo != hi:
        raise ValueError(f"the ranks disagree about {what} ({lo} on one, {hi} on another); the run folder must be one "
                         "folder that every rank sees")


def span(n: int, r: int | None = None, w: int | None = None) -> tuple[int, int]:
    """[start, end) of rank r's contiguous share of n items (the first n % w ranks take one more)."""
    r, w = rank() if r is None else r, world() if w is None else w
    q, extra = divmod(n, w)
    start = r * q + min(r, extra)
    return start, start + q + (r < extra)


def local_rows(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous, equal slice of a global batch (data-parallel training)."""
    n = batch.shape[0] // world()
    return batch[rank() * n:(rank() + 1) * n]


def check_shared(folder) -> None:
    """Every rank writes a marker into `folder` and looks for everyone's: a folder that is not one shared
    folder (each node's own disk) would let the ranks silently resume from or write different files."""
    if world() == 1:
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    token = [secrets.token_hex(4) if is_main() else None]
    _collective(dist.broadcast_object_list, token)
    mine = folder / f".rank{rank()}.{token[0]}"
    mine.touch()
    barrier()
    missing = [r for r in range(world()) if not (folder / f".rank{r}.{token[0]}").exists()]
    barrier()
    mine.unlink(missing_ok=True)
    agree(not missing, f"{folder} is not one folder shared by every rank (rank {rank()} does not see the files of "
                       f"rank(s) {missing}); put it on a filesystem that every node mounts")


@dataclass(frozen=True)
class Layout:
    """How the ranks share training SAEs on `hooks` (see the module docstring)."""

    mode: str  # "data" or "modules"
    hooks: tuple[str, ...]
    rank: int = 0
    world: int = 1

    def owner(self, hook: str) -> int:
        """The rank that trains `hook`'s SAE (modules: round robin in hook order; data: every rank, 0 writes)."""
        return self.hooks.index(hook) % self.world if self.mode == "modules" else 0

    def owned(self, r: int | None = None) -> list[str]:
        """The hooks whose SAEs rank r (default this one) trains."""
        r = self.rank if r is None else r
        return [h for h in self.hooks if self.mode == "data" or self.owner(h) == r]

    def writes(self, hook: str) -> bool:
        """Whether this rank writes `hook`'s checkpoints and SAE (one writer per folder)."""
        return self.owner(hook) == self.rank

    @property
    def data_parallel(self) -> bool:
        return self.mode == "data" and self.world > 1

    def local(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch: its slice in data mode, all of it in modules mode."""
        return local_rows(batch) if self.data_parallel else batch


def layout(hooks: list[str], mode: str = "auto", batch_size: int | None = None) -> Layout:
    """The layout for training SAEs on `hooks` with this launch's ranks."""
    if mode not in LAYOUTS:
        raise ValueError(f"--distribute {mode!r}: give one of {', '.join(LAYOUTS)}")
    w = world()
    if mode == "auto":
        mode = "modules" if len(hooks) >= w > 1 else "data"
    if mode == "modules" and len(hooks) < w:
        raise ValueError(f"--distribute modules needs at least as many hooks as ranks ({len(hooks)} hooks, {w} ranks); "
                         "use --distribute data, or fewer ranks")
    if mode == "data" and w > 1 and batch_size is not None and batch_size % w:
        raise ValueError(f"--batch-size {batch_size} does not split evenly over {w} ranks; give a multiple of {w}")
    return Layout(mode, tuple(hooks), rank(), w)
