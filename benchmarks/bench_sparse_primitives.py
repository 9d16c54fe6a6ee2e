"""Times the candidate primitives behind attnsae.sae.sparse_step, to choose among them.

For an SAE batch f [B, d_sae] with `nnz` active entries per row and dense D = d_in columns:
  spmm     f @ W_dec                 (decoder forward)         [B, d_sae] x [d_sae, D]
  spmm_t   f^T @ g                   (grad W_dec, grad W_enc^T) [d_sae, B] x [B, D]
  sddmm    (g @ W_dec^T)[active]     (grad f at active entries)
  active   extracting the active set from pre [B, d_sae]
each by several routes (CSR/MKL, embedding_bag kernels, chunked gathers, dense matmul).

    python benchmarks/bench_sparse_primitives.py [--quick] [--nnz 20 64 200 1000]
    python benchmarks/bench_sparse_primitives.py --step [--dtypes float32 bfloat16]   # dense crossover
"""

from __future__ import annotations

import argparse
import warnings
from functools import partial

import torch
import torch.nn.functional as F
from _common import bias_for_l0, timeit

aten = torch.ops.aten
warnings.filterwarnings("ignore", message="Sparse")


def report(tag, name, t):
    print(f"{tag:>14}  {name:<34}  {t * 1e3:9.2f}", flush=True)


def step_crossover(a):
    """Forward + backward of the whole sparse_sae_step, sparse path vs dense path, per nnz/row."""
    from attnsae.sae.sparse_step import sparse_sae_step

    B, S, D = a.B, a.d_sae, a.d_in
    torch.manual_seed(0)
    x = torch.randn(B, D)
    W_dec = torch.randn(S, D)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    params = [W_dec.T.clone().requires_grad_(), torch.zeros(S, requires_grad=True),
              W_dec.requires_grad_(), torch.zeros(D, requires_grad=True)]

    def step(dt, dense_density):
        for p in params:
            p.grad = None
        f, x_hat = sparse_sae_step(x, *params, dtype=dt, dense_density=dense_density)
        ((x_hat - x).pow(2).sum(-1).mean() + f.sum(-1).mean()).backward()
        return f

    print(f"sparse_sae_step fwd+bwd, B={B} d_sae={S} d_in={D} threads={torch.get_num_threads()} (ms)")
    for dtype in a.dtypes:
        dt, td = getattr(torch, dtype), None
        for nnz in a.nnz:
            with torch.no_grad():
                params[1].copy_(bias_for_l0(x, params[0], params[3], nnz))
            l0 = (step(dt, 1.0) > 0).sum(-1).float().mean().item()
            ts = timeit(partial(step, dt, 1.0), a.reps)
            if td is None:  # the dense path's cost does not depend on the sparsity: time it once
                td = timeit(partial(step, dt, 0.0), a.reps) if not a.no_dense else float("nan")
            print(f"{dtype:>9} L0={l0:7.1f} density={l0 / S:.4f}  sparse {ts * 1e3:8.1f}  dense {td * 1e3:8.1f}", flush=True)


def chunked_sddmm(g, W, row, col, chunk=32768):
    out = torch.empty(row.numel(), dtype=g.dtype)
    for s in range(0, row.numel(), chunk):
        e = min(s + chunk, row.numel())
        out[s:e] = (g[row[s:e]] * W[col[s:e]]).sum(-1)
    return out


def chunked_index_add(vals, dense, row, col, n_out, chunk=32768):
    out = torch.zeros(n_out, dense.shape[1], dtype=dense.dtype)
    for s in range(0, row.numel(), chunk):
        e = min(s + chunk, row.numel())
        out.index_add_(0, col[s:e], dense[row[s:e]] * vals[s:e, None])
    return out


def bench_dense(run, W, g, B, S):
    """The dense reference matmuls, on a dense (relu'd Gaussian) f."""
    f = torch.randn(B, S).relu_()
    Wb, gb, fb = W.bfloat16(), g.bfloat16(), f.bfloat16()
    run("dense", "f@W fp32", lambda: f @ W)
    run("dense", "f@W bf16", lambda: fb @ Wb)
    run("dense", "f^T@g fp32", lambda: f.T @ g)
    run("dense", "f^T@g bf16", lambda: fb.T @ gb)


