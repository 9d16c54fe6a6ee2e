"""Query/key SAEs (experiments/qk): pairing, exact scores, pattern fidelity, planted positional and token features,
the QK matrix, the intervention, and the qk-study command."""

import json

import numpy as np
import pytest
import torch

from attnsae.experiments.qk.heads import check_pair, head_score, qk_head
from attnsae.experiments.qk.matrix import offset_scores, qk_matrix
from attnsae.experiments.qk.pattern import pattern_fidelity, prompt_pattern, scores
from attnsae.experiments.qk.positional import TopActivations, load_tops, profiles, save_tops, top_activations
from attnsae.models import from_hf
from attnsae.models.hooks import act_name, parse
from attnsae.sae import SAE, SAEConfig

from .conftest import hf_tiny
from .test_evals import identity_sae


def tiny(family):
    model = from_hf(hf_tiny(family), weights="random")
    model.cfg.name = f"tiny-{family}"
    with torch.no_grad():  # sharper attention, so patterns move when q or k do
        for b in model.blocks:
            b.W_Q.mul_(6)
            b.W_K.mul_(6)
    return model


def random_sae(model, spec, d_sae=32, seed=0, k=None):
    s = parse(spec)
    d = model.cfg.d_head
    sae = SAE(SAEConfig(d_in=d, d_sae=d_sae, architecture="topk" if k else "standard", k=k, model_name=model.cfg.name,
                        hook_name=s.name, hook_head_index=s.head, processing=model.processing.to_dict()))
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    return sae


def test_a_mismatched_pair_is_refused_naming_the_fix():
    model = tiny("llama")  # 6 query heads, 2 kv heads: query head 4 reads kv head 1
    q, k = random_sae(model, "blocks.1.attn.hook_q[4]"), random_sae(model, "blocks.1.attn.hook_k[1]")
    qk = check_pair(model, q, k)
    assert (qk.layer, qk.head, qk.kv_head, qk.served) == (1, 4, 1, (3, 4, 5)) and not qk.rotated
    cases = [
        ((k, k), "the query SAE reads blocks.1.attn.hook_k[1]: it reads a key hook: pass it as the key SAE"),
        ((q, q), "the key SAE reads blocks.1.attn.hook_q[4]: it reads a query hook"),
        ((q, random_sae(model, "blocks.1.attn.hook_k[0]")), r"query head 4 reads key/value head 1, but the key SAE"),
        ((q, random_sae(model, "blocks.0.attn.hook_k[1]")), "pair SAEs of one layer"),
        ((q, random_sae(model, "blocks.1.attn.hook_rot_k[1]")), "train both on the same side of the rotary embedding"),
        ((random_sae(model, "blocks.1.attn.hook_z[4]"), k), "a query SAE reads one head of hook_q or hook_rot_q"),
    ]
    for (a, b), msg in cases:
        with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]") if "\\" not in msg else msg):
            check_pair(model, a, b)
    with pytest.raises(ValueError, match="drop or add --post-rotary"):
        check_pair(model, q, k, rotated=True)
    with pytest.raises(ValueError, match="no rotary embedding"):
        qk_head(tiny("gpt2").cfg, "1.0", rotated=True)
    with pytest.raises(ValueError, match="layer 1 has 6 heads"):
        qk_head(model.cfg, "1.6")


@pytest.mark.parametrize("family,rotated", [("llama", False), ("llama", True), ("gemma3", False), ("gpt2", False),
                                            ("gemma2", False), ("gpt_neox", False), ("gpt_neox", True), ("qwen2", False)])
