"""Shared helpers for the benchmark scripts."""

from __future__ import annotations

import statistics
import time

import torch


def timeit(fn, reps: int, warmup: int = 1) -> float:
    """Median seconds of `reps` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def bf16_peak(n: int = 4096, reps: int = 3) -> float:
    """Achieved FLOP/s of one big bf16 matmul [n, n] x [n, n]: this machine's practical peak."""
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    return 2 * n**3 / timeit(lambda: a @ b, reps)


@torch.no_grad()
def bias_for_l0(x: torch.Tensor, W_enc: torch.Tensor, b_dec: torch.Tensor, l0: float) -> torch.Tensor:
    """b_enc such that about `l0` latents per row of x have (x - b_dec) W_enc + b_enc > 0: each
    latent's threshold sits between its n-th and (n+1)-th largest pre-activation over the rows,
    n = rows * l0 / d_sae (so every latent fires on about the same number of rows)."""
    pre_t = (W_enc.T @ (x[:4096] - b_dec).T)  # [d_sae, rows]
    n = max(1, min(pre_t.shape[1] - 1, round(pre_t.shape[1] * l0 / W_enc.shape[1])))
    top = pre_t.topk(n + 1, dim=1).values
    return -(top[:, n - 1] + top[:, n]) / 2
