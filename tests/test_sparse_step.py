"""The sparse-aware SAE step gives plain autograd's outputs and gradients."""

import pytest
import torch
import torch.nn.functional as F

from attnsae.sae import SAE, SAEConfig
from attnsae.sae.sparse_step import sae_step, sparse_sae_step

B, D, S = 32, 16, 128


def reference(x, W_enc, b_enc, W_dec, b_dec, k=None, apply_b_dec=True):
    pre = ((x - b_dec) if apply_b_dec else x) @ W_enc + b_enc
    if k is None:
        f = F.relu(pre)
    else:
        vals, idx = pre.topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))
    return f, f @ W_dec + b_dec


def make(shift: float, seed: int = 0, zero_rows: int = 4):
    """Inputs and parameters; `shift` moves b_enc (very negative: nothing fires; very positive: all fire).
    With shift <= 0, b_enc < 0 and the first `zero_rows` rows of x equal b_dec: rows with no active latent."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g)
    W_enc = torch.randn(D, S, generator=g) / D**0.5
    b_enc = torch.randn(S, generator=g) * 0.5 + shift
    W_dec = torch.randn(S, D, generator=g) / D**0.5
    b_dec = torch.randn(D, generator=g) * 0.1
    if zero_rows and shift <= 0:
        x[:zero_rows] = b_dec
        b_enc = b_enc.clamp_max(-0.01)
    params = [p.clone().requires_grad_() for p in (W_enc, b_enc, W_dec, b_dec)]
    return x, params


def loss_fn(kind, x, f, x_hat, W_dec, l1=0.3):
    mse = (x_hat - x).pow(2).sum(-1).mean()
    if kind == "mse":
        return mse
    if kind == "l1":
        return mse + l1 * f.sum(-1).mean()
    if kind == "l1_decnorm":
        return mse + l1 * (f * W_dec.norm(dim=1)).sum(-1).mean()
    raise KeyError(kind)


def grads(fn, kind, x, params, **kw):
    f, x_hat = fn(x, *params, **kw)[:2]
    loss = loss_fn(kind, x, f, x_hat, params[2])
    return f, x_hat, torch.autograd.grad(loss, params)


SHIFTS = [-100.0, -2.0, -0.5, 0.0, 1.0, 100.0]  # all-zero ... fully dense


@pytest.mark.parametrize("k", [None, 1, 8, S])
@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("kind", ["l1", "l1_decnorm", "mse"])
@pytest.mark.parametrize("dense_density", [1.0, 0.0, None])  # force sparse, force dense, measured default
def test_grads_equal_autograd_fp32(k, shift, kind, dense_density):
    x, params = make(shift, seed=int(shift * 7) % 1000 + (k or 0))
    f0, xh0, g0 = grads(reference, kind, x, params, k=k)
    f1, xh1, g1 = grads(sparse_sae_step, kind, x, params, k=k, dense_density=dense_density)
    density = (f0 > 0).float().mean().item()
    if shift == -100.0:
        assert density == 0
    if shift == 100.0 and k is None:
        assert density == 1
    if shift <= 0:
        assert (f0[:4] == 0).all()  # the all-zero rows
    torch.testing.assert_close(f1, f0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xh1, xh0, rtol=1e-5, atol=1e-5)
    for name, a, b in zip(("W_enc", "b_enc", "W_dec", "b_dec"), g1, g0):
        assert a.shape == b.shape and a.dtype == torch.float32
        # fp32 summation order differs; with shift=100 the sums cancel large terms
        atol = 1e-5 * max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=1e-4, atol=atol, msg=lambda m, name=name: f"grad {name}: {m}")


def test_topk_with_nonpositive_selected_entries():
    """TopK keeps k entries per row even when some are <= 0; those give f = 0 and no gradient."""
    x, params = make(-3.0, seed=3, zero_rows=0)
    f0, _, g0 = grads(reference, "l1", x, params, k=16)
    assert ((f0 > 0).sum(-1) < 16).any()
    for dd in (0.0, 1.0):
        f1, _, g1 = grads(sparse_sae_step, "l1", x, params, k=16, dense_density=dd)
        torch.testing.assert_close(f1, f0)
        for a, b in zip(g1, g0):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dense_density", [1.0, 0.0])
def test_without_b_dec_on_input(dense_density):
    x, params = make(-0.5, seed=5)
    f0, xh0, g0 = grads(reference, "l1", x, params, apply_b_dec=False)
    f1, xh1, g1 = grads(sparse_sae_step, "l1", x, params, apply_b_dec_to_input=False, dense_density=dense_density)
    torch.testing.assert_close(xh1, xh0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_only_some_params_need_grad():
    x, params = make(-0.5, seed=6)
    params[0].requires_grad_(False)
    params[3].requires_grad_(False)
    f, x_hat = sparse_sae_step(x, *params, dense_density=1.0)[:2]
    loss_fn("l1", x, f, x_hat, params[2]).backward()
    ref = [p.detach().clone().requires_grad_(p.requires_grad) for p in params]
    f0, xh0 = reference(x, *ref)
    loss_fn("l1", x, f0, xh0, ref[2]).backward()
    for p, r in zip(params, ref):
        assert (p.grad is None) == (r.grad is None)
        if r.grad is not None:
            torch.testing.assert_close(p.grad, r.grad, rtol=1e-4, atol=1e-5)


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("k", [None, 8])
@pytest.mark.parametrize("dense_density", [1.0, 0.0])
def test_bf16_close_to_fp32(k, dense_density):
    """Loose: bf16 rounding flips latents near pre = 0 on and off, which moves the encoder grads
    by a few percent; autocast on the plain expression is as far off (6% for W_enc here)."""
    x, params = make(-0.3, seed=7)
    f0, xh0, g0 = grads(reference, "l1", x, params, k=k)
    f1, xh1, g1 = grads(sparse_sae_step, "l1", x, params, k=k, dtype=torch.bfloat16, dense_density=dense_density)
    assert f1.dtype == xh1.dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in g1)
    assert _rel(f1, f0) < 2e-2 and _rel(xh1, xh0) < 2e-2
    for name, a, b in zip(("W_enc", "b_enc", "W_dec", "b_dec"), g1, g0):
        assert _rel(a, b) < 0.1, name


@pytest.mark.parametrize("k", [None, 8])
@pytest.mark.parametrize("dense_density", [1.0, 0.0])
def test_bf16_matches_autocast_reference(k, dense_density):
    """bf16 mode is what the trainer's autocast computes: the same encoder matmul (so the same
    active set), the rest differs only by where bf16 rounding happens."""
    x, params = make(-0.3, seed=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f0, xh0, g0 = grads(reference, "l1", x, params, k=k)
    f1, xh1, g1 = grads(sparse_sae_step, "l1", x, params, k=k, dtype=torch.bfloat16, dense_density=dense_density)
    assert torch.equal(f1 > 0, f0 > 0)
    assert _rel(f1, f0.float()) < 1e-2 and _rel(xh1, xh0.float()) < 1e-2
    for a, b in zip(g1, g0):
        assert _rel(a, b.float()) < 1e-2


def test_autocast_region_means_bf16():
    x, params = make(-0.3, seed=10)
    f0, xh0, g0 = grads(sparse_sae_step, "l1", x, params, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f1, xh1, g1 = grads(sparse_sae_step, "l1", x, params)
    assert f1.dtype == xh1.dtype == torch.float32
    torch.testing.assert_close(f1, f0)
    torch.testing.assert_close(xh1, xh0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_sae_step_matches_sae_forward(arch):
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=D, d_sae=S, architecture=arch, k=8 if arch == "topk" else None))
    with torch.no_grad():
        sae.b_enc.fill_(-0.3)
        sae.b_dec.normal_()
        if arch == "jumprelu":
            sae.set_threshold_(torch.rand(S))
    x = torch.randn(B, D)
    out = sae(x)
    f, x_hat = sae_step(sae, x)[:2]
    torch.testing.assert_close(f, out.feature_acts)
    torch.testing.assert_close(x_hat, out.reconstruction, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["topk", "batchtopk", "jumprelu"])
def test_sparse_f_changes_nothing_but_f(kind):
    """dense_f=False (a loss that reads only x_hat): f comes back as a sparse tensor without a gradient, with the
    dense f's values, and x_hat, l0 and every gradient are unchanged."""
    x, params = make(-0.3, seed=11)
    kw = ({"k": 8} if kind == "topk" else {"k": 8, "batch": True} if kind == "batchtopk"
          else {"threshold": torch.rand(S) * 0.5, "bandwidth": 0.1})
    outs = []
    for dense_f in (True, False):
        ps = [p.detach().clone().requires_grad_() for p in params]
        step = sparse_sae_step(x, *ps, dense_density=1.0, dense_f=dense_f, **kw)
        ((step.reconstruction - x).pow(2).sum() + step.l0).backward()
        outs.append((step, [p.grad for p in ps]))
    (dense, g_dense), (sparse, g_sparse) = outs
    assert sparse.feature_acts.is_sparse and not sparse.feature_acts.requires_grad
    assert not dense.feature_acts.is_sparse and (dense.feature_acts > 0).sum() > 0
    torch.testing.assert_close(sparse.feature_acts.to_dense(), dense.feature_acts)
    torch.testing.assert_close(sparse.reconstruction, dense.reconstruction)
    assert torch.equal(sparse.fired, dense.fired) and sparse.l0 == dense.l0
    assert all(g is not None for g in g_sparse + g_dense)
    for a, b in zip(g_sparse, g_dense):
        torch.testing.assert_close(a, b)


