"""Feature case studies (proxies, specificity, sensitivity) on known answers."""

import json

import numpy as np
import pytest
import torch

from attnsae.experiments.case_study import case_study, parse_proxy, specificity
from attnsae.features import ActivationSource
from attnsae.sae import SAE, SAEConfig

VOCAB = ["<bos>", " board", " the", "(", ")", " Which", "?", " dog", " cat", " a", ",", "\n", " is", " x", "((", " pet"]


class FakeTokenizer:
    """Whole-string lookup in VOCAB; anything else encodes to one id per character (so: not one token)."""

    def encode(self, text, add_special_tokens=False):
        return [VOCAB.index(text)] if text in VOCAB else [13] * len(text)

    def decode(self, ids):
        return "".join(VOCAB[i] for i in ids)


def proxy(spec):
    return parse_proxy(spec, FakeTokenizer(), vocab=len(VOCAB))


def test_induction_proxy():
    w = np.array([[0, 2, 1, 9, 2, 13, 2, 1, 1, 1]])  # " the board" at 1-2, then " the" at 4 and 6; "board board" at 7-8
    m = proxy("induction: board")(w)[0]
    assert m.tolist() == [False, False, False, False, True, False, True, False, True, True]
    # p=4, 6: an earlier " the" (1) was followed by " board"; p=8, 9: the " board" at 7 was followed by " board"
    # (q=7 < 8); p=7: no earlier " board" at all
    assert proxy("induction:#1")(w).tolist() == proxy("induction: board")(w).tolist()


def test_induction_proxy_matches_brute_force():
    w = np.random.default_rng(0).integers(0, 4, size=(20, 15))
    m = proxy("induction:#2")(w)
    want = [[any(r[q] == r[p] and r[q + 1] == 2 for q in range(p)) for p in range(len(r))] for r in w]
    assert m.tolist() == want


def test_token_context_after_and_inside_proxies():
    w = np.array([[0, 2, 1, 2, 1]])
    assert proxy("token: board")(w)[0].tolist() == [False, False, True, False, True]
    w = np.array([[0, 2, 7, 2, 8], [0, 8, 2, 2, 2], [0, 2, 2, 2, 2]])
    assert proxy("context: dog, cat")(w).tolist() == [[False, False, True, True, True], [False, True, True, True, True],
                                                     [False] * 5]
    w = np.array([[0, 5, 2, 12, 6, 2, 5, 2, 10, 2], [0, 2, 5, 11, 2, 2, 2, 2, 2, 5]])
    assert proxy("after: Which:2")(w).tolist() == [
        [False, False, True, True, False, False, False, True, False, False],  # 2 after; then ',' stops the second
        [False] * 10,  # a newline right after; and nothing after the last position
    ]
    assert proxy("after: Which:10")(w)[0].tolist() == [False, False, True, True, False, False, False, True, False, False]
    w = np.array([[0, 2, 3, 2, 2, 4, 2, 4, 3, 14, 4, 2]])  # '((' opens twice, ')' closes once
    assert proxy("inside:(:)")(w)[0].tolist() == [False, False, True, True, True, False, False, False, True, True,
                                                  True, True]


@pytest.mark.parametrize("spec,message", [
    ("nonsense", "does not parse"), ("board", "does not parse"), ("induction: two words", "is 10 tokens"),
    ("after: Which", "after:TOKEN:N"), ("after: Which:x", "after:TOKEN:N"), ("after: Which:0", "after:TOKEN:N"),
    ("context: dog,", "none empty"), ("inside:(", "inside:OPEN:CLOSE"), ("token:#99", "out of range"),
    ("token:", "empty proxy token"),
])
def test_bad_proxies_are_value_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        proxy(spec)
    with pytest.raises(ValueError, match="no tokenizer"):
        parse_proxy("token: board", None)


def test_specificity_and_expected_value_bins_sum_to_the_totals():
    rng = np.random.default_rng(0)
    acts = np.where(rng.random(1000) < 0.3, rng.exponential(2.0, 1000), 0.0)
    acts[5] = acts.max() + 1  # the max lands in the last bin
    mask = rng.random(1000) < 0.4
    h = specificity(acts, mask, bins=17)
    on = acts > 0
    assert len(h["count_true"]) == 17 and h["edges"][0] == 0 and h["edges"][-1] == acts.max()
    assert sum(h["count_true"]) == (on & mask).sum() and sum(h["count_false"]) == (on & ~mask).sum()
    assert sum(h["ev_true"]) + sum(h["ev_false"]) == pytest.approx(acts.mean())
    assert sum(h["ev_true"]) == pytest.approx(acts[mask].sum() / 1000)
    assert h["count_false"][-1] + h["count_true"][-1] >= 1
    # each activation sits in the bin whose (lo, hi] holds it
    e = np.asarray(h["edges"])
    for k in range(17):
        assert h["count_true"][k] == ((acts > e[k]) & (acts <= e[k + 1]) & mask).sum()


