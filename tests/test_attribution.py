"""Head attribution and DFA: the decompositions sum exactly, planted structure is found."""

import numpy as np
import pytest
import torch

from attnsae.attribution import (
    Moments,
    attention_parts,
    dfa_by_head,
    dfa_by_source,
    feature_dfa,
    head_attribution,
    top_features_by_head,
    variance_explained,
)
from attnsae.sae import SAE, SAEConfig


def random_sae(model, layer=1, d_sae=40, seed=0, **kw):
    c = model.cfg
    sae = SAE(SAEConfig(d_in=c.d_attn, d_sae=d_sae, hook_name=f"blocks.{layer}.attn.hook_z", model_name=c.name, **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(c.d_attn, d_sae, generator=g) * 0.3)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(c.d_attn, generator=g) * 0.1)
    return sae


def test_dfa_by_head_sums_to_pre_activation(tiny, tokens):
    model, _ = tiny
    sae = random_sae(model)
    z = attention_parts(model, tokens, 1)["z"]
    parts, bias = dfa_by_head(sae, z)
    assert parts.shape == (*tokens.shape, sae.d_sae, model.cfg.n_heads)
    assert bias.abs().max() > 0  # the bias term is reported, not dropped
    torch.testing.assert_close(parts.sum(-1) + bias, sae.pre_acts(z.flatten(2)), atol=1e-5, rtol=1e-5)


def test_dfa_by_source_sums_to_head_terms(tiny, tokens):
    model, _ = tiny
    sae = random_sae(model)
    feats = [0, 3, 7]
    parts = attention_parts(model, tokens, 1)
    by_head, _ = dfa_by_head(sae, parts["z"], feats)
    by_src = dfa_by_source(sae, parts["pattern"], parts["v"], feats)
    b, p = tokens.shape
    assert by_src.shape == (b, p, 3, model.cfg.n_heads, p)
    torch.testing.assert_close(by_src.sum(-1), by_head, atol=1e-5, rtol=1e-5)
    # causal: no contribution from later source positions
    later = torch.ones(p, p, dtype=torch.bool).triu(1)[None, :, None, None, :].expand_as(by_src)
    assert by_src[later].abs().max() == 0


def test_dfa_by_source_uses_the_kv_group_of_each_query_head(tiny, tokens):
    model, _ = tiny
    c = model.cfg
    sae = random_sae(model)
    parts = attention_parts(model, tokens, 1)
    by_src = dfa_by_source(sae, parts["pattern"], parts["v"], [5])[..., 0, :, :]  # [b, dest, h, src]
    w = sae.W_enc[:, 5].detach().view(c.n_heads, c.d_head)
    for h in range(c.n_heads):
        v = parts["v"][:, :, c.kv_head(h)]  # [b, src, d_head]
        want = parts["pattern"][:, h] * (v @ w[h])[:, None, :]
        torch.testing.assert_close(by_src[:, :, h], want, atol=1e-6, rtol=1e-5)


def test_feature_dfa_matches_the_sae_on_the_real_activation(tiny, tokens):
    model, _ = tiny
    sae = random_sae(model, layer=0)
    out = feature_dfa(model, sae, tokens, [1, 2])
    _, cache = model.run_with_cache(tokens, ["blocks.0.attn.hook_z"])
    want = sae.pre_acts(cache["blocks.0.attn.hook_z"].flatten(2))[..., [1, 2]]
    torch.testing.assert_close(out["pre"], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["by_source"].sum((-1, -2)) + out["bias"], want, atol=1e-5, rtol=1e-5)


def test_head_attribution_finds_a_planted_head(tiny):
    model, _ = tiny
    c = model.cfg
    sae = random_sae(model)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(sae.d_sae, c.d_attn))
        sae.W_dec[4] = 0
        sae.W_dec[4, 2 * c.d_head:3 * c.d_head] = torch.randn(c.d_head)  # feature 4 written by head 2 only
    scores = head_attribution(sae, c.n_heads)
    torch.testing.assert_close(scores.sum(-1), torch.ones(sae.d_sae))
    assert scores[4, 2] == pytest.approx(1.0) and scores[4].argmax() == 2
    live = torch.ones(sae.d_sae, dtype=torch.bool)
    assert top_features_by_head(scores, live, k=3)[2][0] == (4, pytest.approx(1.0))
    live[4] = False  # dead features are skipped
    assert all(f != 4 for f, _ in top_features_by_head(scores, live, k=3)[2])


def test_moments_shares_of_a_full_decomposition_sum_to_one():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(500, 4, generator=g) * torch.tensor([3.0, 1.0, 0.2, 0.0])).double()
    m = Moments((4,))
    m.add(x[:200].sum(-1), x[:200])
    m.add(x[200:].sum(-1), x[200:])
    s = m.shares()
    assert float(s.sum()) == pytest.approx(1.0, abs=1e-12)
    assert s[0] > 0.8 and s[3] == 0
    y = x.sum(-1)
    want = [float((x[:, c] * y).sum() / (y * y).sum()) for c in range(4)]
    np.testing.assert_allclose(s.numpy(), want, atol=1e-10)


def test_variance_explained_by_a_planted_head_and_source_tokens(tiny, windows):
    model, _ = tiny
    c = model.cfg
    sae = random_sae(model, d_sae=8)
    with torch.no_grad():  # feature 0 reads only head 1: that head explains all its variance
        sae.W_enc[:, 0] = 0
        sae.W_enc[c.d_head:2 * c.d_head, 0] = 3 * torch.randn(c.d_head)
        sae.b_enc[0] = 5.0  # fires almost everywhere
    w = windows[:, :12]
    parts = feature_dfa(model, sae, torch.from_numpy(w.astype(np.int64)), [0])
    high = float(parts["pre"][:, 1:, 0].median())  # a second threshold half the tokens pass
    out = variance_explained(model, sae, 0, w, thresholds=(0.0, high), source_tokens=list(range(c.d_vocab)),
                             batch_size=8, top_sources=c.d_vocab, progress=False)
    t0, t4 = out["thresholds"]
    assert t0["n_tokens"] > t4["n_tokens"] > 0
    assert t0["head_fve"][1] == pytest.approx(1.0, abs=1e-6)
    assert sum(t0["head_fve"]) == pytest.approx(1.0, abs=1e-6)
    assert t0["chosen_tokens_fve"] == pytest.approx(1.0, abs=1e-6)  # every source token chosen
    assert sum(s for _, s in t0["source_token_fve"]) == pytest.approx(1.0, abs=1e-6)  # over all tokens
    # the BOS source token alone explains a share matching a direct computation
    act = torch.relu(parts["pre"][:, 1:, 0])
    m = act > 0
    y = parts["by_head"][:, 1:, 0].sum(-1)[m].double()
    src = parts["by_source"][:, 1:, 0].sum(-2)
    x_bos = (src * torch.from_numpy(w == 0)[:, None, :])[m].sum(-1).double()
    want = float((x_bos * y).sum() / (y * y).sum())
    got = dict(t0["source_token_fve"]).get(0)
    assert got == pytest.approx(want, abs=1e-6)