def test_scores_from_sae_space_equal_the_models(family, rotated):
    """head_score of the cached q and k (through Gemma's q/k norm and the rotary embedding for pre-rotary vectors)
    equals the model's attention scores; prompt_pattern's reconstructed score equals the spliced model's."""
    model = tiny(family)
    layer = 1
    qk = qk_head(model.cfg, f"{layer}.{model.cfg.n_heads - 1}", rotated)
    tokens = torch.randint(3, 101, (1, 12), generator=torch.Generator().manual_seed(0))
    q_name, k_name = parse(qk.q_spec).name, parse(qk.k_spec).name
    _, cache = model.run_with_cache(tokens, [q_name, k_name, act_name("attn_scores", layer)])
    q, k = cache[q_name][0, :, qk.head], cache[k_name][0, :, qk.kv_head]
    pos = torch.arange(12)
    mine = head_score(model, qk, q[:, None], k[None], pos[:, None], pos[None])
    real = cache[act_name("attn_scores", layer)][0, qk.head]
    mask = torch.isfinite(real)  # causal (and Gemma's sliding window on this layer)
    assert mask.sum() >= 40
    torch.testing.assert_close(mine[mask], real[mask], rtol=1e-4, atol=1e-4)
    q_sae, k_sae = random_sae(model, qk.q_spec, seed=1), random_sae(model, qk.k_spec, seed=2)
    r = prompt_pattern(model, qk, q_sae, k_sae, tokens[0], [str(t) for t in tokens[0].tolist()], query_pos=9, key_pos=4)
    spliced = scores(model, tokens, layer, [(q_sae.cfg.hook_name, _splice(q_sae)), (k_sae.cfg.hook_name, _splice(k_sae))])
    assert r.score == pytest.approx(float(spliced[0, qk.head, 9, 4]), rel=1e-4, abs=1e-4)
    # removing a feature changes the score by exactly that feature's term (scores are linear in q for fixed k, without
    # Gemma 3's q-norm or Gemma 2's soft-cap)
    if not (model.cfg.qk_norm or model.cfg.attn_softcap):
        total = sum(f["delta"] for f in r.query_features)
        with torch.no_grad():
            k_hat = k_sae.decode(k_sae.encode(k[4].float()))
            only_bias = float(head_score(model, qk, q_sae.b_dec, k_hat, 9, 4))
        assert r.score + total == pytest.approx(only_bias, rel=1e-3, abs=1e-3)


def test_training_a_pair_leaves_the_model_alone():
    """The pattern loss backpropagates through the model's scoring space (Gemma 3's q/k norms): only the SAEs learn,
    and the model's parameters keep requires_grad and get no .grad."""
    from attnsae.experiments.qk.objective import qk_data, train_pair

    model = tiny("gemma3")
    qk = qk_head(model.cfg, "1.0")
    windows = np.random.default_rng(0).integers(3, 101, (4, 12))
    q_sae, k_sae, hist = train_pair(model, qk, qk_data(model, qk, windows), k=2, expansion=2, pattern_coeff=1.0,
                                    steps=3, batch_windows=2, progress=False)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert len(hist) == 2 and all(np.isfinite(h["kl"]) for h in hist)


def _splice(sae):
    from attnsae.evals.splice import sae_hook

    return sae_hook(sae)


def test_pattern_fidelity_is_zero_for_perfect_saes_and_not_for_others(windows):
    model = tiny("llama")
    qk = qk_head(model.cfg, "1.4")
    perfect = [identity_sae(model, 1, "q", 4), identity_sae(model, 1, "k", 1)]
    r = pattern_fidelity(model, qk, *perfect, windows[:6], n_repeat=10, repeat_batch=4)
    assert all(v == pytest.approx(0, abs=1e-6) for v in r.kl.values()) and set(r.kl) == {"q", "k", "both"}
    assert set(r.kl_served["k"]) == {3, 4, 5}  # the key splice moves every head of the group
    for v in ("q", "k", "both"):
        assert r.head_scores[v] == pytest.approx(r.head_scores["real"], abs=1e-6)
    half = identity_sae(model, 1, "k", 1)
    with torch.no_grad():
        half.W_dec.mul_(0.3)
    r = pattern_fidelity(model, qk, None, half, windows[:6], n_repeat=10, repeat_batch=4)
    assert set(r.kl) == {"k"} and r.kl["k"] > 1e-3 and all(v > 0 for v in r.kl_served["k"].values())