def proxy_sae(model, layer=1):
    """Feature 0 reads direction u of head 0's z with bias -0.5 (fires iff that z is u); feature 1 is
    the same read at half strength with bias -0.6, so it never fires."""
    c = model.cfg
    sae = SAE(SAEConfig(d_in=c.n_heads * c.d_head, d_sae=2, hook_name=f"blocks.{layer}.attn.hook_z", model_name=c.name))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[0, 0] = 1.0
        sae.W_enc[0, 1] = 0.5
        sae.b_enc.copy_(torch.tensor([-0.5, -0.6]))
        sae.b_dec.zero_()
    return sae


def test_a_feature_equal_to_the_proxy_has_sensitivity_1_and_precision_1(tiny, monkeypatch):
    model, _ = tiny
    sae = proxy_sae(model)
    pr = parse_proxy("induction:#5")
    windows = np.random.default_rng(0).integers(3, 9, size=(12, 20))  # small vocabulary: many inductions
    windows[:, 0] = model.cfg.bos_token_id or 0

    def run(tokens, names, stop_early=True):
        m = torch.from_numpy(pr(tokens.cpu().numpy())).float()

        def fn(z, name):
            z = z.clone()
            z[:, :, 0] = 0
            z[:, :, 0, 0] = m  # head 0's z is e_0 exactly where the proxy holds
            return z
        return model.run_with_hooks(tokens, [(sae.cfg.hook_name, fn)], cache=names)

    monkeypatch.setattr(model, "run_with_cache", run)
    r = case_study(sae, 0, pr, ActivationSource(model, windows), bins=5, progress=False, batch_size=5)
    n_proxy = int(pr(windows)[:, 1:].sum())
    assert n_proxy > 10 and r.n_proxy == n_proxy and r.n_fire == n_proxy
    assert r.sensitivity == 1.0 and r.precision == 1.0 and r.precision_by_mass == 1.0
    assert r.n_false_negatives == 0 and r.false_negatives == [] and r.top_false_positives == []
    assert r.max_act == pytest.approx(0.5) and sum(r.histogram["count_true"]) == n_proxy
    # the silent feature: every proxy token is a false negative, each listed at a proxy position
    r = case_study(sae, 1, pr, ActivationSource(model, windows), n_show=1000, progress=False)
    assert r.sensitivity == 0.0 and r.n_false_negatives == n_proxy == len(r.false_negatives)
    assert all(pr(windows)[x["window"], x["pos"]] for x in r.false_negatives)
    assert "‹" in r.false_negatives[0]["text"]
    with pytest.raises(ValueError, match="out of range"):
        case_study(sae, 2, pr, ActivationSource(model, windows))


def test_false_negatives_and_positives_from_given_activations():
    windows = np.array([[0, 1, 2, 3, 4], [0, 4, 3, 2, 1]])
    sae = SAE(SAEConfig(d_in=4, d_sae=3, hook_name="blocks.0.attn.hook_z"))
    pr = parse_proxy("token:#2")
    acts = np.zeros((2, 5))
    acts[0, 2] = 1.0  # true positive
    acts[1, 1] = 3.0  # false positive
    acts[0, 0] = 9.0  # BOS: not read by the SAE, ignored
    r = case_study(sae, 1, pr, ActivationSource(None, windows), acts=acts, progress=False)
    assert (r.n_tokens, r.n_fire, r.n_proxy, r.n_fire_and_proxy) == (8, 2, 2, 1)
    assert r.sensitivity == 0.5 and r.precision == 0.5 and r.precision_by_mass == 0.25
    assert [(x["n"], x["precision"]) for x in r.precision_above] == [(2, 0.5), (2, 0.5), (1, 0.0)]  # > 0.3, 0.75, 1.5
    assert [(x["window"], x["pos"]) for x in r.false_negatives] == [(1, 3)]
    assert [(x["window"], x["pos"], x["act"]) for x in r.top_false_positives] == [(1, 1, 3.0)]
    sae.cfg.hook_name = "blocks.0.attn.hook_q"
    with pytest.raises(ValueError, match="attn.hook_z"):
        case_study(sae, 1, pr, ActivationSource(None, windows), acts=acts)


# ---- the command line, in-process, on a tiny random GPT-2 with the real GPT-2 tokenizer ----

CORPUS = ("The board met on Monday. The school board voted, and the board of trade agreed. (A note: the vote "
          "was close.) Which way will the board go? My dog and my cat are pets; the dog sleeps.\n")