def test_rejects_bad_input():
    x, params = make(0.0)
    with pytest.raises(ValueError):
        sparse_sae_step(x[None], *params)
    with pytest.raises(ValueError):
        sparse_sae_step(x, *params, dtype=torch.float16)
    with pytest.raises(ValueError, match="does not combine"):
        sparse_sae_step(x, *params, k=4, threshold=torch.ones(S))
    with pytest.raises(ValueError, match="bandwidth"):
        sparse_sae_step(x, *params, threshold=torch.ones(S), bandwidth=0.0)


def test_wide_sae_beyond_uint16_columns():
    """d_sae > 65536 takes the other sort path for the transposed pattern."""
    g = torch.Generator().manual_seed(9)
    d_sae = 70_000
    x = torch.randn(4, 4, generator=g)
    params = [torch.randn(4, d_sae, generator=g), torch.full((d_sae,), -6.0), 0.01 * torch.randn(d_sae, 4, generator=g),
              torch.zeros(4)]
    params = [p.requires_grad_() for p in params]
    f0, _, g0 = grads(reference, "l1", x, params)
    f1, _, g1 = grads(sparse_sae_step, "l1", x, params, dense_density=1.0)
    assert 0 < (f0 > 0).sum() < f0.numel() // 10
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def flat_batch_topk(pre, k):
    """The definition: the B*k largest entries of relu(pre) over the whole batch."""
    acts = F.relu(pre).flatten()
    vals, idx = acts.topk(pre.shape[0] * k)
    return torch.zeros_like(acts).scatter(0, idx, vals).view_as(pre)