def test_profiles_find_a_planted_positional_and_planted_token_features():
    """Feature 0 fires only at position 7 (positional); 1 on token 42 wherever it is ("I am"); 2 right after token 42
    ("I follow"); 3 anywhere on anything (other)."""
    rng = np.random.default_rng(0)
    windows = rng.integers(50, 90, size=(300, 32))
    windows[:, 0] = 0
    where42 = [(w, p) for w in range(300) for p in (rng.integers(2, 30),)]
    for w, p in where42:
        windows[w, p] = 42
    rows = {0: [(w, 7) for w in range(300)], 1: where42, 2: [(w, p + 1) for w, p in where42],
            3: [(w, int(rng.integers(1, 32))) for w in range(300)]}
    n = 300
    act, win, pos = torch.zeros(4, n), torch.zeros(4, n, dtype=torch.long), torch.zeros(4, n, dtype=torch.long)
    for f, r in rows.items():
        act[f] = torch.linspace(2, 1, n)
        win[f] = torch.tensor([w for w, _ in r])
        pos[f] = torch.tensor([p for _, p in r])
    top = TopActivations(act, win, pos, torch.full((4,), n), n_tokens=300 * 31, ctx=32)
    profs = {p.feature: p for p in profiles(top, windows, str)}
    assert profs[0].kind == "positional" and profs[0].mode == 7 and profs[0].mode_share == 1
    assert profs[1].kind == "I am" and profs[1].am == "42" and profs[1].am_share == 1
    assert profs[2].kind == "I follow" and profs[2].follow == "42"
    assert profs[3].kind == "other" and profs[3].near_share < 0.5


def test_top_activations_are_each_features_largest_and_round_trip(windows, tmp_path):
    model = tiny("llama")
    saes = [random_sae(model, "blocks.1.attn.hook_q[4]", k=3), random_sae(model, "blocks.0.attn.hook_k[1]", seed=3, k=3)]
    tops = top_activations(model, saes, windows, n_top=10, batch_size=5, progress=False)
    for sae, top in zip(saes, tops):
        s = parse(str(sae.cfg.hook_spec))
        x = model.run_with_cache(torch.from_numpy(windows.astype(np.int64)), [s.name])[1][s.name][:, 1:, s.head]
        f = sae.encode(x.float())  # [w, ctx - 1, F]
        want = f.flatten(0, 1).T.topk(10, dim=1).values
        torch.testing.assert_close(top.act, want)
        j = 5  # each stored (window, position) holds the value it claims
        torch.testing.assert_close(f[top.window[j], top.pos[j] - 1, j], top.act[j])
        assert int(top.count.sum()) == int((f > 0).sum()) and top.n_tokens == windows.shape[0] * (windows.shape[1] - 1)
    save_tops(tmp_path / "t.safetensors", {"a": tops[0]})
    back = load_tops(tmp_path / "t.safetensors")["a"]
    assert torch.equal(back.act, tops[0].act) and back.ctx == tops[0].ctx and back.n_tokens == tops[0].n_tokens


def _profile(f, mode, kind="positional", am="a", follow="b"):
    return {"feature": f, "n": 100, "density": 0.01, "mode": mode, "mode_share": 1.0, "near_share": 1.0, "am": am,
            "am_share": 1.0 if kind == "I am" else 0.1, "follow": follow,
            "follow_share": 1.0 if kind == "I follow" else 0.1, "kind": kind}


