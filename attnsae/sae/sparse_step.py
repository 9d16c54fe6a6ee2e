"""A sparsity-aware SAE training forward/backward, as one `torch.autograd.Function`.

    pre = (x - b_dec) @ W_enc + b_enc;   f = relu(pre), topk-relu(pre) or pre * H(pre - theta);   x_hat = f @ W_dec + b_dec

Plain autograd spends six [B, d_in] x [d_in, d_sae]-sized matmuls on a step (encoder and decoder
forward; grad f, grad W_dec, grad W_enc, grad x). Only the encoder forward really needs to be
dense: f has a few dozen active entries per row, and relu' (or the TopK selection) is zero
elsewhere, so everything else touches only the active set:

  decoder forward    x_hat = embedding_bag(col, W_dec, offsets, weights=f_active)
  grad f (active)    sampled_addmm: (W_dec @ grad_xhat^T) at the active entries, by latent (each W_dec row read
                     once: 14 ms where by input takes 41), + grad_f there
  grad W_dec         CSR(f)^T @ grad_xhat          (MKL sparse mm; the transposed pattern built once)
  grad W_enc         (CSR(grad_pre)^T @ (x - b_dec))^T
  grad b_enc         index_add of grad_pre over the active columns
  grad b_dec         sum_b grad_xhat - W_enc @ grad b_enc   (a matrix-vector product)

The gradients are those of plain autograd on the same expression (tests/test_sparse_step.py),
including any loss term the caller puts on f (L1, L1 x |W_dec|): grad f arrives dense and is
read only at the active entries. JumpReLU's threshold theta gets Rajamanoharan et al.'s
straight-through gradients (recipes/jumprelu.py), both for f and for the step's L0 output; their
kernel is non-zero only on the entries within bandwidth/2 of theta, a set as sparse as the active one:

  grad theta         -(theta/eps) * sum over that window of grad f   (sampled_addmm there, as above)
                     - (1/eps) * (window entries per latent) * grad L0 / B

When f is dense (early in a ReLU run, nnz per row above `dense_density * d_sae`) the same Function runs the plain
dense matmuls instead.

The primitives were chosen by timing the alternatives (benchmarks/bench_sparse_primitives.py;
B=4096, d_in=768, d_sae=24576, 64 active per row, 2 CPU threads shared with another job, ms):
decoder forward: embedding_bag 56, CSR mm 87. grad f: sampled_addmm 96 (int32 indices 95 vs
int64 100), embedding_bag's per-sample-weights backward 112, chunked gather-dot 1630. W_dec and
W_enc grads: CSR^T @ dense 56 (int32: 42) once the transposed pattern is built (its stable
argsort: numpy radix on uint16 1 ms, torch.sort 188), embedding_bag's dense backward 259,
csr.t() @ g 376, chunked index_add 1670. The dense bf16 matmul of the same shape: 760.
Whole step (forward + backward) at L0=66: 1.45 s sparse vs 4.6 s dense (bf16, contended);
crossover near L0=1000 (density 0.04) in bf16 and about 0.06-0.08 in fp32, hence DENSE_DENSITY.

`dtype=torch.bfloat16` runs the dense matmuls in bf16 as autocast would (the encoder always;
the decoder and backward ones on the dense path); parameters, f, x_hat and all gradients are
fp32, and the sparse parts run in fp32 (MKL's sparse kernels have no bf16). BatchTopK and JumpReLU
then never form autocast's fp32 pre = bf16 product + b_enc over all B x d_sae entries: their entries are
found from the bf16 product by comparing its bits as int16 against per-latent bounds (_at_least), and
pre is formed only there, the same values (at the sizes above, 113 ms of passes become 62).
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed

# Above this fraction of active entries (sampled from the batch) the step runs the dense matmuls.
# Measured crossover at d_sae=24576, B=4096, 2 threads: benchmarks/bench_sparse_primitives.py --step
# (bf16: sparse 2.17 s vs dense 2.29 s at density 0.041, 4.04 s at 0.081). The sparse path is
# memory-bound and the dense one FLOP-bound, so bf16 (2x the matmul FLOP/s) crosses over earlier.
DENSE_DENSITY = {torch.float32: 0.06, torch.bfloat16: 0.04}
_SAMPLE_ROWS = 256


def csr(crow, col, values, shape):
    """A CSR tensor from its parts, without checks or the beta warning."""
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _argsort_stable(col: torch.Tensor, n_cols: int) -> torch.Tensor:
    """Stable argsort of column indices: numpy's radix sort on uint16 (~1 ms for 270k entries,
    where torch.sort takes ~190 ms on this CPU)."""
    c = col.numpy()
    if n_cols <= 65536:
        c = c.astype(np.uint16)
    return torch.from_numpy(np.argsort(c, kind="stable"))


def _mm(a, b, dtype):
    if dtype == torch.float32:
        return a @ b
    return (a.to(dtype) @ b.to(dtype)).float()


# _largest: a strided sample of this many entries bounds the winners' smallest value from below
_SAMPLE_ENTRIES = 65536
_HASH_STRIDE = 2654435761  # a prime: sampled entries spread over rows and columns whatever B and d_sae are


def _flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Flat indices of the True entries of a contiguous bool tensor, ascending. Where few are True: nonzero() over
    it read as int64 words of 8 entries, then over the entries of the words that hold any (at 0.6% True, 100M
    entries: 24 ms where nonzero() takes 44)."""
    flat = mask.reshape(-1)
    if flat.numel() % 8 or flat.storage_offset() % 8:
        return flat.nonzero().squeeze(1)
    words = (flat.view(torch.int64) != 0).nonzero().squeeze(1)
    i = flat.view(-1, 8).index_select(0, words).view(-1).nonzero().squeeze(1)
    return words[i >> 3] * 8 + (i & 7)