@pytest.mark.parametrize("sample", [16, 1024, 65536])  # smaller than the bound needs, smaller than B*d_sae, all
@pytest.mark.parametrize("case", ["random", "skew", "adversarial", "ties"])
def test_batch_topk_equals_the_flat_top_b_times_k(case, sample, monkeypatch):
    """The sampled lower bound is exact: when one row holds every winner (skew), when the sampled entries
    are the largest so that too few entries pass the bound and it falls back (adversarial), with ties."""
    from attnsae.sae import sparse_step

    monkeypatch.setattr(sparse_step, "_SAMPLE_ENTRIES", sample)
    pre = torch.randn(B, S, generator=torch.Generator().manual_seed(3))
    k = 4
    if case == "skew":
        pre[0] += 10.0  # row 0 wins everything: B*k = 128 winners there
    elif case == "adversarial":  # the sampled entries are the largest: the bound passes too few
        m = min(B * S, sample)
        pre.view(-1)[torch.arange(m) * sparse_step._HASH_STRIDE % (B * S)] += 10.0
    elif case == "ties":
        pre = pre.round()
    f = sparse_step.batch_topk(pre, k)
    if case == "ties":  # any B*k of the tied entries: the same number kept, the same values
        ref = flat_batch_topk(pre, k)
        assert (f > 0).sum() == (ref > 0).sum() and torch.equal(f.flatten().sort().values, ref.flatten().sort().values)
        assert torch.equal(f[f > 0], pre[f > 0])
    else:
        torch.testing.assert_close(f, flat_batch_topk(pre, k))
    rows, cols, vals = sparse_step.batch_topk_entries(pre, k)
    key = rows * S + cols
    assert len(key) == B * k and torch.equal(key, key.sort().values), "entries in row-major order, each once"
    assert torch.equal(pre[rows, cols], vals)