def test_qk_matrix_finds_planted_previous_token_and_token_pairs():
    """Query features at positions 10..13 align with key features at 9..12 (a previous-token head); query feature 4 is
    "I am X" and aligns with key feature 4, "I follow X", not with key feature 5, "I follow Y"."""
    model = tiny("gpt2")  # no rotary embedding: a pair has one score
    qk = qk_head(model.cfg, "1.0")
    d = model.cfg.d_head
    q_sae, k_sae = random_sae(model, "blocks.1.attn.hook_q[0]", d_sae=8), random_sae(model, "blocks.1.attn.hook_k[0]", d_sae=8)
    eye = torch.eye(d)
    with torch.no_grad():
        q_sae.W_dec[:5] = eye[[0, 1, 2, 3, 5]]
        k_sae.W_dec[:6] = eye[[0, 1, 2, 3, 5, 6]]
    qp = [_profile(i, 10 + i) for i in range(4)] + [_profile(4, 20, "I am", am="X")]
    kp = [_profile(i, 9 + i) for i in range(4)] + [_profile(4, 3, "I follow", follow="X"), _profile(5, 2, "I follow", follow="Y")]
    r = qk_matrix(model, qk, q_sae, k_sae, qp, kp, ctx=32)
    assert r.best_offset == {1: 1.0}
    assert r.partners[0]["partners"][0]["k"] == 4 and r.token_match == 1.0
    assert r.matrix[0][5] is None  # query feature 0 (mode 10) x key feature 3 (mode 12): the key comes later, masked
    assert r.curves == []  # no rotary embedding: nothing to plot against offset


def test_offset_scores_are_relative_under_the_rotary_embedding():
    model = tiny("llama")
    qk = qk_head(model.cfg, "1.4")
    q, k = torch.randn(3, model.cfg.d_head), torch.randn(2, model.cfg.d_head)
    for o, s in offset_scores(model, qk, q, k, [0, 1, 5]):
        want = head_score(model, qk, q[:, None], k[None], o + 7, 7)  # the same offset anywhere in the context
        torch.testing.assert_close(s, want, rtol=1e-4, atol=1e-5)


def test_intervention_at_scale_one_changes_nothing_and_finds_a_planted_follow_feature():
    from attnsae.experiments.qk.intervene import follow_feature, intervene, planted_sequences

    model = tiny("llama")
    qk = qk_head(model.cfg, "1.4")
    x = 77
    k_sae = identity_sae(model, 1, "k", 1)
    same = intervene(model, qk, k_sae, x, feature=3, scale=1.0, n=12, pos=5, batch=4)
    assert same.loss_x["clean"] == pytest.approx(same.loss_x["edited"], abs=1e-6)
    assert same.attn_x["clean"] == pytest.approx(same.attn_x["edited"], abs=1e-6)
    # plant a feature reading the direction that separates "after X" from "after anything else" at that position
    spec = k_sae.cfg.hook_name
    with torch.no_grad():
        seqs = planted_sequences(model, x, 12, 5, 32, 0)
        other = seqs.clone()
        other[:, 5] = torch.randint(3, 101, (32,), generator=torch.Generator().manual_seed(5))
        kx = model.run_with_cache(seqs, [spec])[1][spec][:, 6, 1].mean(0)
        ko = model.run_with_cache(other, [spec])[1][spec][:, 6, 1].mean(0)
        direction = (kx - ko) / (kx - ko).norm()
        k_sae.W_enc[:, 0] = 1000 * direction
        k_sae.b_enc[0] = -1000 * float(direction @ (kx + ko) / 2)
    feature, after_x, after_other = follow_feature(model, qk, k_sae, x, n=12, pos=5, batch=32)
    assert feature == 0 and after_x > after_other
    gone = intervene(model, qk, k_sae, x, feature=0, scale=0.0, n=12, pos=5, batch=4)
    assert gone.attn_x["clean"] != gone.attn_x["edited"] and set(gone.attn_x["clean"]) == {"3", "4", "5"}
    assert gone.loss_other["clean"] != gone.loss_other["edited"] or gone.loss_x["clean"] != gone.loss_x["edited"]


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    """A random-weight Llama (rotary, grouped-query) saved with the GPT-2 tokenizer, and a corpus."""
    import os

    from transformers import LlamaConfig, LlamaForCausalLM

    from attnsae.models import gpt2_tokenizer

    tmp = tmp_path_factory.mktemp("llama_run")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=96, num_attention_heads=6, num_key_value_heads=2,
                                 head_dim=16, intermediate_size=96, vocab_size=50257, rope_theta=1e4, bos_token_id=50256,
                                 eos_token_id=50256, pad_token_id=None)).save_pretrained(tmp / "llama")
    gpt2_tokenizer().save_pretrained(tmp / "llama")
    (tmp / "corpus.txt").write_text("The quick brown fox jumps over the lazy dog. Mr and Mrs Dursley were normal.\n" * 300)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return tmp, ["--model", str(tmp / "llama"), "--corpus", str(tmp / "corpus.txt")], env


