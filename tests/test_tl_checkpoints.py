"""Checkpoints that exist only in TransformerLens's format (GELU-2L, attn-only): config and state dict under TL's names
load into the hooked transformer, with the same hook facts as every family (`tests/test_transformer_lens.py` checks
every hook against TransformerLens itself)."""

import json

import pytest
import torch

from attnsae.models import load_model

from .test_models import check_hooks

GELU_2L = dict(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=128, d_vocab=101, n_ctx=32, act_fn="gelu",
               attn_only=False, normalization_type="LN", positional_embedding_type="standard")


def tl_state(c: dict, seed: int = 0) -> dict:
    """Random weights under TransformerLens's parameter names and per-head shapes."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: 0.2 * torch.randn(*s, generator=g)  # noqa: E731
    d, h, dh, m, v = c["d_model"], c["n_heads"], c["d_head"], c["d_mlp"], c["d_vocab"]
    sd = {"embed.W_E": r(v, d), "pos_embed.W_pos": r(c["n_ctx"], d), "unembed.W_U": r(d, v), "unembed.b_U": r(v),
          "ln_final.w": 1 + r(d), "ln_final.b": r(d)}
    for i in range(c["n_layers"]):
        p = f"blocks.{i}."
        sd |= {p + "ln1.w": 1 + r(d), p + "ln1.b": r(d), p + "attn.W_O": r(h, dh, d), p + "attn.b_O": r(d)}
        sd |= {p + f"attn.W_{n}": r(h, d, dh) for n in "QKV"} | {p + f"attn.b_{n}": r(h, dh) for n in "QKV"}
        if not c["attn_only"]:
            sd |= {p + "ln2.w": 1 + r(d), p + "ln2.b": r(d), p + "mlp.W_in": r(d, m), p + "mlp.b_in": r(m),
                   p + "mlp.W_out": r(m, d), p + "mlp.b_out": r(d)}
        if c["act_fn"] == "solu_ln":  # SoLU's LayerNorm over the MLP's width
            sd |= {p + "mlp.ln.w": 1 + r(m), p + "mlp.ln.b": r(m)}
    return sd


class Payload:
    """Not a tensor: unpickling it would run code a checkpoint could choose."""


def write_checkpoint(folder, c: dict, sd: dict):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(c))
    torch.save(sd, folder / "model_final.pth")
    return folder


@pytest.mark.parametrize("attn_only,act_fn", [(False, "gelu"), (True, "gelu"), (False, "solu_ln")])
def test_a_transformer_lens_checkpoint_loads_with_every_hook_fact(tmp_path, attn_only, act_fn):
    c = GELU_2L | {"attn_only": attn_only, "act_fn": act_fn}
    model = load_model(str(write_checkpoint(tmp_path / "m", c, tl_state(c))), use_cache=False)
    assert model.cfg.family == "transformer_lens" and model.cfg.attn_only == attn_only
    tokens = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(1))
    check_hooks(model, tokens)
    names = model.hook_names()
    assert ("blocks.0.hook_resid_mid" in names) != attn_only and ("blocks.1.mlp.hook_post" in names) != attn_only
    assert ("blocks.1.mlp.hook_mid" in names) == ("blocks.1.mlp.ln.hook_scale" in names) == (act_fn == "solu_ln")
    logits, cache = model.run_with_cache(tokens, ["unembed.hook_in", "blocks.1.hook_resid_post"], stop_early=False)
    torch.testing.assert_close(logits, cache["unembed.hook_in"] @ model.W_U + model.b_U)  # the unembedding bias
    if attn_only:  # the residual stream is the embeddings plus the attention outputs only
        _, c2 = model.run_with_cache(tokens, ["hook_embed", "hook_pos_embed", "blocks.0.hook_attn_out",
                                              "blocks.1.hook_attn_out", "blocks.1.hook_resid_post"], stop_early=False)
        total = c2["hook_embed"] + c2["hook_pos_embed"] + c2["blocks.0.hook_attn_out"] + c2["blocks.1.hook_attn_out"]
        torch.testing.assert_close(c2["blocks.1.hook_resid_post"], total)


def test_unsupported_or_unsafe_transformer_lens_checkpoints_are_refused(tmp_path):
    with pytest.raises(NotImplementedError, match="positional embedding 'alibi' .supported: standard, shortformer"):
        load_model(str(write_checkpoint(tmp_path / "a", GELU_2L | {"positional_embedding_type": "alibi"},
                                        tl_state(GELU_2L))), use_cache=False)
    with pytest.raises(NotImplementedError, match="activation 'gelu_fast'"):
        load_model(str(write_checkpoint(tmp_path / "b", GELU_2L | {"act_fn": "gelu_fast"}, tl_state(GELU_2L))),
                   use_cache=False)
    with pytest.raises(ValueError, match="refusing to unpickle"):  # a pickle that is more than tensors
        load_model(str(write_checkpoint(tmp_path / "c", GELU_2L, {"x": Payload()})), use_cache=False)
    sd = tl_state(GELU_2L)
    sd["blocks.1.attn.W_Q"] = sd["blocks.1.attn.W_Q"][:, :, :8]
    with pytest.raises(ValueError, match=r"checkpoint tensor blocks.1.W_Q has shape \(64, 32\) but the config says"):
        load_model(str(write_checkpoint(tmp_path / "d", GELU_2L, sd)), use_cache=False)


def test_attribution_runs_on_a_transformer_lens_checkpoint(tmp_path):
    """DFA by head and source is exact and head attribution runs on the attention-only layout (no MLP anywhere)."""
    from attnsae.attribution import feature_dfa, head_attribution

    from .test_attribution import random_sae

    c = GELU_2L | {"attn_only": True}
    model = load_model(str(write_checkpoint(tmp_path / "m", c, tl_state(c))), use_cache=False)
    sae = random_sae(model, layer=1)
    tokens = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(2))
    out = feature_dfa(model, sae, tokens, [1, 2])
    _, cache = model.run_with_cache(tokens, ["blocks.1.attn.hook_z"])
    want = sae.pre_acts(cache["blocks.1.attn.hook_z"].flatten(2))[..., [1, 2]]
    torch.testing.assert_close(out["by_source"].sum((-1, -2)) + out["bias"], want, atol=1e-5, rtol=1e-5)
    assert head_attribution(sae, model.cfg.n_heads).shape == (sae.d_sae, model.cfg.n_heads)


def test_recursive_dfa_and_qk_tables_are_exact_on_an_attention_only_shortformer_model(tmp_path):
    """attn-only-2L's layout: no MLP, and positions that enter only queries and keys. The residual stream's parts (no
    position embedding, no MLP outputs) still sum to each source term, and the QK table (with the positions in each
    side's constant) to the attention score."""
    from attnsae.attribution.qk import qk_table
    from attnsae.attribution.rdfa import PromptTrace, source_parts, traced_dfa

    from .test_attribution import random_sae

    c = GELU_2L | {"attn_only": True, "positional_embedding_type": "shortformer"}
    model = load_model(str(write_checkpoint(tmp_path / "m", c, tl_state(c))), use_cache=False)
    assert model.cfg.shortformer_pos and not model.cfg.pos_in_residual
    tokens = torch.randint(0, 101, (12,), generator=torch.Generator().manual_seed(3))
    trace = PromptTrace(model, tokens, {0: random_sae(model, layer=0, seed=1), 1: random_sae(model, layer=1, seed=2)})
    dest = len(trace) - 1
    for f in (3, 11):
        d = traced_dfa(trace, 1, f, dest)
        assert float(d.bias + d.by_source.sum()) == pytest.approx(d.pre, rel=1e-4, abs=1e-5)
        for src in (0, 4, dest):
            parts = source_parts(trace, 1, f, dest, src, top=None)
            assert set(parts["components"]) == {"embed", "attn_out.0"}
            total = sum(parts["components"].values()) + parts["value_bias"]
            assert total == pytest.approx(parts["total"], rel=1e-4, abs=1e-5)
            assert parts["total"] == pytest.approx(float(d.by_source[src].sum()), rel=1e-4, abs=1e-5)
    for head in range(model.cfg.n_heads):
        t = qk_table(trace, 1, head, dest, 4)
        assert abs(float(t["table"].sum()) - t["score"]) <= 1e-5 * float(t["table"].abs().sum()) + 1e-6
