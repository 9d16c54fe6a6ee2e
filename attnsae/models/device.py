"""Which device a command runs on: "auto" (the first CUDA GPU when there is one, else the CPU), "cpu",
"cuda" or "cuda:N". A device that is not there is refused with the reason, never silently replaced."""

from __future__ import annotations

import re

import torch

DEVICE_HELP = "auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    if isinstance(spec, torch.device):
        spec = str(spec)
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
