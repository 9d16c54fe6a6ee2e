"""Shared helpers for the benchmark scripts: the device, timing that is right on CUDA, the bf16 peak."""

from __future__ import annotations

import statistics
import sys
import time

import torch

CUDA_ROUNDS = 3  # timed rounds on CUDA; each is `reps` calls between two synchronizations


def device_from_args(spec: str, prog: str) -> torch.device:
    """`--device` through attnsae's resolver; a device that is not there is one line on stderr, exit 2."""
    from attnsae.models import resolve_device

    try:
        device = resolve_device(spec)
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if device.type == "cuda":
        torch.cuda.set_device(device)  # kernels, events and synchronize() all on this one
    return device


def describe(device: torch.device) -> str:
    """torch, and what it runs on: the GPU's name and memory, or the CPU's thread count."""
    s = f"torch {torch.__version__}"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return (f"{s} (CUDA {torch.version.cuda}), {device}: {p.name}, {p.total_memory / 2**30:.0f} GiB, "
                f"{p.multi_processor_count} SMs; fp32 matmul precision {torch.get_float32_matmul_precision()!r}")
    return f"{s}, {device}: {torch.get_num_threads()} threads"


def sync(device: torch.device | None) -> None:
    """Wait for the device's queued kernels (CUDA runs them asynchronously); nothing on the CPU."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor onto `device`, through pinned memory on CUDA (an asynchronous DMA copy)."""
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def timeit(fn, reps: int, warmup: int = 1, device: torch.device | None = None) -> float:
    """Seconds per call of `fn`.

    CPU: the median of `reps` single calls after `warmup` calls.
    CUDA: a call only queues kernels, so a clock read is meaningful only after torch.cuda.synchronize.
    After `warmup` calls and a synchronize, each of CUDA_ROUNDS rounds runs `reps` calls back to back
    between two synchronizations (so the GPU never waits for the host between calls, as in a real
    loop); the result is the median over rounds of the round's time / reps."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device is None or device.type != "cuda":
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)
    rounds = []
    for _ in range(CUDA_ROUNDS):
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        rounds.append((time.perf_counter() - t) / reps)
    return statistics.median(rounds)


def bf16_peak(n: int = 4096, reps: int = 3, device: torch.device | None = None, warmup: int = 1) -> float:
    """Achieved FLOP/s of one big square bf16 matmul [n, n] x [n, n] on `device`: its practical peak.
    2 n^3 FLOPs per product, timed with `timeit` (synchronized on CUDA)."""
    device = device or torch.device("cpu")
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)  # random data: zeros run faster on GPUs
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    out = torch.empty(n, n, dtype=torch.bfloat16, device=device)
    return 2 * n**3 / timeit(lambda: torch.mm(a, b, out=out), reps, warmup=warmup, device=device)


@torch.no_grad()
def bias_for_l0(x: torch.Tensor, W_enc: torch.Tensor, b_dec: torch.Tensor, l0: float) -> torch.Tensor:
    """b_enc such that about `l0` latents per row of x have (x - b_dec) W_enc + b_enc > 0: each
    latent's threshold sits between its n-th and (n+1)-th largest pre-activation over the rows,
    n = rows * l0 / d_sae (so every latent fires on about the same number of rows)."""
    pre_t = (W_enc.T @ (x[:4096] - b_dec).T)  # [d_sae, rows]
    n = max(1, min(pre_t.shape[1] - 1, round(pre_t.shape[1] * l0 / W_enc.shape[1])))
    top = pre_t.topk(n + 1, dim=1).values
    return -(top[:, n - 1] + top[:, n]) / 2


def measured_peak(peak_n: int | None, device: torch.device, reps: int, warmup: int, what: str) -> tuple[float, str]:
    """(the bf16 peak measured now, the line that says how it and the runs were timed): one wording for every
    benchmark. `peak_n` None takes 8192 on CUDA and 4096 on the CPU; `what` names the timed calls."""
    cuda = device.type == "cuda"
    n = peak_n or (8192 if cuda else 4096)
    peak = bf16_peak(n, reps=10 if cuda else 3, device=device, warmup=3 if cuda else 1)
    timing = (f"median of {CUDA_ROUNDS} rounds of {reps} {what} between synchronizations" if cuda
              else f"median of {reps} {what}")
    return peak, f"bf16 matmul peak (measured now, {n}^2): {peak / 1e12:.3f} TFLOP/s; {timing}, after {warmup} warm-up"