@pytest.mark.parametrize("sample", [16, 65536])  # the fallback to a full top-k, the sampled bound
@pytest.mark.parametrize("case", ["random", "bias_above_bound", "negative_bound"])
def test_batch_topk_of_a_bf16_product_plus_a_bias_equals_that_of_the_fp32_sum(case, sample, monkeypatch):
    """Chosen from a bf16 matmul output m and an fp32 bias b without their fp32 sum (int16 compares of m's bits),
    the entries are the largest of m + b all the same: also where b alone beats the bound (those columns compare in
    fp32) and where the bound is negative (most entries win)."""
    from attnsae.sae import sparse_step

    monkeypatch.setattr(sparse_step, "_SAMPLE_ENTRIES", sample)
    g = torch.Generator().manual_seed(4)
    m = torch.randn(B, S, generator=g).bfloat16()
    bias = torch.randn(S, generator=g) * 0.3
    k = 4
    if case == "bias_above_bound":
        bias[::64] += 6.0  # two latents whose bias alone beats the cut: their entries all win, negative m too
    elif case == "negative_bound":
        bias -= 5.0
        k = S // 2
    want = sparse_step.batch_topk_entries(m.float() + bias, k)
    got = sparse_step.batch_topk_entries(m, k, bias=bias)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    if case == "bias_above_bound":
        boosted = want[1] % 64 == 0
        assert boosted.sum() == 2 * B and (want[2][boosted] < bias[want[1][boosted]]).any()  # winners with m < 0


@pytest.mark.parametrize("dense_density", [1.0, 0.0])
def test_bf16_batch_topk_matches_autocast_reference(dense_density):
    """bf16 BatchTopK keeps exactly the entries that autocast's pre-activations (bf16 matmul, fp32 bias add) rank
    first, with their values."""
    x, params = make(0.0, seed=13)
    k, select = 3, torch.rand(S, generator=torch.Generator().manual_seed(5))
    W_enc, b_enc, W_dec, b_dec = params
    with torch.no_grad():
        pre = ((x - b_dec).bfloat16() @ W_enc.bfloat16()).float() + b_enc
        keep = flat_batch_topk(pre + select, k) > 0
        want = torch.where(keep & (pre > 0), pre, 0.0)
    f, x_hat = sparse_sae_step(x, *params, k=k, batch=True, dtype=torch.bfloat16, dense_density=dense_density,
                               select_bias=select)[:2]
    assert torch.equal(f > 0, want > 0)
    torch.testing.assert_close(f, want)  # the values: pre + (b_enc + select) - select, to fp32 rounding
    assert _rel(x_hat, want @ W_dec + b_dec) < 1e-2  # the dense path decodes in bf16


@pytest.mark.parametrize("path", ["relu", "topk", "batch"])
@pytest.mark.parametrize("dense_density", [1.0, 0.0])
@pytest.mark.parametrize("shift", [-100.0, -0.5, 1.0])
def test_fired_and_smallest_match_f(path, dense_density, shift):
    """The firing counts and smallest activation that the step returns, whichever path computed them, are
    f's (TopK keeps entries whose pre-activation is <= 0 as zeros: they did not fire)."""
    from attnsae.sae.sparse_step import firing_stats

    x, params = make(shift, seed=5)
    k, batch = {"relu": (None, False), "topk": (8, False), "batch": (3, True)}[path]
    f, _, fired, smallest, l0 = sparse_sae_step(x, *params, k=k, batch=batch, dense_density=dense_density)
    want_fired, want_smallest = firing_stats(f)
    assert torch.equal(fired, want_fired) and fired.sum() == (f > 0).sum()
    assert torch.equal(smallest, want_smallest)
    assert (smallest == float("inf")) == (shift == -100.0)
    assert l0.item() == pytest.approx((f > 0).sum().item() / B)