def test_qk_study_writes_every_part_and_resumes(llama_run):
    from .test_cli import attnsae

    tmp, common, env = llama_run
    out = tmp / "qk"
    args = ["qk-study", *common, "--ctx", "32", "--head", "1.4", "--head", "0.0", "--steps", "20", "--batch-size", "64",
            "--expansion", "4", "--eval-windows", "2", "--top-windows", "16", "--n-top", "50", "--objective-steps", "5",
            "--device", "cpu", "--out", str(out)]
    r = attnsae(*args, env=env)
    assert r.returncode == 0, r.stderr
    study = json.loads((out / "study.json").read_text())
    h = study["heads"][0]
    assert h["head"] == "1.4" and h["kv_head"] == 1 and h["served"] == [3, 4, 5]
    assert h["q_spec"] == "blocks.1.attn.hook_q[4]" and h["k_spec"] == "blocks.1.attn.hook_k[1]"
    for side in ("q", "k"):
        f = h["fidelity"][side]
        assert f["ce_sae_with_error"] == pytest.approx(f["ce_clean"], abs=1e-4)
        assert sum(h[f"positional_{side}"]["shares"].values()) == pytest.approx(1)
        assert h["dashboards"][side] and (out / "L1H4" / side / "features" / f"F{h['dashboards'][side][0]}.html").exists()
    assert [row["pattern_coeff"] for row in h["objective"]["runs"]] == [0.0, 1.0]
    for name in ("prompt_pattern.png", "qk_matrix.png", "qk_offsets.png", "intervention.png"):
        assert (out / "L1H4" / name).exists(), name
    html = (out / "index.html").read_text()
    assert 'href="#hL1H4"' in html and "L1H4/prompt_pattern.png" in html and "serves 3, 4, 5" in html
    stamp = (out / "L1H4" / "qk_matrix.json").stat().st_mtime_ns
    r = attnsae(*args, env=env)  # resumes: every stage reused
    assert r.returncode == 0, r.stderr
    assert (out / "L1H4" / "qk_matrix.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("extra,message", [
    (["--head", "2.0"], "head 2.0: "),
    (["--head", "1.4", "--x-token", "two words"], "is 2 tokens for this tokenizer; give one token"),
])
def test_qk_study_bad_input_is_refused_before_any_work(llama_run, extra, message):
    from .test_cli import attnsae

    tmp, common, env = llama_run
    r = attnsae("qk-study", *common, "--ctx", "32", "--steps", "5", "--batch-size", "64", "--expansion", "2",
                "--eval-windows", "1", "--top-windows", "4", "--n-top", "10", "--pattern-coeff", "0", "--device", "cpu",
                *extra, "--out", str(tmp / "bad"), env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert message in r.stderr and not (tmp / "bad" / "sae").exists()


def test_qk_study_pages_render_in_headless_chromium(llama_run):
    """The study's index and a feature dashboard it links to, opened in Chromium: no errors, the parts are there."""
    from .test_html import ARGS, CHROMIUM, _playwright

    tmp, _, _ = llama_run
    site = tmp / "qk"
    if not (site / "index.html").exists():
        pytest.skip("made by test_qk_study_writes_every_part_and_resumes")
    errors = []
    with _playwright()() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((site / "index.html").as_uri())
        assert page.locator("table.list").first.locator("tbody tr").count() == 4  # 2 heads x (q, k)
        assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        page.locator("a[href*='/k/features/F']").first.click()
        assert "/k/features/F" in page.url
        assert page.locator(".ex").count() >= 1 and page.locator("svg.poshist rect").count() >= 8
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        browser.close()
    assert errors == []