def bench_sparse(run, W, g, B, S, nnz):
    """Every sparse route at about `nnz` active entries per row (one call per nnz, so that each
    timed closure reads this call's tensors, and they are freed on return)."""
    # exactly-ish nnz active per row: threshold uniform noise
    pre = torch.rand(B, S) - (1 - nnz / S)
    f = pre.relu()

    def active_nonzero():
        r, c = (pre > 0).nonzero(as_tuple=True)
        return r, c, pre[r, c]

    row, col, vals = active_nonzero()
    counts = torch.bincount(row, minlength=B)
    offsets = torch.zeros(B, dtype=torch.long)
    offsets[1:] = counts.cumsum(0)[:-1]
    crow = torch.cat([offsets, torch.tensor([row.numel()])])
    csr = torch.sparse_csr_tensor(crow, col, vals, (B, S))
    bag_size = counts
    empty = torch.empty(0, dtype=torch.long)
    perm = torch.argsort(col, stable=True)

    def csr_t():
        ccounts = torch.bincount(col, minlength=S)
        ccrow = torch.zeros(S + 1, dtype=torch.long)
        ccrow[1:] = ccounts.cumsum(0)
        return torch.sparse_csr_tensor(ccrow, row[perm], vals[perm], (S, B))

    csrT = csr_t()
    tag = f"nnz/row={row.numel() / B:.0f}"
    run(tag, "active: (pre>0).nonzero + gather", active_nonzero)
    run(tag, "active: relu(pre).to_sparse_csr", lambda: f.to_sparse_csr())
    run(tag, "active: topk(pre, nnz)", lambda: pre.topk(max(1, nnz), dim=-1))
    run(tag, "spmm: csr @ W (MKL)", lambda: csr @ W)
    run(tag, "spmm: embedding_bag",
        lambda: F.embedding_bag(col, W, offsets, mode="sum", per_sample_weights=vals))
    run(tag, "spmm_t: csr.t() @ g", lambda: csr.t() @ g)
    run(tag, "spmm_t: build csr^T + mm", lambda: torch.sparse.mm(csr_t(), g))
    run(tag, "spmm_t: prebuilt csr^T @ g", lambda: csrT @ g)
    run(tag, "spmm_t: embedding_bag dense bwd",
        lambda: aten._embedding_bag_dense_backward(g, col, row, bag_size, empty, S, False, 0, vals))
    run(tag, "spmm_t: chunked index_add", lambda: chunked_index_add(vals, g, row, col, S))
    run(tag, "sddmm: sampled_addmm", lambda: torch.sparse.sampled_addmm(csr, g, W.T))
    run(tag, "sddmm: embedding_bag psw bwd",
        lambda: aten._embedding_bag_per_sample_weights_backward(g, W, col, offsets, row, 0))
    run(tag, "sddmm: chunked gather", lambda: chunked_sddmm(g, W, row, col))
    # check the routes agree
    ref = torch.sparse.mm(csrT, g)
    alt = aten._embedding_bag_dense_backward(g, col, row, bag_size, empty, S, False, 0, vals)
    assert torch.allclose(ref, alt, atol=1e-3, rtol=1e-4)
    sd = aten._embedding_bag_per_sample_weights_backward(g, W, col, offsets, row, 0)
    assert torch.allclose(sd, chunked_sddmm(g, W, row, col), atol=1e-3, rtol=1e-4)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--B", type=int, default=4096)
    ap.add_argument("--d-sae", type=int, default=24576)
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--nnz", type=int, nargs="+", default=[20, 64, 200, 1000, 3000])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-dense", action="store_true", help="skip the (slow) dense reference matmuls")
    ap.add_argument("--step", action="store_true", help="time the whole step, sparse vs dense path, instead")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    a = ap.parse_args(argv)
    if a.quick:
        a.B, a.d_sae, a.d_in, a.nnz, a.reps = 256, 2048, 64, [8, 64], 1
    if a.step:
        return step_crossover(a)
    B, S, D = a.B, a.d_sae, a.d_in
    torch.manual_seed(0)
    W = torch.randn(S, D)
    g = torch.randn(B, D)
    print(f"B={B} d_sae={S} d_in={D} threads={torch.get_num_threads()}  (median of {a.reps}, ms)")
    rows = []

    def run(tag, name, fn):
        t = timeit(fn, a.reps)
        report(tag, name, t)
        rows.append((tag, name, t))

    if not a.no_dense:
        bench_dense(run, W, g, B, S)
    for nnz in a.nnz:
        bench_sparse(run, W, g, B, S, nnz)


if __name__ == "__main__":
    main()
