"""Recursive DFA: every split sums exactly to what it splits, checked against the model's own forward on tiny
GPT-2, Llama (GQA, RoPE) and Gemma 3 (post-attention norm, 1 + w gains) models."""

import pytest
import torch

from attnsae.attribution.rdfa import PromptTrace, rdfa_tree, source_parts, traced_dfa, value_readout
from attnsae.sae import SAE, SAEConfig

from .test_attribution import random_sae


def resid_sae(model, layer, d_sae=48, seed=3):
    c = model.cfg
    sae = SAE(SAEConfig(d_in=c.d_model, d_sae=d_sae, hook_name=f"blocks.{layer}.hook_resid_pre", model_name=c.name))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(c.d_model, d_sae, generator=g) * 0.3)
        sae.W_dec.copy_(torch.randn(d_sae, c.d_model, generator=g) * 0.3)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(c.d_model, generator=g) * 0.1)
    return sae


@pytest.fixture
def trace(tiny, tokens):
    model = tiny[0]
    attn = {0: random_sae(model, layer=0, d_sae=40, seed=1), 1: random_sae(model, layer=1, d_sae=40, seed=2)}
    for sae in attn.values():
        with torch.no_grad():
            sae.W_dec.normal_(generator=torch.Generator().manual_seed(5))
    return PromptTrace(model, tokens[0], attn, {1: resid_sae(model, 1)})


def close(a, b):
    assert a == pytest.approx(b, rel=1e-4, abs=1e-5)


def test_dfa_by_head_and_source_sum_to_the_pre_activation(trace):
    for dest in (3, len(trace) - 1):
        for f in range(0, 40, 7):
            d = traced_dfa(trace, 1, f, dest)
            close(d.bias + float(d.by_head.sum()), d.pre)
            close(d.bias + float(d.by_source.sum()), d.pre)
            assert d.by_source.shape == (dest + 1, trace.model.cfg.n_heads)


def test_each_source_term_is_the_residual_stream_read_out_through_frozen_ln1(trace):
    """r . x[S] + c, from the weights and the frozen scale, equals the term DFA gets from the model's own v."""
    dest, f = len(trace) - 1, 11
    d = traced_dfa(trace, 1, f, dest)
    for src in range(dest + 1):
        parts = source_parts(trace, 1, f, dest, src, top=None)
        close(parts["total"], float(d.by_source[src].sum()))
        close(sum(parts["components"].values()) + parts["value_bias"], parts["total"])
        up = parts["upstream"][0]  # layer 0's output into its attention-SAE features (through Gemma's post-norm)
        close(up["total"], parts["components"]["attn_out.0"])
        close(sum(v for *_, v in up["features"]) + up["error"] + up["bias"], up["total"])
        assert up["n_active"] == len(up["features"]) == int((trace.acts[0][src] > 0).sum())
        res = parts["resid"]  # the residual stream into the residual SAE's features
        close(sum(v for *_, v in res["features"]) + res["error"] + res["bias"] + parts["value_bias"], parts["total"])


