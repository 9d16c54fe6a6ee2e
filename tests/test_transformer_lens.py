"""Our hooks against TransformerLens's on the same weights (tiny random GPT-2 and Llama, converted by TL's own
weight conversion). `make test` runs these in .venv-peers; elsewhere they skip without TransformerLens."""

import pytest
import torch

from attnsae.models import from_hf

from .conftest import FAMILIES, hf_tiny, peer

pytestmark = pytest.mark.peers


def rope_theta(config) -> float:
    """Newer transformers keep it in rope_parameters."""
    params = getattr(config, "rope_parameters", None) or {}
    return params.get("rope_theta") or config.rope_theta


def tl_twin(family: str, hf, ours):
    """TransformerLens's HookedTransformer with `hf`'s weights, unprocessed (no LN folding, no centering)."""
    tl = peer("transformer_lens")
    from transformer_lens.pretrained.weight_conversions import (
        convert_gemma_weights,
        convert_gpt2_weights,
        convert_llama_weights,
        convert_mistral_weights,
        convert_neox_weights,
        convert_qwen2_weights,
    )

    c = hf.config
    common = dict(n_layers=c.num_hidden_layers, d_model=c.hidden_size, n_ctx=64, d_vocab=c.vocab_size,
                  n_heads=c.num_attention_heads, d_head=c.hidden_size // c.num_attention_heads, default_prepend_bos=False,
                  use_attn_result=True)
    if family == "gpt2":
        cfg = tl.HookedTransformerConfig(**common, d_mlp=4 * c.hidden_size, act_fn="gelu_new", normalization_type="LN",
                                         eps=c.layer_norm_epsilon, original_architecture="GPT2LMHeadModel")
        sd = convert_gpt2_weights(hf, cfg)
    elif family == "gpt_neox":
        cfg = tl.HookedTransformerConfig(**common, d_mlp=c.intermediate_size, act_fn="gelu", normalization_type="LN",
                                         eps=c.layer_norm_eps, positional_embedding_type="rotary",
                                         rotary_dim=ours.cfg.rotary_dim, rotary_base=ours.cfg.rope_theta,
                                         parallel_attn_mlp=True, original_architecture="GPTNeoXForCausalLM")
        sd = convert_neox_weights(hf, cfg)
    elif family.startswith("gemma"):
        o = ours.cfg
        extra = {}
        if family != "gemma":  # Gemma 2 and 3: local and global layers, norms before and after
            extra = dict(window_size=c.sliding_window, use_local_attn=True, use_normalization_before_and_after=True,
                         attn_types=["local" if t == "sliding_attention" else "global" for t in c.layer_types])
        if family == "gemma2":
            extra |= dict(attn_scores_soft_cap=c.attn_logit_softcapping, output_logits_soft_cap=c.final_logit_softcapping,
                          attn_scale=c.query_pre_attn_scalar**0.5)
        if family == "gemma3":
            extra |= dict(use_qk_norm=True, rotary_base_local=o.rope_local_theta)
        cfg = tl.HookedTransformerConfig(**common | {"d_head": c.head_dim}, d_mlp=c.intermediate_size,
                                         act_fn="gelu_pytorch_tanh", normalization_type="RMS", eps=c.rms_norm_eps,
                                         positional_embedding_type="rotary", rotary_dim=c.head_dim, rotary_base=o.rope_theta,
                                         use_attn_scale=True, n_key_value_heads=c.num_key_value_heads, gated_mlp=True,
                                         final_rms=True, original_architecture=type(hf).__name__, **extra)
        sd = convert_gemma_weights(hf, cfg)
    else:  # llama, mistral, qwen2
        local = dict(window_size=c.sliding_window, use_local_attn=True, attn_types=["local"] * c.num_hidden_layers) \
            if family == "mistral" else {}
        cfg = tl.HookedTransformerConfig(**common | {"d_head": c.head_dim}, d_mlp=c.intermediate_size, act_fn="silu",
                                         normalization_type="RMS", eps=c.rms_norm_eps, positional_embedding_type="rotary",
                                         rotary_dim=c.head_dim, rotary_base=rope_theta(c), gated_mlp=True,
                                         final_rms=True, n_key_value_heads=c.num_key_value_heads,
                                         original_architecture=type(hf).__name__, **local)
        convert = {"llama": convert_llama_weights, "mistral": convert_mistral_weights, "qwen2": convert_qwen2_weights}
        sd = convert[family](hf, cfg)
    model = tl.HookedTransformer(cfg)
    model.load_and_process_state_dict(sd, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                      fold_value_biases=False, refactor_factored_attn_matrices=False)
    return model.eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_hook_equals_transformer_lens(family):
    """Every hook and the logits equal TransformerLens's on the same weights (TL with use_attn_result, so hook_result
    is there)."""
    hf = hf_tiny(family)
    ours = from_hf(hf, weights="random")
    theirs = tl_twin(family, hf, ours)
    assert_same_hooks(ours, theirs)


def assert_same_hooks(ours, theirs):
    """Both emit the same hook names and hold the same values, logits included. TL flattens Gemma 3's q/k-norm hooks
    over batch, position and head; ours keep the head axis."""
    tokens = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tl_logits, cache = theirs.run_with_cache(tokens)
    names = ours.hook_names()
    assert sorted(names) == sorted(cache.keys())
    logits, mine = ours.run_with_cache(tokens, names, stop_early=False)
    for name in names:
        a, b = mine[name].float(), cache[name].float()
        if "_norm.hook_" in name:
            a = a.reshape(b.shape)
        if name.endswith("attn_scores"):  # -inf above the diagonal in both
            assert torch.equal(torch.isinf(a), torch.isinf(b)), name
            a, b = a.nan_to_num(neginf=0), b.nan_to_num(neginf=0)
        assert a.shape == b.shape, (name, a.shape, b.shape)
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(logits.float(), tl_logits.float(), atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("attn_only,pos,act_fn", [(False, "standard", "gelu"), (True, "standard", "gelu"),
                                                  (True, "shortformer", "gelu"), (False, "standard", "solu_ln")])
def test_transformer_lens_checkpoints_load_with_every_hook_equal(tmp_path, attn_only, pos, act_fn):
    """A GELU-2L-shaped HookedTransformer (or attention-only, attn-only-2L-shaped with shortformer positions, or
    SoLU-2L-shaped)'s own config and state dict, saved as TransformerLens's checkpoints are, load into our model with
    every hook and the logits equal to TransformerLens's."""
    import json

    from attnsae.models import load_model

    tl = peer("transformer_lens")
    c = dict(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=128, d_vocab=101, n_ctx=32, act_fn=act_fn,
             attn_only=attn_only, normalization_type="LN", positional_embedding_type=pos)
    torch.manual_seed(0)
    theirs = tl.HookedTransformer(tl.HookedTransformerConfig(**c, default_prepend_bos=False, use_attn_result=True,
                                                             init_weights=True)).eval()
    with torch.no_grad():  # nonzero biases and gains, so that each is checked
        for name, p in theirs.named_parameters():
            if name.endswith(("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U", ".b")):
                p.normal_(0, 0.1)
            elif name.endswith(".w"):
                p.add_(0.2 * torch.randn_like(p))
    (tmp_path / "config.json").write_text(json.dumps(c))
    torch.save({k: v for k, v in theirs.state_dict().items() if v.is_floating_point()}, tmp_path / "model_final.pth")
    assert_same_hooks(load_model(str(tmp_path), use_cache=False), theirs)