def _at_least(pre: torch.Tensor, bound: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Flat indices, ascending, of the entries of pre [B, S] (+ bias [S]) >= bound (a scalar or [S]): with a bias
    and a bf16 pre, of a superset of them, from a compare of pre's bf16 bit patterns as int16 (no fp32 sum)."""
    if bias is None:
        return _flat_nonzero(pre >= bound)
    # pre + bias >= bound where pre >= t = bound - bias. t is lowered past its fp32 rounding and then rounded to a
    # bf16 below it; for t > 0 a bf16 pre >= t exactly when its bits, read as int16, are >= t's (negative values have
    # the sign bit, so read as negative numbers). Columns with t <= 0 compare in fp32.
    t = bound - bias
    t = t * (1 - 2**-7) - 2**-20 * (bound.abs() + bias.abs())
    low = t <= 0
    n_low = int(low.sum())
    if pre.dtype != torch.bfloat16 or 8 * n_low > len(t):
        return _flat_nonzero(torch.add(pre, bias) >= bound)
    mask = pre.view(torch.int16) >= t.clamp_min(1e-30).bfloat16().view(torch.int16)
    if n_low:
        cols = low.nonzero().squeeze(1)
        mask[:, cols] = pre[:, cols].float() >= t[cols]
    return _flat_nonzero(mask)


def _take(pre: torch.Tensor, idx: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The entries at flat indices `idx` of pre [B, S] (+ bias [S], in fp32). take gathers 2x faster than [r, c]."""
    vals = pre.reshape(-1).take(idx)
    return vals if bias is None else vals.float() + bias[idx % pre.shape[1]]


def _largest(pre: torch.Tensor, n: int, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, vals) of the n largest entries of pre [B, d_sae] (ties: any n of them), in row-major order. With
    `bias` [d_sae], of pre + bias in fp32 (pre may then be a bf16 matmul output: the sum is formed only where needed).

    Exact, and cheaper than a top-k over all B*d_sae entries (about 3x at d_sae 9216): a sample of the
    entries gives a value that about twice as many entries exceed; the winners are the top n of those,
    when there are at least n of them (else, rarely, of everything)."""
    B, S = pre.shape
    N = B * S
    m = min(N, _SAMPLE_ENTRIES)
    sample = _take(pre, torch.arange(m, device=pre.device) * _HASH_STRIDE % N, bias)
    rank = math.ceil(2 * n * m / N) + 32  # twice the expected winners in the sample, plus slack for its noise
    if rank < m:
        bound = sample.topk(rank, sorted=False).values.min()
        candidates = _at_least(pre, bound, bias)
        if len(candidates) >= n:
            vals, pick = _take(pre, candidates, bias).topk(n, sorted=False)
            order = pick.argsort()  # back to row-major order
            idx = candidates[pick[order]]
            return idx // S, idx % S, vals[order]
    vals, idx = (pre if bias is None else torch.add(pre, bias)).reshape(-1).topk(n, sorted=False)
    order = idx.argsort()
    idx = idx[order]
    return idx // S, idx % S, vals[order]


def batch_topk_entries(pre: torch.Tensor, k: int, across_ranks: bool = False,
                       bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, vals) of the B*k largest entries of pre [B, d_sae] over the whole batch (BatchTopK;
    ties: any B*k of them), in row-major order. `vals` may be <= 0 (the caller applies the ReLU). With `bias`
    [d_sae]: of pre + bias, in fp32 (pre may be a bf16 matmul output; see _largest).

    `across_ranks`: pre is this rank's rows of a global batch split over the ranks (data-parallel training):
    the entries among the global batch's (B * world)*k largest, found from every rank's local candidates."""
    B, S = pre.shape
    w = distributed.world() if across_ranks else 1
    if w == 1:
        return _largest(pre, min(B * k, B * S), bias)
    if bias is not None:
        pre = torch.add(pre, bias)
    n = min(B * k * w, B * S * w)
    _, _, candidates = _largest(pre, min(n, B * S))  # the global winners held here are among them
    threshold = distributed.all_gather(candidates).topk(n, sorted=False).values.min()
    # exactly n winners, as one process keeps: all entries above the threshold, then entries equal to it (equal rows
    # of a batch tie) in rank order until there are n
    above, tied = pre > threshold, pre == threshold
    counts = distributed.all_gather(torch.stack([above.sum(), tied.sum()])[None]).cpu()
    room = n - int(counts[:, 0].sum()) - int(counts[: distributed.rank(), 1].sum())
    tied_rows, tied_cols = tied.nonzero(as_tuple=True)
    keep = above.clone()
    keep[tied_rows[:max(0, room)], tied_cols[:max(0, room)]] = True
    rows, cols = keep.nonzero(as_tuple=True)
    return rows, cols, pre[rows, cols]


def batch_topk(pre: torch.Tensor, k: int, across_ranks: bool = False,
               select_bias: torch.Tensor | None = None) -> torch.Tensor:
    """relu(pre) [B, d_sae] with all but its B*k largest entries zeroed (BatchTopK; `across_ranks`: of the global
    batch, as batch_topk_entries). `select_bias` [d_sae]: the entries are chosen by pre + select_bias."""
    rows, cols, _ = batch_topk_entries(pre if select_bias is None else pre + select_bias, k, across_ranks)
    f = torch.zeros_like(pre)
    f[rows, cols] = pre[rows, cols].clamp_min(0)
    return f


def _sample_rows(B: int) -> torch.Tensor:
    """Rows spread over a batch of B, to estimate the density of f from."""
    return torch.linspace(0, B - 1, min(B, _SAMPLE_ROWS)).long() if B else torch.zeros(0, dtype=torch.long)


def _smallest(v: torch.Tensor) -> torch.Tensor:
    return v.masked_fill(v <= 0, math.inf).amin() if v.numel() else v.new_tensor(math.inf)


def firing_stats(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(how many inputs of the batch each latent fires on [d_sae], the smallest positive activation, inf if none)
    of feature activations f [B, d_sae] >= 0."""
    return (f > 0).sum(0), _smallest(f)


class SparseStep(NamedTuple):
    feature_acts: torch.Tensor
    """f [B, d_sae] (a sparse tensor without a gradient with dense_f=False, on the sparse path)"""
    reconstruction: torch.Tensor
    """x_hat [B, d_in]"""
    fired: torch.Tensor
    """[d_sae]: on how many inputs of the batch each latent fired (from the active set, without a pass over f)"""
    smallest: torch.Tensor
    """the smallest positive activation of the batch (inf if none; with a select_bias, the smallest kept score):
    BatchTopK's threshold estimate reads it"""
    l0: torch.Tensor
    """active latents per input, the batch's mean; for JumpReLU with a bandwidth, with eq. 12's straight-through
    gradient to the threshold (the L0 penalty's)"""


class _SparseSAEStep(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")  # backward then runs under forward's autocast state: off
    def forward(ctx, x, W_enc, b_enc, W_dec, b_dec, k, batch, dtype, apply_b_dec, dense_density, across_ranks,
                select_bias, threshold, bandwidth, dense_f):
        ctx.set_materialize_grads(False)  # an unused f gives grad None, not a dense zero tensor
        B, S = x.shape[0], W_enc.shape[1]
        xc = x - b_dec if apply_b_dec else x
        # BatchTopK with a selection bias chooses by pre + select_bias: added with b_enc, and taken off the winners
        bias = b_enc if select_bias is None or not batch else b_enc + select_bias
        # BatchTopK and JumpReLU in bf16 find their entries from the bf16 matmul output and the bias, and add the two
        # only there (as autocast would: in fp32): `pre` is then the bare product and `later` the bias still to add
        later = bias if dtype != torch.float32 and (batch or threshold is not None) else None
        if dtype == torch.float32:
            pre = torch.addmm(bias, xc, W_enc)
        elif later is not None:
            pre = xc.to(dtype) @ W_enc.to(dtype)
        else:  # as autocast: bf16 matmul, fp32 bias add (one pass that also upcasts)
            pre = torch.add(xc.to(dtype) @ W_enc.to(dtype), bias)
        entries = smallest = window = None
        if threshold is not None:  # JumpReLU
            sample = pre[_sample_rows(B)]
            sample = sample if later is None else sample.float() + later
            density = (sample > threshold).float().mean().item() if B else 0.0
            if density > dense_density:
                pre = pre if later is None else torch.add(pre, later)
                f = torch.where(pre > threshold, pre, 0.0)
                if bandwidth:  # where the kernel K((pre - theta) / eps) is 1: theta's straight-through gradient
                    u = (pre - threshold) / bandwidth
                    window = tuple(i.int() for i in ((u > -0.5) & (u < 0.5)).nonzero(as_tuple=True))
            else:  # the entries above theta - eps hold the active set and the window: one pass over pre
                floor = threshold - (bandwidth or 0)
                idx = _at_least(pre, floor, later)
                vals, col = _take(pre, idx, later), idx % S
                above = vals > floor[col]
                row, col, vals = idx[above] // S, col[above], vals[above]
                theta = threshold[col]
                keep = vals > theta
                entries = row[keep], col[keep], vals[keep]
                if bandwidth:
                    u = (vals - theta) / bandwidth
                    near = (u > -0.5) & (u < 0.5)
                    window = row[near].int(), col[near].int()
                f = None
        elif batch:  # BatchTopK: then the ReLU path below (relu' = 1 on every kept entry)
            row, col, scores = batch_topk_entries(pre, k, across_ranks, later)
            vals = scores if select_bias is None else scores - select_bias[col]
            keep = vals > 0
            entries = row[keep], col[keep], vals[keep]
            smallest = _smallest(scores[keep])  # the threshold is on the score the entries were chosen by
            f, k, density = None, None, k / S
        elif k is None:
            f = pre.clamp_min_(0)
            density = (f[_sample_rows(B)] > 0).float().mean().item() if B else 0.0
        else:
            vals, idx = pre.topk(k, dim=-1, sorted=False)
            vals.clamp_min_(0)
            entries = torch.arange(B).repeat_interleave(k), idx.flatten(), vals.flatten()
            f, density = None, k / S
        ctx.dims = (B, S, k, dtype, apply_b_dec, bandwidth)
        ctx.dense = density > dense_density
        ctx.window = window
        if window is not None:
            ctx.theta = threshold.detach()
        if f is None and (ctx.dense or dense_f):
            f = torch.zeros_like(pre, dtype=torch.float32)
            f[entries[0], entries[1]] = entries[2]
        elif f is None:  # nothing downstream reads f densely: its active entries as a sparse tensor, [B, d_sae] all the same
            f = torch.sparse_coo_tensor(torch.stack(entries[:2]), entries[2], (B, S), check_invariants=False)
        del pre
        if ctx.dense:
            x_hat = _mm(f, W_dec, dtype) + b_dec
            ctx.save_for_backward(xc, W_enc, W_dec, f)
            fired = (f > 0).sum(0)
            smallest = _smallest(f) if smallest is None else smallest  # BatchTopK's is on the selection score
            return f, x_hat, *_stats(ctx, f, fired, smallest, B)
        if k is None:
            row, col, vals = entries or (*f.nonzero(as_tuple=True), None)
            vals = f[row, col] if vals is None else vals
            row, col = row.int(), col.int()  # int32 indices: MKL's sparse kernels run ~25% faster
            counts = torch.bincount(row, minlength=B)
            x_hat = F.embedding_bag(col, W_dec, counts.cumsum(0) - counts, mode="sum", per_sample_weights=vals)
        else:
            x_hat = F.embedding_bag(idx, W_dec, mode="sum", per_sample_weights=vals)
            col, vals = idx.flatten().int(), vals.flatten()
            row = torch.arange(B, dtype=torch.int32).repeat_interleave(k)
        x_hat = x_hat + b_dec
        ctx.save_for_backward(xc, W_enc, W_dec, row, col, vals)
        active = vals > 0  # TopK keeps entries whose pre <= 0 (as zeros)
        fired = torch.bincount(col[active], minlength=S)
        smallest = _smallest(vals) if smallest is None else smallest
        return f, x_hat, *_stats(ctx, f, fired, smallest, B)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_f, grad_xhat, _grad_fired, _grad_smallest, grad_l0):
        B, S, k, dtype, apply_b_dec, eps = ctx.dims
        need_enc = ctx.needs_input_grad[1] or ctx.needs_input_grad[2] or (apply_b_dec and ctx.needs_input_grad[4])
        g_theta = None
        if ctx.window is not None and ctx.needs_input_grad[12]:
            w_row, w_col = ctx.window
            g_theta = torch.zeros(S)
            if grad_l0 is not None:  # d/dtheta of H(pre - theta) := -(1/eps) K(.)   (eq. 12)
                g_theta -= torch.bincount(w_col, minlength=S).float() * (grad_l0 / (eps * B))
        if ctx.dense:
            xc, W_enc, W_dec, f = ctx.saved_tensors
            active = f > 0
            g_pre = grad_f
            if grad_xhat is not None:
                g_f = _mm(grad_xhat, W_dec.T, dtype)
                g_pre = g_f if g_pre is None else g_pre + g_f
            if g_theta is not None and g_pre is not None:  # d/dtheta of JumpReLU := -(theta/eps) K(.)   (eq. 11)
                g_theta -= torch.zeros(S).index_add_(0, w_col, g_pre[w_row, w_col]) * ctx.theta / eps
            g_pre = torch.zeros_like(f) if g_pre is None else torch.where(active, g_pre, 0.0)
            gW_enc = _mm(xc.T, g_pre, dtype) if ctx.needs_input_grad[1] else None
            gb_enc = g_pre.sum(0)
            gW_dec = _mm(f.T, grad_xhat, dtype) if grad_xhat is not None and ctx.needs_input_grad[3] else None
        else:
            xc, W_enc, W_dec, row, col, vals = ctx.saved_tensors
            # the active entries in the transposed pattern's order ([d_sae, B], by latent), which every grad shares
            perm = _argsort_stable(col, S)
            row_t, col_t, vals_t = row[perm], col[perm], vals[perm]
            crow_t = torch.zeros(S + 1, dtype=torch.int32)
            crow_t[1:] = torch.bincount(col, minlength=S).cumsum(0)
            g_t = grad_f[row_t, col_t] if grad_f is not None else torch.zeros_like(vals)
            if grad_xhat is not None and need_enc:  # grad f at the active entries, plus grad_f there; by latent, each
                # W_dec row is read once (3x faster than by input)
                g_t = torch.sparse.sampled_addmm(csr(crow_t, row_t, g_t, (S, B)), W_dec, grad_xhat.T).values()
            if k is not None:  # TopK kept entries whose pre <= 0: relu' = 0 there
                g_t = g_t * (vals_t > 0)
            gW_dec = None
            if grad_xhat is not None and ctx.needs_input_grad[3]:
                gW_dec = csr(crow_t, row_t, vals_t, (S, B)) @ grad_xhat
            gW_enc = None
            if ctx.needs_input_grad[1]:
                gW_enc = (csr(crow_t, row_t, g_t, (S, B)) @ xc).T
            gb_enc = torch.zeros(S, dtype=vals.dtype).index_add_(0, col_t, g_t)
            if g_theta is not None and (grad_f is not None or grad_xhat is not None):  # eq. 11, at the window
                w_row, w_col = ctx.window
                w_crow = torch.zeros(B + 1, dtype=torch.int32)
                w_crow[1:] = torch.bincount(w_row, minlength=B).cumsum(0)
                g_win = grad_f[w_row, w_col] if grad_f is not None else torch.zeros(len(w_col))
                if grad_xhat is not None:
                    g_win = torch.sparse.sampled_addmm(csr(w_crow, w_col, g_win, (B, S)), grad_xhat, W_dec.T).values()
                g_theta -= torch.zeros(S).index_add_(0, w_col, g_win) * ctx.theta / eps
        gb_dec = None
        if ctx.needs_input_grad[4]:
            gb_dec = grad_xhat.sum(0) if grad_xhat is not None else torch.zeros(W_dec.shape[1])
            if apply_b_dec:
                gb_dec = gb_dec - W_enc @ gb_enc
        return (None, gW_enc, gb_enc if ctx.needs_input_grad[2] else None, gW_dec, gb_dec, None, None, None, None, None,
                None, None, g_theta, None, None)


def _stats(ctx, f, fired, smallest, B):
    """(fired, smallest, l0) as the step returns them; l0 carries a gradient only to a JumpReLU threshold, and a
    sparse f none."""
    l0 = fired.sum().float() / max(B, 1)
    ctx.mark_non_differentiable(fired, smallest, *(() if ctx.window is not None else (l0,)), *((f,) if f.is_sparse else ()))
    return fired, smallest, l0


def sparse_sae_step(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    k: int | None = None,
    batch: bool = False,
    dtype: torch.dtype | None = None,
    apply_b_dec_to_input: bool = True,
    dense_density: float | None = None,
    across_ranks: bool = False,
    select_bias: torch.Tensor | None = None,
    threshold: torch.Tensor | None = None,
    bandwidth: float | None = None,
    dense_f: bool = True,
) -> SparseStep:
    """(f, x_hat, fired, smallest, l0) for x [B, d_in] (see SparseStep), with a sparse-aware backward.
    `k`: TopK (else ReLU); with `batch`, BatchTopK: the B*k largest activations of the batch. `threshold` [d_sae] > 0:
    JumpReLU, f = pre * H(pre - threshold); with `bandwidth` eps, the threshold gets the straight-through gradients
    of Rajamanoharan et al. (2024) with a rectangle kernel, through f and through l0.
    `dtype`: matmul precision, float32 or bfloat16; None: bfloat16 inside a CPU bf16 autocast
    region, else float32. Everything returned is fp32 (autocast does not reach inside).
    `dense_density`: run dense above this fraction of active entries (default: measured, per dtype);
    0 forces the dense path, 1 the sparse one. `across_ranks`: BatchTopK over the global batch of a
    data-parallel run, of which x is this rank's part (batch_topk_entries). `select_bias` [d_sae] (BatchTopK only):
    the kept entries are the largest of pre + select_bias, with their values pre; `smallest` is then on that score.
    `dense_f=False`: on the sparse path f comes back as a sparse tensor without a gradient (building the dense one
    costs a pass over [B, d_sae]), for a loss that reads only x_hat and l0."""
    if x.dim() != 2:
        raise ValueError(f"x must be [batch, d_in], got shape {tuple(x.shape)}")
    if x.device.type != "cpu":
        raise NotImplementedError("sparse_sae_step is tuned for CPU; use plain autograd on other devices")
    if dtype is None:
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32
    if dtype not in DENSE_DENSITY:
        raise ValueError(f"dtype must be float32 or bfloat16, not {dtype}")
    if threshold is not None and (k is not None or batch):
        raise ValueError("a threshold (JumpReLU) does not combine with k (TopK, BatchTopK)")
    if bandwidth is not None and not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0, not {bandwidth}")
    if dense_density is None:
        dense_density = DENSE_DENSITY[dtype]
    x = x.detach().to(W_enc.dtype)
    with torch.autocast("cpu", enabled=False):
        return SparseStep(*_SparseSAEStep.apply(x, W_enc, b_enc, W_dec, b_dec, k, batch, dtype, apply_b_dec_to_input,
                                                dense_density, across_ranks, select_bias, threshold, bandwidth, dense_f))


def sae_step(sae, x: torch.Tensor, dtype: torch.dtype | None = None, dense_density: float | None = None,
             batch_k: int | None = None, across_ranks: bool = False, select_bias: torch.Tensor | None = None,
             bandwidth: float | None = None, dense_f: bool = True) -> SparseStep:
    """`sparse_sae_step` on an `attnsae.sae.SAE` (its architecture, k, threshold and b_dec convention), or on a ReLU
    SAE trained with BatchTopK `batch_k` (`across_ranks`: over a data-parallel run's global batch; `select_bias`:
    see sparse_sae_step); `bandwidth`: a JumpReLU SAE's threshold gets its straight-through gradients. CPU only: off
    the CPU, where these kernels were not tuned, plain autograd (for ReLU, TopK and BatchTopK; a JumpReLU recipe
    runs its own there). `dense_f`: see sparse_sae_step (off the CPU f is always dense)."""
    arch = sae.cfg.architecture
    if arch not in ("standard", "topk", "jumprelu") or (batch_k and arch != "standard"):
        raise ValueError(f"sae_step runs ReLU, TopK, BatchTopK and JumpReLU SAEs, not {arch!r} (use plain autograd)")
    if arch == "jumprelu" or bandwidth is not None:
        if arch != "jumprelu":
            raise ValueError(f"a bandwidth is for JumpReLU SAEs, not {arch!r}")
        return sparse_sae_step(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, dtype=dtype,
                               apply_b_dec_to_input=sae.cfg.apply_b_dec_to_input, dense_density=dense_density,
                               threshold=sae.threshold, bandwidth=bandwidth, dense_f=dense_f)
    if x.device.type != "cpu":
        if batch_k:
            pre = sae.pre_acts(x).float()
            f = batch_topk(pre, batch_k, across_ranks, select_bias)
            fired, smallest = firing_stats(f)
            if select_bias is not None:
                smallest = _smallest(torch.where(f > 0, pre + select_bias, 0.0))
            return SparseStep(f, sae.decode(f), fired, smallest, fired.sum() / len(x))
        out = sae(x)
        fired, smallest = firing_stats(out.feature_acts)
        return SparseStep(out.feature_acts, out.reconstruction, fired, smallest, fired.sum() / len(x))
    k = batch_k or (sae.cfg.k if sae.cfg.architecture == "topk" else None)
    return sparse_sae_step(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, k=k, batch=bool(batch_k), dtype=dtype,
                           apply_b_dec_to_input=sae.cfg.apply_b_dec_to_input, dense_density=dense_density,
                           across_ranks=across_ranks, select_bias=select_bias, dense_f=dense_f)