def test_the_readout_is_linear_in_the_residual_stream(trace):
    """Doubling the stream's part along r changes nothing else: r is the gradient of the source term w.r.t. x[S]
    with scale and pattern frozen, checked against autograd through the model's own ln1 and W_V."""
    model, c = trace.model, trace.model.cfg
    dest, src, f = len(trace) - 1, 2, 5
    r, const = value_readout(trace, 1, f, dest, src)
    block = model.blocks[1]
    x = trace.cache["blocks.1.hook_resid_pre"][src].clone().requires_grad_()
    scale = trace.cache["blocks.1.ln1.hook_scale"][src]
    xc = x - x.mean() if c.norm == "layernorm" else x
    ln = xc / scale * (block.ln1_w.float() + c.norm_gain_offset) + (block.ln1_b if c.norm == "layernorm" else 0)
    v = (ln @ block.W_V.float() + (block.b_V if c.qkv_bias else 0)).view(c.n_kv_heads, c.d_head)
    v = v[torch.arange(c.n_heads) // c.group_size]
    a = trace.cache["blocks.1.attn.hook_pattern"][:, dest, src]
    w = trace.attn_saes[1].W_enc.float()[:, f].view(c.n_heads, c.d_head)
    term = (a[:, None] * v * w).sum()
    term.backward()
    torch.testing.assert_close(r, x.grad, rtol=1e-4, atol=1e-6)
    close(float(r @ x.detach()) + const, float(term.detach()))


def test_recursion_traces_an_upstream_feature_as_a_feature_at_its_source(trace):
    tree = rdfa_tree(trace, 1, 11, len(trace) - 1, depth=2, n_sources=2, n_features=2)
    assert len(tree["sources"]) == 2
    for s in tree["sources"]:
        assert len(s["children"]) == 2
        for child in s["children"]:
            assert child["layer"] == 0 and child["dest"] == s["src"]
            close(child["pre"], float(trace.pre[0][s["src"], child["feature"]]))
            up = {j: v for j, _, v in s["parts"]["upstream"][0]["features"]}
            close(child["value"], up[child["feature"]])
            assert child["sources"] and all(not g["children"] for g in child["sources"])  # depth 2: leaves


def test_bad_requests_are_refused_with_the_reason(tiny, tokens, trace):
    model = tiny[0]
    with pytest.raises(ValueError, match="no attention SAE at layer 3"):
        traced_dfa(trace, 3, 0, 2)
    with pytest.raises(ValueError, match="feature 40 out of range"):
        traced_dfa(trace, 1, 40, 2)
    with pytest.raises(ValueError, match="position 99 out of range"):
        traced_dfa(trace, 1, 0, 99)
    with pytest.raises(ValueError, match="source 5 out of range"):
        source_parts(trace, 1, 0, 4, 5)
    with pytest.raises(ValueError, match="reads blocks.1.attn.hook_z"):
        PromptTrace(model, tokens[0], {0: random_sae(model, layer=1)})
    with pytest.raises(ValueError, match="needs the model in float32"):
        import copy

        PromptTrace(copy.deepcopy(model).to(torch.bfloat16), tokens[0], {1: random_sae(model)})


@pytest.mark.parametrize("resid", [False, True])
def test_qk_table_sums_to_the_models_attention_score(trace, resid):
    """Query part x key part terms (rotary, Gemma's q/k norms and GQA's shared keys included) sum to the score."""
    from attnsae.attribution.qk import qk_table

    c = trace.model.cfg
    for head in range(c.n_heads):
        window = c.sliding_window if c.is_sliding(1) and c.sliding_window else len(trace)
        for dest, src in ((len(trace) - 1, len(trace) - window), (5, 5), (7, max(0, 8 - window))):
            t = qk_table(trace, 1, head, dest, src, resid_sae=resid)
            assert t["table"].shape == (len(t["rows"]), len(t["cols"]))
            # large terms cancel to a small score: float error scales with the terms, not with the score
            assert abs(float(t["table"].sum()) - t["score"]) <= 1e-5 * float(t["table"].abs().sum()) + 1e-6
            assert t["rows"][-1] == "query constant" and t["cols"][-1] == "key constant"
    t = qk_table(trace, 1, 0, 9, 9)
    assert "L0 error" in t["rows"] and "mlp_out.0" in t["cols"] and any(r.startswith("L0.F") for r in t["rows"])
    with pytest.raises(ValueError, match="source 10 out of range"):
        qk_table(trace, 1, 0, 9, 10)
    with pytest.raises(ValueError, match="head 99 out of range"):
        qk_table(trace, 1, 99, 9, 4)


def test_pair_variance_shares_sum_to_one_and_find_the_pair_that_moves_the_score():
    """Hand-made tables over 50 'prompts': one pair varies strongly, one a little, the rest are noise; prompts list
    different parts (an active feature set changes), so pairs are matched by name, absent meaning 0."""
    from attnsae.attribution.qk import pair_variance

    g = torch.Generator().manual_seed(0)
    tables = []
    for i in range(50):
        rows = ["L3.F1", "L3.F2", f"L3.F{10 + i % 3}", "L3 error", "query constant"]
        cols = ["resid F7", f"resid F{20 + i % 2}", "resid error", "key constant"]
        t = 0.01 * torch.randn(len(rows), len(cols), generator=g)
        t[0, 0] += 3 * torch.randn((), generator=g)  # L3.F1 x resid F7 moves the score most
        t[3, 2] += 0.5 * torch.randn((), generator=g)  # error x error a little
        tables.append({"rows": rows, "cols": cols, "table": t})
    r = pair_variance(tables, n=1)
    assert r["share_sum"] == pytest.approx(1.0, abs=1e-9)
    assert (r["top"][0]["query"], r["top"][0]["key"]) == ("L3.F1", "resid F7")
    assert 0.9 < r["top_share"] < 1 and 0.9 < r["explained"] < 1
    assert 0 < r["error_share"] < 0.1
    score = torch.stack([t["table"].sum() for t in tables]).double()
    assert r["score_var"] == pytest.approx(float(score.var(unbiased=False)))
    every = pair_variance(tables, n=10**6)  # every pair together explains everything
    assert every["top_share"] == pytest.approx(1.0, abs=1e-9) and every["explained"] == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="at least 2 prompts"):
        pair_variance(tables[:1])