def make_cli_setup(tmp):
    """(tmp, the model) with, in tmp: SAEs on blocks.1.attn.hook_z (sae) and hook_q (sae_q), corpus.txt."""
    from attnsae.models import from_hf, gpt2_tokenizer
    from attnsae.sae import save_sae

    from .conftest import hf_tiny
    from .test_attribution import random_sae

    model = from_hf(hf_tiny("gpt2", vocab=50257), weights="random")
    model.tokenizer = gpt2_tokenizer()
    model.cfg.bos_token_id = 50256
    model.cfg.name = "tiny-gpt2-cli"
    sae = random_sae(model, d_sae=16, context_size=32)
    save_sae(sae, tmp / "sae", feature_density=torch.full((16,), 0.01))
    q = random_sae(model, d_sae=16, context_size=32)
    q.cfg.hook_name = "blocks.1.attn.hook_q"
    save_sae(q, tmp / "sae_q")
    (tmp / "corpus.txt").write_text(CORPUS * 40)
    return tmp, model


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    return make_cli_setup(tmp_path_factory.mktemp("cli"))


def run_cli(monkeypatch, capsys, model, *argv):
    """(exit code, stdout, stderr) of `attnsae argv` with load_model answering the tiny model."""
    from attnsae import cli

    monkeypatch.setattr("attnsae.models.load_model", lambda *a, **k: model)
    try:
        cli.main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_case_study(cli_setup, monkeypatch, capsys):
    tmp, model = cli_setup
    common = ["--sae", str(tmp / "sae"), "--corpus", str(tmp / "corpus.txt"), "--windows", "30"]
    code, out, err = run_cli(monkeypatch, capsys, model, "case-study", *common, "--feature", "3", "--proxy", "induction: board",
                             "--out", str(tmp / "cs"))
    assert code == 0, err
    r = json.loads((tmp / "cs" / "case_study_L1_F3.json").read_text())
    assert (tmp / "cs" / "case_study_L1_F3.png").exists() and r["n_proxy"] > 0 and "sensitivity P(fires | proxy)" in out
    assert r["n_tokens"] == 30 * 31 and sum(r["histogram"]["count_true"]) == r["n_fire_and_proxy"]
    assert list(r) == ["feature", "layer", "hook", "proxy", "proxy_description", "n_windows", "n_tokens", "n_fire", "n_proxy",
                       "n_fire_and_proxy", "density", "max_act", "mean_act", "precision", "precision_by_mass",
                       "precision_above", "sensitivity", "n_false_negatives", "false_negatives", "top_false_positives",
                       "histogram", "sae", "store", "run"]
    assert r["run"] == {"model_dtype": "float32"}  # the precision the numbers came from (fp32 by default)
    assert r["sae"] == str(tmp / "sae") and r["store"] is None
    for argv, message in [
        (["--feature", "3", "--proxy", "nonsense"], "does not parse"),
        (["--feature", "3", "--proxy", "token: board meeting"], "is 2 tokens"),
        (["--feature", "16", "--proxy", "token: board"], "--feature 16 out of range"),
    ]:
        code, _, err = run_cli(monkeypatch, capsys, model, "case-study", *common, *argv, "--out", str(tmp / "bad"))
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(monkeypatch, capsys, model, "case-study", "--sae", str(tmp / "sae_q"), "--feature", "0", "--proxy",
                           "token: board", "--out", str(tmp / "bad"))
    assert code == 2 and "attn.hook_z" in err


def test_inputs_pick_a_stores_windows_and_refuse_saes_of_two_models(cli_setup, monkeypatch, tmp_path):
    from attnsae.data import harvest
    from attnsae.features import InputSpec, load_inputs
    from attnsae.sae import load_sae, save_sae

    tmp, model = cli_setup
    monkeypatch.setattr("attnsae.models.load_model", lambda *a, **k: model)
    windows = np.random.default_rng(0).integers(3, 1000, size=(12, 32))
    windows[:, 0] = model.cfg.bos_token_id
    harvest(model, windows, tmp_path / "store", ["blocks.1.attn.hook_z"], dtype="float32", progress=False)
    spec = dict(saes=[str(tmp / "sae")], store=str(tmp_path / "store"), windows=5, seed=3)
    picked = load_inputs(InputSpec(**spec))
    assert picked.source.index.tolist() == sorted(np.random.default_rng(3).permutation(12)[:5].tolist())
    assert np.array_equal(picked.windows, windows[picked.source.index])
    assert load_inputs(InputSpec(**spec, store_windows="first")).source.index.tolist() == [0, 1, 2, 3, 4]
    assert len(load_inputs(InputSpec(**spec, store_windows="all")).windows) == 12
    with pytest.raises(ValueError, match="store_windows must be one of"):
        load_inputs(InputSpec(**spec, store_windows="some"))
    other = load_sae(tmp / "sae")
    other.cfg.model_name = "another-model"
    save_sae(other, tmp_path / "other")
    with pytest.raises(ValueError, match="the SAEs come from different models"):
        load_inputs(InputSpec([str(tmp / "sae"), str(tmp_path / "other")]))
