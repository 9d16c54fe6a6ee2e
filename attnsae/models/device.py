"""Which device a command runs on: "auto" (the first CUDA GPU when there is one, else the CPU; under torchrun
the rank's own GPU), "cpu", "cuda" or "cuda:N". A device that is not there is refused with the reason, never silently replaced."""

from __future__ import annotations

import re

import torch

from .. import distributed

DEVICE_HELP = "auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    if isinstance(spec, torch.device):
        spec = str(spec)
    if spec in ("auto", "cuda") and distributed.world() > 1 and torch.cuda.is_available():
        spec = f"cuda:{distributed.local_rank() % torch.cuda.device_count()}"  # under torchrun: this rank's GPU
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not m:
        raise ValueError(f"device {spec!r}: give {DEVICE_HELP}")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(m[1] or 0)
    if index >= n:
        why = "torch was built without CUDA" if torch.version.cuda is None else f"torch sees {n} CUDA device(s)"
        raise ValueError(f"device {spec!r} is not available: {why}; use --device cpu or auto")
    return torch.device("cuda", index)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on this device (matmuls in bf16, parameters and reductions as they are)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on `device`: the GPU's free memory, or the host's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def fits(need: dict[str, int], device: torch.device, advice: str) -> tuple[bool, str]:
    """(whether the parts `need` ({what: bytes}) fit in what `device` has free, the message when they do not)."""
    total, free = sum(need.values()), available_memory(device)
    parts = ", ".join(f"{what} {n / 2**30:.1f} GiB" for what, n in need.items())
    return total <= free, (f"this needs about {total / 2**30:.1f} GiB on {device} ({parts}) but {free / 2**30:.1f} GiB is "
                           f"free; {advice}")