def test_pair_variance_over_real_tables_sums_to_one(trace):
    from attnsae.attribution.qk import pair_variance, qk_table

    tables = [qk_table(trace, 1, 0, dest, dest - 2) for dest in range(4, len(trace))]
    r = pair_variance(tables, n=5)
    assert r["share_sum"] == pytest.approx(1.0, abs=1e-6) and len(r["top"]) == 5
    # `explained` recomputed from the tables: the score minus the top pairs' terms, prompt by prompt
    top = {(t["query"], t["key"]) for t in r["top"]}
    score = torch.tensor([float(t["table"].double().sum()) for t in tables], dtype=torch.float64)
    rest = score - torch.tensor([sum(float(t["table"][i, j]) for i, q in enumerate(t["rows"]) for j, k in
                                     enumerate(t["cols"]) if (q, k) in top) for t in tables], dtype=torch.float64)
    assert r["explained"] == pytest.approx(float(1 - rest.var(unbiased=False) / score.var(unbiased=False)), rel=1e-5)


def test_every_split_sums_on_real_smollm2():
    """The same sums on the real SmolLM2-135M (GQA, RoPE, RMSNorm) weights, on an IOI prompt: DFA by head and by source,
    a source into components and upstream features, recursion, and a head's QK table against the model's score."""
    from attnsae.attribution.qk import qk_table
    from attnsae.data.windows import prompt_tokens

    from .conftest import real_model

    model = real_model("smollm2-135m")
    assert model.dtype == torch.float32
    saes = {2: random_sae(model, layer=2, d_sae=64, seed=1), 5: random_sae(model, layer=5, d_sae=64, seed=2)}
    for sae in saes.values():
        with torch.no_grad():
            sae.W_dec.normal_(generator=torch.Generator().manual_seed(5))
    tokens = prompt_tokens(model, "When Mary and John went to the store, John gave a drink to", 64)
    trace = PromptTrace(model, tokens, saes)
    _, cache = model.run_with_cache(tokens[None], ["blocks.5.attn.hook_z"])  # the model's own z, independently
    torch.testing.assert_close(trace.pre[5], saes[5].pre_acts(cache["blocks.5.attn.hook_z"][0].flatten(1)).float())
    dest = len(trace) - 1
    f = int(trace.pre[5][dest].argmax())
    d = traced_dfa(trace, 5, f, dest)
    close(d.bias + float(d.by_head.sum()), d.pre)
    close(d.bias + float(d.by_source.sum()), d.pre)
    for src in (2, 10, dest):
        parts = source_parts(trace, 5, f, dest, src, top=None)
        close(parts["total"], float(d.by_source[src].sum()))
        close(sum(parts["components"].values()) + parts["value_bias"], parts["total"])
        up = parts["upstream"][2]
        close(sum(v for *_, v in up["features"]) + up["error"] + up["bias"], up["total"])
    for head in (0, 4, 8):
        t = qk_table(trace, 5, head, dest, 2)
        assert abs(float(t["table"].double().sum()) - t["score"]) <= 1e-5 * float(t["table"].abs().sum()) + 1e-5
