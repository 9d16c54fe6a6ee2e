"""IOI experiments on tiny random models with the real GPT-2 tokenizer, where answers are known by construction."""

import numpy as np
import pytest
import torch

from attnsae.experiments import ioi
from attnsae.experiments.ioi import ablate_s2, feature_ablation, path_patching, saes_by_layer, splice_eval
from attnsae.models import from_hf, gpt2_tokenizer
from attnsae.models.hooks import act_name, parse_heads
from attnsae.sae import SAE, SAEConfig

from .conftest import hf_tiny

VOCAB = 50257  # the GPT-2 tokenizer's


def hf_ioi(family: str):
    """Tiny random models of each family with GPT-2's vocabulary, so real prompts can be tokenized."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    if family == "gpt2":
        return hf_tiny("gpt2", vocab=VOCAB)
    torch.manual_seed(0)
    if family == "llama":  # grouped-query: 6 query heads read 2 value heads
        hf = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=96, num_attention_heads=6, num_key_value_heads=2,
                                          head_dim=16, intermediate_size=96, vocab_size=VOCAB, rope_theta=1e4,
                                          bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, pad_token_id=None))
    else:
        hf = Gemma3ForCausalLM(Gemma3TextConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=1,
                                                head_dim=32, intermediate_size=96, vocab_size=VOCAB, sliding_window=32,
                                                layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=32,
                                                bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, pad_token_id=0))
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return hf.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread avoids OpenMP hand-offs that cost 5x when another process holds a core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tokenizer():
    return gpt2_tokenizer()


@pytest.fixture(scope="module", params=["gpt2", "llama", "gemma3"])
def setup(request, tokenizer):
    """(model, vocab, IOI batch with 6 ABBA + 6 BABA prompts, ABC batch covering every template).
    Attention weights are scaled up so that interventions move the logit diff well above float noise."""
    model = from_hf(hf_ioi(request.param), weights="random")
    model.cfg.name = f"tiny-{request.param}"
    model.tokenizer, model.cfg.bos_token_id = tokenizer, VOCAB - 1
    with torch.no_grad():
        for blk in model.blocks:
            blk.W_Q.mul_(4), blk.W_K.mul_(4), blk.W_V.mul_(6), blk.W_O.mul_(6)
        model.W_E.mul_(20)
    vocab = ioi.ioi_vocab(model)
    batch = ioi.encode(vocab, ioi.ioi_prompts(vocab, 6, seed=0))
    abc = ioi.encode(vocab, ioi.abc_prompts(vocab, 16, seed=1))
    return model, vocab, batch, abc


def random_sae(model, layer: int, d_sae: int = 48, seed: int = 0, **kw) -> SAE:
    c = model.cfg
    sae = SAE(SAEConfig(d_in=c.d_attn, d_sae=d_sae, hook_name=act_name("z", layer), model_name=c.name, **kw))
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sae.W_enc.mul_(3.0)
        sae.b_enc.fill_(0.0)
    return sae


def identity_sae(model, layer: int) -> SAE:
    """d_sae = 2 d_in, W_enc = [I, -I], W_dec = [I; -I], no biases: relu(x) - relu(-x) = x exactly."""
    c = model.cfg
    sae = SAE(SAEConfig(d_in=c.d_attn, d_sae=2 * c.d_attn, hook_name=act_name("z", layer), model_name=c.name))
    eye = torch.eye(c.d_attn)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_(), sae.b_dec.zero_()
    return sae


@torch.no_grad()
def ld_with(model, batch, hooks):
    logits = model.run_with_hooks(batch.tokens, hooks)
    ar = torch.arange(len(batch))
    return logits[ar, batch.end, batch.io_id] - logits[ar, batch.end, batch.s_id]


# ---- prompts ------------------------------------------------------------------------------------

def _tok(tokenizer, batch, i, key):
    return tokenizer.decode([int(batch.tokens[i, int(getattr(batch, key)[i])])])


def test_prompts_are_single_token_names_at_the_right_positions(tokenizer):
    vocab = ioi.IOIVocab.build(tokenizer, VOCAB - 1, names=list(ioi.NAMES) + ["Xzqwvbn"])
    assert "Xzqwvbn" not in vocab.names and "Mary" in vocab.names
    assert all(len(tokenizer.encode(" " + n)) == 1 for n in vocab.names + vocab.places + vocab.objects)
    prompts = ioi.ioi_prompts(vocab, 16, seed=3)
    batches = {"clean": ioi.encode(vocab, prompts), "abc": ioi.encode(vocab, ioi.abc_prompts(vocab, 16)),
               **ioi.corruptions(vocab, prompts)}
    assert set(batches) == {"clean", "abc", "3 perturbations", "and->alongside", "and->besides", "and->plus", "and->with",
                            "and->,", "and->including"}
    clean = batches["clean"]
    for key, b in batches.items():
        for i, p in enumerate(b.prompts):
            L = int(b.length[i])
            assert b.tokens[i, 0] == VOCAB - 1 and (b.tokens[i, L:] == VOCAB - 1).all()
            assert tokenizer.decode(b.tokens[i, 1:L].tolist()) == b.text[i]
            assert b.text[i].endswith(" to") and int(b.end[i]) == L - 1
            assert _tok(tokenizer, b, i, "io") == " " + p.io and tokenizer.decode([int(b.io_id[i])]) == " " + p.io
            assert _tok(tokenizer, b, i, "s1") == " " + p.s and tokenizer.decode([int(b.s_id[i])]) == " " + p.s
            assert _tok(tokenizer, b, i, "s2") == " " + (p.c if p.order == "ABC" else p.s)
            assert _tok(tokenizer, b, i, "conj") == p.conj
            assert int(b.conj[i]) == min(int(b.io[i]), int(b.s1[i])) + 1  # "X and Y"
            first = "io" if p.order in ("ABBA", "ABC") else "s1"
            assert int(getattr(b, first)[i]) < int(b.conj[i]) < int(b.s2[i]) < int(b.end[i])
            if key != "clean" and key != "abc":
                assert b.order[i] == clean.order[i] and b.template[i] == clean.template[i]  # aligned per prompt
        if key.startswith("and->"):
            assert torch.equal(b.s2, clean.s2) and torch.equal(b.io_id, clean.io_id)
            assert all(_tok(tokenizer, b, i, "conj") == " " + key[5:] if key[5:] != "," else "," for i in range(len(b)))
    abc = batches["abc"]
    assert all(len({p.io, p.s, p.c}) == 3 for p in abc.prompts)
    # ABBA, BABA and ABC prompts of one template share every position
    for t in range(len(vocab.templates)):
        rows = torch.cat([clean.template, abc.template]) == t
        for key in ("io", "s1", "s2", "end", "conj"):
            pos = torch.cat([torch.minimum(clean.io, clean.s1) if key in ("io", "s1") else getattr(clean, key),
                             torch.minimum(abc.io, abc.s1) if key in ("io", "s1") else getattr(abc, key)])
            assert len(set(pos[rows].tolist())) == 1
    # 3 perturbations: new names, text before the prompt, text between S1 and S2; same order
    noisy = batches["3 perturbations"]
    for i, (p, q) in enumerate(zip(clean.prompts, noisy.prompts, strict=True)):
        assert not {q.io, q.s} & {p.io, p.s} and q.io != q.s
        assert int(noisy.io[i]) > int(clean.io[i])  # prefix
        assert int(noisy.s2[i] - noisy.s1[i]) > int(clean.s2[i] - clean.s1[i])  # gap
        assert " and " not in q.prefix + q.gap
    with pytest.warns(UserWarning, match="not a single token"):
        assert ioi.replace_conj(vocab, prompts, " notwithstandingly") is None
    with pytest.raises(ValueError, match="at least 4"):
        ioi.IOIVocab.build(tokenizer, VOCAB - 1, names=["Mary", "John", "Xzqwvbn"])
    with pytest.raises(ValueError, match="needs"):
        ioi.IOIVocab.build(tokenizer, VOCAB - 1, templates=["When {X} and {Y} went out, {Z} said to"])


def test_run_end_and_logit_diff_match_the_full_forward(setup):
    model, vocab, batch, _ = setup
    full = model(batch.tokens).detach()
    ar = torch.arange(len(batch))
    logits, _ = ioi.run_end(model, batch.tokens, batch.end)
    torch.testing.assert_close(logits, full[ar, batch.end], atol=1e-5, rtol=1e-5)
    ld = ioi.logit_diff(logits, batch)
    by_hand = full[ar, batch.end, batch.io_id] - full[ar, batch.end, batch.s_id]
    torch.testing.assert_close(ld, by_hand, atol=1e-5, rtol=1e-5)
    s = ioi.summarize(ld, batch, vocab)
    assert s["mean"] == pytest.approx(float(by_hand.mean()), abs=1e-5)
    assert s["ABBA"] == pytest.approx(float(by_hand[::2].mean()), abs=1e-5)  # prompts interleave ABBA, BABA
    assert s["BABA"] == pytest.approx(float(by_hand[1::2].mean()), abs=1e-5)
    assert len(s["by_template"]) == 6 and all(t in vocab.templates for t in s["by_template"])


# ---- splicing ------------------------------------------------------------------------------------

def test_splicing_an_identity_sae_and_mean_ablating_by_itself_give_the_clean_numbers(setup):
    from attnsae.evals.splice import zero_hook

    model, _, batch, abc = setup
    saes = saes_by_layer(model, [identity_sae(model, 0), identity_sae(model, 1)])
    one = batch.select([int(torch.nonzero(batch.template == t)[0]) for t in batch.template.unique()])
    r = splice_eval(model, one, one, saes, {"both": [0, 1], "absent": [5]})
    clean = r["clean"]["mean"]
    for entry in r["layers"] + r["sections"][:1]:
        for kind in ("sae", "mean_ablation"):  # one prompt per template: its ABC "mean" is itself
            assert entry[kind]["logit_diff"]["mean"] == pytest.approx(clean, abs=1e-5)
            assert entry[kind]["kl"] == pytest.approx(0, abs=1e-6)
    assert r["sections"][1] == {"name": "absent", "layers": [], "missing": [5]}
    # a real SAE changes things, and the ABC mean differs from the clean activations
    r = splice_eval(model, batch, abc, {1: random_sae(model, 1)}, {})
    assert r["layers"][0]["sae"]["kl"] > 1e-4 and r["layers"][0]["mean_ablation"]["kl"] > 1e-4
    # first_pos: an SAE that reconstructs 0 equals zero-ablating every position but BOS
    zero = random_sae(model, 0, first_pos=1)
    with torch.no_grad():
        zero.W_dec.zero_()
    r = splice_eval(model, batch, abc, {0: zero}, {})
    want = ld_with(model, batch, [("blocks.0.attn.hook_z", zero_hook(1))]).mean()
    assert r["layers"][0]["sae"]["logit_diff"]["mean"] == pytest.approx(float(want), abs=1e-5)


def test_saes_that_do_not_fit_are_refused(setup):
    model, _, _, _ = setup
    c = model.cfg
    q = SAE(SAEConfig(d_in=c.d_attn, d_sae=8, hook_name="blocks.0.attn.hook_q", model_name=c.name))
    with pytest.raises(ValueError, match="whole layer's attn.hook_z"):
        saes_by_layer(model, [q])
    far = SAE(SAEConfig(d_in=c.d_attn, d_sae=8, hook_name="blocks.7.attn.hook_z", model_name=c.name))
    with pytest.raises(ValueError, match="does not exist"):
        saes_by_layer(model, [far])
    other = SAE(SAEConfig(d_in=c.d_attn, d_sae=8, hook_name="blocks.0.attn.hook_z", model_name="gpt2-small"))
    with pytest.raises(ValueError, match="trained on 'gpt2-small'"):
        saes_by_layer(model, [other])
    with pytest.raises(ValueError, match="two SAEs for layer 0"):
        saes_by_layer(model, [identity_sae(model, 0), identity_sae(model, 0)])


# ---- features at S2 ------------------------------------------------------------------------------

def _zero_feature_at_s2(batch, f, first_pos):
    def edit(acts):  # acts [b, p - first_pos, d_sae]
        acts = acts.clone()
        acts[torch.arange(len(batch)), batch.s2 - first_pos, f] = 0
        return acts
    return edit


def test_feature_ablation_matches_the_spliced_model_and_is_zero_for_silent_features(setup):
    from attnsae.evals.splice import sae_hook

    model, _, batch, _ = setup
    sae = random_sae(model, 0)
    with torch.no_grad():
        sae.b_enc[5] = -1e4  # never fires
    r = feature_ablation(model, batch, sae)
    assert r["keep_error_max_abs_change"] < 1e-5  # spliced with the error term and nothing ablated: clean
    firing = {e["feature"] for e in r["table"]} - {"error_term"}
    assert 5 not in firing and len(firing) > 3
    table = {(e["feature"], e["order"]): e["delta"] for e in r["table"]}
    clean = ld_with(model, batch, [])
    top = [e["feature"] for e in r["table"] if e["feature"] != "error_term"][:2]
    for f in top:
        hook = sae_hook(sae, keep_error=True, edit=_zero_feature_at_s2(batch, f, sae.cfg.first_pos))
        delta = ld_with(model, batch, [("blocks.0.attn.hook_z", hook)]) - clean
        for order in ("ABBA", "BABA"):
            assert table[(f, order)] == pytest.approx(float(delta[batch.mask(order)].mean()), abs=2e-5)
    assert max(abs(v) for v in table.values()) > 1e-3  # the test would notice a no-op
    # the error term's ablation: z at S2 becomes the reconstruction there
    ar = torch.arange(len(batch))

    def recon_at_s2(z, name):
        z = z.clone()
        z[ar, batch.s2] = sae(z[ar, batch.s2].flatten(1)).reconstruction.view(z[ar, batch.s2].shape).to(z.dtype)
        return z
    delta = ld_with(model, batch, [("blocks.0.attn.hook_z", recon_at_s2)]) - clean
    for order in ("ABBA", "BABA"):
        assert table[("error_term", order)] == pytest.approx(float(delta[batch.mask(order)].mean()), abs=2e-5)
    # an explicitly requested silent feature is run on every prompt and changes nothing
    r5 = feature_ablation(model, batch, sae, features=[5])
    assert {e["n_fire"] for e in r5["table"] if e["feature"] == 5} == {0}
    assert all(abs(e["delta"]) < 1e-6 for e in r5["table"] if e["feature"] == 5)
    # sum check: every feature and the error term ablated at once leaves b_dec at S2

    def b_dec_at_s2(z, name):
        z = z.clone()
        z[ar, batch.s2] = sae.b_dec.detach().view(z.shape[2:]).to(z.dtype)
        return z
    want = ld_with(model, batch, [("blocks.0.attn.hook_z", b_dec_at_s2)])
    torch.testing.assert_close(ablate_s2(model, batch, sae, range(sae.cfg.d_sae), error=True), want, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ablate_s2(model, batch, sae, []), clean, atol=1e-5, rtol=1e-5)


def test_path_patching_acts_only_through_the_chosen_heads_values(setup):
    model, _, batch, _ = setup
    c = model.cfg
    sae = random_sae(model, 0, seed=1)
    with torch.no_grad():
        sae.W_dec[7] = 0  # fires but contributes nothing
        sae.b_enc[9] = -1e4  # never fires
    head = (1, c.n_heads - 1)
    r = path_patching(model, batch, sae, [head])
    table = {(e["feature"], e["order"]): e["delta"] for e in r["table"]}
    assert (7, "ABBA") in table or (7, "BABA") in table
    assert all(abs(v) < 1e-6 for (f, _), v in table.items() if f == 7)
    assert max(abs(v) for v in table.values()) > 1e-4
    r9 = path_patching(model, batch, sae, [head], features=[9])
    assert all(abs(e["delta"]) < 1e-6 for e in r9["table"] if e["feature"] == 9)

    # independently, with the model's own code: subtract the feature's output from the residual stream at S2
    # entering layer 1, freeze layer 1's patterns, and keep only the head's z at END from that forward
    f = max((k for k in table if k[0] != "error_term"), key=lambda k: abs(table[k]))[0]
    _, cache = model.run_with_cache(batch.tokens, ["blocks.0.attn.hook_z", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z"],
                                    stop_early=False)
    ar = torch.arange(len(batch))
    x = cache["blocks.0.attn.hook_z"][ar, batch.s2].flatten(1)
    a = sae.encode(x)[:, f]
    d_resid = _feature_residual(model, batch, sae, f, a)

    def sub_resid(r, name):
        r = r.clone()
        r[ar, batch.s2] -= d_resid
        return r
    def frozen_pattern(p, name):
        return cache["blocks.1.attn.hook_pattern"]
    _, patched = model.run_with_hooks(batch.tokens, [("blocks.1.hook_resid_pre", sub_resid),
                                                     ("blocks.1.attn.hook_pattern", frozen_pattern)],
                                      cache=["blocks.1.attn.hook_z"])
    z_new = patched["blocks.1.attn.hook_z"][ar, batch.end, head[1]]

    def put_head(z, name):
        z = z.clone()
        z[ar, batch.end, head[1]] = z_new
        return z
    delta = ld_with(model, batch, [("blocks.1.attn.hook_z", put_head)]) - ld_with(model, batch, [])
    fired = a > 0
    for order in ("ABBA", "BABA"):
        m = batch.mask(order)
        want = float((delta * fired)[m].mean())  # silent prompts are not run and count as 0
        assert table.get((f, order), 0.0) == pytest.approx(want, abs=2e-5)
    # the head writes nothing: nothing can flow through it
    with torch.no_grad():
        W_O = model.blocks[1].W_O
        saved = W_O[head[1] * c.d_head:(head[1] + 1) * c.d_head].clone()
        W_O[head[1] * c.d_head:(head[1] + 1) * c.d_head] = 0
    try:
        r0 = path_patching(model, batch, sae, [head])
        assert all(abs(e["delta"]) < 1e-6 for e in r0["table"])
        assert any(abs(e["delta"]) > 1e-4 for e in feature_ablation(model, batch, sae)["table"])
    finally:
        with torch.no_grad():
            W_O[head[1] * c.d_head:(head[1] + 1) * c.d_head] = saved
    with pytest.raises(ValueError, match="not after the SAE's layer"):
        path_patching(model, batch, random_sae(model, 1), [head])


def _feature_residual(model, batch, sae, f, a):
    """[n, d_model]: what feature f adds to the residual stream at S2 (Gemma: through its post-attention norm)."""
    if not model.cfg.post_norms:
        return (a[:, None] * sae.W_dec[f]) @ model.blocks[0].W_O
    ar = torch.arange(len(batch))
    _, cache = model.run_with_cache(batch.tokens, ["blocks.0.hook_attn_out"], stop_early=False)

    def remove(z, name):  # the feature taken out of z at S2; the model's own post-attention norm follows
        out = z.clone()
        out[ar, batch.s2] -= (a[:, None] * sae.W_dec[f]).view(len(batch), *z.shape[2:]).to(z.dtype)
        return out
    _, c2 = model.run_with_hooks(batch.tokens, [("blocks.0.attn.hook_z", remove)], cache=["blocks.0.hook_attn_out"])
    return cache["blocks.0.hook_attn_out"][ar, batch.s2] - c2["blocks.0.hook_attn_out"][ar, batch.s2]


# ---- heads and noising ---------------------------------------------------------------------------

def test_head_roles_statistics_match_direct_computations(setup):
    from attnsae.experiments.induction import head_dla

    model, _, batch, abc = setup
    c = model.cfg
    r = ioi.head_roles(model, batch, abc, min_attn=0.0)  # every head measured
    effect = np.array(r["effect"])
    assert effect.shape == (c.n_layers, c.n_heads) and np.isfinite(effect).all()
    names = [act_name(k, l) for l in range(c.n_layers) for k in ("pattern", "z")] + ["ln_final.hook_scale"]
    names += [act_name("scale", l, "ln1_post") for l in range(c.n_layers)] if c.post_norms else []
    _, cache = model.run_with_cache(batch.tokens, names, stop_early=False)
    ar = torch.arange(len(batch))
    for l in range(c.n_layers):
        pat = cache[act_name("pattern", l)]
        np.testing.assert_allclose(r["attn_s2"][l], pat[ar, :, batch.end, batch.s2].mean(0), atol=1e-4)
        np.testing.assert_allclose(r["attn_io"][l], pat[ar, :, batch.end, batch.io].mean(0), atol=1e-4)
    # DLA as induction.head_dla computes it, on prompts of one template (one END position)
    one = batch.template == 0
    end = int(batch.end[one][0])
    sub = {k: v[one] for k, v in cache.items()}
    dla = head_dla(model, sub, 1, end, batch.io_id[one]) - head_dla(model, sub, 1, end, batch.s_id[one])
    mine = ioi.head_dla(model, 1, cache["blocks.1.attn.hook_z"][one, end], batch.io_id[one], batch.s_id[one],
                        cache["ln_final.hook_scale"][one, end],
                        cache["blocks.1.ln1_post.hook_scale"][one, end] if c.post_norms else None)
    torch.testing.assert_close(mine, dla.float(), atol=1e-4, rtol=1e-4)
    # the ablation effect of every head of layer 1 by plain forwards: z at END <- ABC template mean at END
    means = ioi.template_means_at_end(model, abc, [1])[1]
    clean = ld_with(model, batch, []).mean()
    for h in range(c.n_heads):
        def mean_at_end(z, name, h=h):
            z = z.clone()
            z[ar, batch.end, h] = means[batch.template, h].to(z.dtype)
            return z
        want = ld_with(model, batch, [("blocks.1.attn.hook_z", mean_at_end)]).mean() - clean
        assert effect[1, h] == pytest.approx(float(want), abs=2e-5)
    assert r["clean_logit_diff"] == pytest.approx(float(clean), abs=1e-5)
    assert np.abs(effect).max() > 1e-3


def test_classify_heads_follows_the_stated_rule():
    effect = np.array([[-1.0, -0.5, np.nan, 0.3], [-0.8, -0.2, -0.1, -0.6]])
    attn_s2 = np.array([[0.6, 0.5, 0.9, 0.7], [0.1, 0.6, 0.05, 0.4]])
    attn_io = np.array([[0.1, 0.6, 0.0, 0.1], [0.7, 0.1, 0.5, 0.1]])
    dla = np.array([[0.1, 0.2, 0.0, 0.0], [2.0, 0.3, 0.4, 0.1]])
    r = ioi.classify_heads(effect, attn_s2, attn_io, dla, min_attn=0.1)
    # 0.0: S2 > IO, effect -1, |dla| small -> S-inh; 1.3 next; 1.1: |dla| 0.3 > 0.2/2 -> not; 0.2 unmeasured
    assert r["s_inhibition"] == [(0, 0), (1, 3)]
    assert r["name_movers"] == [(1, 0), (1, 2), (0, 1)]  # attend IO more than S2, DLA > 0; by DLA
    assert ioi.classify_heads(effect, attn_s2, attn_io, dla, after_layer=0)["s_inhibition"] == [(1, 3)]


def test_noising_with_the_clean_prompts_recovers_everything(setup):
    model, vocab, batch, _ = setup
    cor = ioi.corruptions(vocab, batch.prompts, seed=4, words=(" alongside",))
    r = ioi.noise_s2(model, batch, {"self": batch, **cor}, [0, 1])
    assert r["corruptions"]["self"]["recovered"] == pytest.approx(1.0, abs=1e-4)
    assert r["corruptions"]["self"]["noised"]["mean"] == pytest.approx(r["clean"]["mean"], abs=1e-5)
    # the 3-perturbation noising by hand: clean run with z at S2 taken from the corrupted run at its own S2
    noisy = cor["3 perturbations"]
    _, cc = model.run_with_cache(noisy.tokens, ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"], stop_early=False)
    ar = torch.arange(len(batch))

    def patch(z, name):
        z = z.clone()
        z[ar, batch.s2] = cc[name][ar, noisy.s2]
        return z

    def zero(z, name):
        z = z.clone()
        z[ar, batch.s2] = 0
        return z
    names = ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    ld_n = ld_with(model, batch, [(n, patch) for n in names]).mean()
    ld_z = ld_with(model, batch, [(n, zero) for n in names]).mean()
    ld_c = ld_with(model, batch, []).mean()
    got = r["corruptions"]["3 perturbations"]
    assert got["noised"]["mean"] == pytest.approx(float(ld_n), abs=1e-5)
    assert r["zero"]["mean"] == pytest.approx(float(ld_z), abs=1e-5)
    assert got["recovered"] == pytest.approx(float((ld_n - ld_z) / (ld_c - ld_z)), rel=1e-3)
    with pytest.raises(ValueError, match="out of range"):
        ioi.noise_s2(model, batch, {}, [model.cfg.n_layers])


def test_parse_heads_checks_the_model(setup):
    model = setup[0]
    assert parse_heads(["1.0", "0.2"], model) == [(1, 0), (0, 2)]
    with pytest.raises(ValueError, match="LAYER.HEAD"):
        parse_heads(["1"], model)
    with pytest.raises(ValueError, match="layers x"):
        parse_heads(["9.0"], model)


# ---- command line --------------------------------------------------------------------------------

def test_cli_runs_every_part_and_refuses_an_sae_of_another_model(tmp_path, monkeypatch, capsys, tokenizer):
    import json

    from attnsae.cli import main
    from attnsae.sae import save_sae

    folder = tmp_path / "gpt2"
    hf_tiny("gpt2", vocab=VOCAB).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    monkeypatch.setenv("ATTNSAE_HOME", str(tmp_path / "home"))  # keep the converted-model cache out of the user's
    c = from_hf(hf_tiny("gpt2", vocab=VOCAB)).cfg
    sae = SAE(SAEConfig(d_in=c.d_attn, d_sae=32, hook_name="blocks.0.attn.hook_z", model_name=str(folder)))
    save_sae(sae, tmp_path / "sae")
    out = tmp_path / "out"
    main(["ioi", "--model", str(folder), "--sae", str(tmp_path / "sae"), "--out", str(out), "--n", "4", "--n-abc", "8",
          "--s-inhibition", "1.0", "--min-attn", "0"])
    printed = capsys.readouterr().out
    assert "clean logit diff" in printed and "noising layers" in printed and "L0 path patching via 1.0" in printed
    r = json.loads((out / "ioi.json").read_text())
    assert set(r) >= {"clean_logit_diff", "heads", "splice", "features", "path", "noise"}
    assert r["path"]["0"]["heads"] == ["1.0"] and r["splice"]["layers"][0]["layer"] == 0
    for png in ("heads", "splice_layers", "features_L0", "path_L0", "noising"):
        assert (out / f"{png}.png").stat().st_size > 1000
    other = SAE(SAEConfig(d_in=c.d_attn, d_sae=32, hook_name="blocks.0.attn.hook_z", model_name="gpt2-small"))
    save_sae(other, tmp_path / "other")
    for args, message in ((["--sae", str(tmp_path / "other")], "trained on 'gpt2-small'"),
                          (["--sae", str(tmp_path / "sae"), "--noise-layers", "7", "--parts", "noise"], "out of range"),
                          (["--s-inhibition", "1"], "LAYER.HEAD")):
        with pytest.raises(SystemExit) as e:
            main(["ioi", "--model", str(folder), "--out", str(out), "--n", "2", *args])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_default_feature_layers_are_the_induction_and_duplicate_token_layers_with_an_sae():
    from attnsae.experiments.ioi import default_feature_layers

    hs = {"induction": np.zeros((6, 2)), "duplicate": np.zeros((6, 2))}
    hs["induction"][4, 1], hs["induction"][5, 0], hs["duplicate"][2, 0], hs["duplicate"][3, 1] = 0.9, 0.8, 0.7, 0.6
    assert default_feature_layers({1: None, 2: None, 4: None}, hs) == [2, 4]
    assert default_feature_layers({0: None, 1: None}, hs) == [0, 1]  # none of those layers has an SAE: all
    assert default_feature_layers({}, hs) == []