@pytest.mark.parametrize("kind", ["mse", "l1"])
@pytest.mark.parametrize("shift", [-2.0, 0.0, 1.0])
@pytest.mark.parametrize("dense_density", [1.0, 0.0])
def test_jumprelu_grads_equal_the_straight_through_estimator(kind, shift, dense_density):
    """JumpReLU f = pre * H(pre - theta) and its L0: the sparse step's gradients, threshold included, are those of
    the recipe's autograd Functions (Rajamanoharan et al.'s pseudo-derivatives), through f and through l0."""
    from attnsae.sae.recipes.jumprelu import JumpReLU, Step

    x, params = make(shift, seed=13)
    log_theta = (0.3 * torch.rand(S, generator=torch.Generator().manual_seed(4)) - 1.0).requires_grad_()
    eps, l0_coeff = 0.2, 0.7

    def loss(f, x_hat, l0):
        return loss_fn(kind, x, f, x_hat, params[2]) + l0_coeff * l0

    W_enc, b_enc, W_dec, b_dec = params
    pre = (x - b_dec) @ W_enc + b_enc
    f0 = JumpReLU.apply(pre, log_theta.exp(), eps)
    xh0 = f0 @ W_dec + b_dec
    g0 = torch.autograd.grad(loss(f0, xh0, Step.apply(pre, log_theta.exp(), eps).sum(-1).mean()), [*params, log_theta])
    step = sparse_sae_step(x, *params, threshold=log_theta.exp(), bandwidth=eps, dense_density=dense_density)
    g1 = torch.autograd.grad(loss(step.feature_acts, step.reconstruction, step.l0), [*params, log_theta])
    torch.testing.assert_close(step.feature_acts, f0)
    torch.testing.assert_close(step.reconstruction, xh0, rtol=1e-5, atol=1e-5)
    assert step.l0.item() == pytest.approx((f0 > 0).sum().item() / B)
    in_window = ((pre - log_theta.exp()).abs() < eps / 2).any(0)
    assert 0 < in_window.sum() and (g0[-1][in_window] != 0).all() and (g0[-1][~in_window] == 0).all()
    for name, a, b in zip(("W_enc", "b_enc", "W_dec", "b_dec", "log_threshold"), g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("dense_density", [1.0, 0.0])
def test_bf16_jumprelu_matches_autocast_reference(dense_density):
    """bf16 JumpReLU keeps exactly the entries whose autocast pre-activation (bf16 matmul, fp32 bias add) clears the
    threshold, with their values, and its threshold's window is that pre-activation's."""
    from attnsae.sae.recipes.jumprelu import JumpReLU, Step

    x, params = make(0.0, seed=14)
    theta = 0.5 + torch.rand(S, generator=torch.Generator().manual_seed(6))
    theta[::16] = 0.01  # near zero: these columns' entries are found by fp32 compares
    theta = theta.requires_grad_()
    eps = 0.2
    W_enc, b_enc, W_dec, b_dec = params
    pre = ((x - b_dec).bfloat16() @ W_enc.bfloat16()).float() + b_enc
    f0 = JumpReLU.apply(pre.detach(), theta, eps)
    g0 = torch.autograd.grad((f0 @ W_dec.detach()).pow(2).sum() + Step.apply(pre.detach(), theta, eps).sum(), theta)[0]
    step = sparse_sae_step(x, *params, threshold=theta, bandwidth=eps, dtype=torch.bfloat16, dense_density=dense_density)
    g1 = torch.autograd.grad((step.feature_acts @ W_dec.detach()).pow(2).sum() + step.l0 * B, theta)[0]
    assert torch.equal(step.feature_acts > 0, f0 > 0) and (f0[:, ::16] > 0).any()
    torch.testing.assert_close(step.feature_acts, f0)
    assert _rel(g1, g0) < 1e-2 and (g0 != 0).sum() > 0 and torch.equal(g1 != 0, g0 != 0)


@pytest.mark.parametrize("shift", [-2.0, 0.0, 1.0])
@pytest.mark.parametrize("dense_density", [1.0, 0.0])
def test_batch_topk_grads_equal_autograd(shift, dense_density):
    x, params = make(shift, seed=11)
    k = 3

    def reference_batch(x, W_enc, b_enc, W_dec, b_dec):
        f = flat_batch_topk((x - b_dec) @ W_enc + b_enc, k)
        return f, f @ W_dec + b_dec

    f0, xh0, g0 = grads(reference_batch, "mse", x, params)
    f1, xh1, g1 = grads(sparse_sae_step, "mse", x, params, k=k, batch=True, dense_density=dense_density)
    torch.testing.assert_close(f1, f0)
    torch.testing.assert_close(xh1, xh0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dense_density", [1.0, 0.0])
def test_batch_topk_with_a_selection_bias_grads_equal_autograd(dense_density):
    """The entries are chosen by pre + bias (a firing floor's), the values and gradients are pre's."""
    x, params = make(0.0, seed=12)
    k, bias = 3, 2 * torch.rand(params[1].shape[0], generator=torch.Generator().manual_seed(3))

    def reference_batch(x, W_enc, b_enc, W_dec, b_dec):
        pre = (x - b_dec) @ W_enc + b_enc
        keep = flat_batch_topk((pre + bias).detach(), k) > 0
        f = torch.where(keep & (pre > 0), pre, 0.0)
        return f, f @ W_dec + b_dec

    f0, xh0, g0 = grads(reference_batch, "mse", x, params)
    f1, xh1, g1 = grads(sparse_sae_step, "mse", x, params, k=k, batch=True, dense_density=dense_density,
                        select_bias=bias)
    torch.testing.assert_close(f1, f0)
    torch.testing.assert_close(xh1, xh0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        step = sparse_sae_step(x, *params, k=k, batch=True, dense_density=dense_density, select_bias=bias)
        pre = (x - params[3]) @ params[0] + params[1]
    assert not torch.equal(f1 > 0, flat_batch_topk(pre, k) > 0)  # the bias changed the choice
    assert step.smallest.item() == pytest.approx((pre + bias)[f1 > 0].min().item())
