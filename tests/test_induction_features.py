"""Automatic induction-feature detection finds a feature planted to fire exactly on induction."""

import numpy as np
import pytest
import torch

from attnsae.attribution.logit_path import logit_effects
from attnsae.experiments.induction_features import (
    behaviour,
    bigram_instances,
    choose_windows,
    find_induction_features,
    layer_induction_heads,
    pass_rates,
    repeat_first_half,
    repeat_masks,
    select_candidates,
    select_controls,
)
from attnsae.features import ActivationSource
from attnsae.sae import SAE, SAEConfig
from tests.test_attribution import random_sae
from tests.test_experiments import plant_attention


def test_instances_and_pass_rate_on_hand_built_windows():
    t = 7
    windows = np.array([
        [0, 5, 7, 9, 5, 7, 5, 7, 8, 7, 3],  # "5 7" at 1 (first), 4, 6 (later); "8 7" at 8 (first)
        [0, 7, 7, 2, 9, 9, 2, 7, 3, 3, 3],  # 7 right after BOS is no instance; "7 7" at 1, "2 7" at 6: first
        [0, 1, 2, 3, 4, 5, 6, 8, 9, 1, 2],  # no 7
    ])
    w, p, first = bigram_instances(windows, t, [0, 1, 2], first_pos=1)
    assert list(zip(w, p, first)) == [(0, 1, True), (0, 4, False), (0, 6, False), (0, 8, True), (1, 1, True), (1, 6, True)]
    acts = np.zeros(windows.shape)
    acts[0, 4] = 2.0  # fires at one of the two later instances
    acts[0, 8] = 0.5  # and at one of the four first instances
    acts[0, 3] = 9.0  # elsewhere: ignored
    r = pass_rates(acts[w, p] > 0, first)
    assert (r["n_later"], r["n_later_fired"], r["n_first"], r["n_first_fired"]) == (2, 1, 4, 1)
    assert r["pass_rate"] == 0.5 and r["first_fire_rate"] == 0.25 and r["testable"] and not r["passes"]
    acts[0, 6] = 1.0
    r = pass_rates(acts[w, p] > 0, first)
    assert r["pass_rate"] == 1.0 and r["passes"] and r["passes_strict"]
    r = pass_rates(np.ones(len(w), bool), first)  # fires everywhere: passes the paper's rule, not the strict one
    assert r["passes"] and not r["passes_strict"]
    r = pass_rates(np.zeros(2, bool), np.array([True, True]))
    assert r["pass_rate"] is None and not r["testable"] and not r["passes"]
    # windows holding t after position 1, in the shared random order
    rank = np.array([2, 0, 1])
    assert choose_windows(windows, t, 5, rank).tolist() == [1, 0]
    assert choose_windows(windows, t, 1, rank).tolist() == [1]


def test_repeat_masks_match_brute_force():
    w = np.random.default_rng(3).integers(0, 5, size=(30, 12))
    dup, nxt = repeat_masks(w)
    for row, d, x in zip(w, dup, nxt):
        for p in range(len(row)):
            earlier = [q for q in range(1, p) if row[q] == row[p]]
            assert d[p] == (p >= 1 and bool(earlier))
            assert x[p] == (p + 1 < len(row) and any(row[q + 1] == row[p + 1] for q in earlier))


def test_selection_and_control_rules():
    a = torch.tensor([[0.9, 0.1, 0.0], [0.4, 0.4, 0.2], [0.05, 0.0, 0.95], [0.0, 0.02, 0.98], [0.6, 0.0, 0.4]])
    live = torch.tensor([True, True, True, True, False])
    assert select_candidates(a, [0], live) == [0]
    assert select_candidates(a, [0, 1], live) == [0]  # per head: 0.4 and 0.4 are each below 0.6
    assert select_candidates(a, [0, 1], live, pooled=True) == [0, 1]
    assert select_candidates(a, [0], None) == [0, 4]  # 0.6 itself counts (>=)
    assert select_controls(a, [0], live, 10) == [2, 3]
    assert select_controls(a, [0, 1], live, 10) == [2, 3]  # summed over the heads: 0.05 and 0.02
    assert select_controls(a, [2], live, 10) == [0]  # 4 has 0.4 but is dead anyway
    assert len(select_controls(a, [0], live, 1)) == 1


def planted_sae(model, layer=1):
    """Feature 0: written by head 0 only (attribution 1) and reading direction u of head 0's z.
    Feature 1: half head 0, half head 1. Features 2-4 are written by the last head only:
    2 fires everywhere, 3 never, 4 is the dead one (never fires)."""
    c = model.cfg
    H, dh = c.n_heads, c.d_head
    sae = SAE(SAEConfig(d_in=H * dh, d_sae=5, hook_name=f"blocks.{layer}.attn.hook_z", model_name=c.name))
    g = torch.Generator().manual_seed(3)
    dec = torch.zeros(5, H, dh)
    dec[0, 0] = torch.randn(dh, generator=g)
    dec[1, 0], dec[1, 1] = torch.randn(dh, generator=g), torch.randn(dh, generator=g)
    dec[1, 1] *= dec[1, 0].norm() / dec[1, 1].norm()
    dec[2:, H - 1] = torch.randn(3, dh, generator=g)
    u = torch.zeros(dh)
    u[0] = 1.0
    with torch.no_grad():
        sae.W_dec.copy_(dec.flatten(1) / dec.flatten(1).norm(dim=1, keepdim=True))
        sae.W_enc.zero_()
        sae.W_enc[:dh, 0] = u
        sae.b_enc.copy_(torch.tensor([-0.5, -1.0, 5.0, -1.0, -1.0]))
        sae.b_dec.zero_()
    return sae, u


def is_induction(row, p, t):
    """Brute force: an earlier q < p with row[q] = row[p] and row[q + 1] = t."""
    return any(row[q] == row[p] and row[q + 1] == t for q in range(p))


def plant_induction_z(model, layer, t, u):
    """Run the model with head 0's z at p set to u where t is next by induction at p, else 0."""
    hook = f"blocks.{layer}.attn.hook_z"

    def run(tokens, names, stop_early=True):
        rows = tokens.cpu().numpy()
        ind = torch.tensor([[float(is_induction(r, p, t)) for p in range(len(r))] for r in rows])

        def fn(z, name):
            z = z.clone()
            z[:, :, 0] = ind[..., None] * u
            return z
        return model.run_with_hooks(tokens, [(hook, fn)], cache=names)
    return run


def windows_with_bigrams(targets, bos, n_per=4, ctx=24, seed=0):
    """Random windows; for each target t, n_per windows with 'a t' at 3, 10 and 20 and 'b t' at 15."""
    rng = np.random.default_rng(seed)
    out = []
    for t in targets + [None] * 2:  # two windows with no planted bigram
        for _ in range(n_per if t is not None else 1):
            w = rng.integers(3, 101, size=ctx)
            w[0] = bos
            if t is not None:
                a, b = rng.choice([x for x in range(3, 101) if x != t], 2, replace=False)
                for p, x in ((3, a), (10, a), (15, b), (20, a)):
                    w[p], w[p + 1] = x, t
            out.append(w)
    return np.stack(out)


def test_planted_induction_feature_is_selected_passes_and_controls_do_not(tiny, monkeypatch):
    model, _ = tiny
    sae, u = planted_sae(model)
    _, eff = logit_effects(model, sae, range(5), k=1)
    targets = [int(e["top"][0][0]) for e in eff]
    windows = windows_with_bigrams(targets[:4], model.cfg.bos_token_id or 0)
    monkeypatch.setattr(model, "run_with_cache", plant_induction_z(model, 1, targets[0], u))
    live = torch.tensor([True, True, True, True, False])
    r = find_induction_features(model, sae, ActivationSource(model, windows), heads=[0], live=live, n_control=10, progress=False)
    assert [x["feature"] for x in r.candidate_features] == [0]
    assert [x["feature"] for x in r.control_features] == [2, 3]  # 1 is half head 0; 4 is dead
    f0 = r.candidate_features[0]
    assert f0["token_id"] == targets[0] and f0["attribution"] == {"1.0": 1.0}
    # at least 2 later ('a t' at 10 and 20) and 2 first ('a t' at 3, 'b t' at 15) instances per planted window
    assert f0["n_later"] >= 8 and f0["n_first"] >= 8
    assert f0["pass_rate"] == 1.0 and f0["first_fire_rate"] == 0.0 and f0["passes_strict"]
    always, never = r.control_features
    assert always["pass_rate"] == 1.0 and always["first_fire_rate"] == 1.0 and always["passes"] and not always["passes_strict"]
    assert never["pass_rate"] == 0.0 and not never["passes"]
    assert r.candidates["n_pass"] == 1 and r.controls["n_pass"] == 1 and r.controls["n_pass_strict"] == 0
    # token-agnostic: feature 0 fires only on repeated tokens; the always-on one at the base rate; 'never' has none
    assert f0["p_duplicate"] == 1.0 and always["p_duplicate"] == pytest.approx(r.repeat_base_rates["p_duplicate"])
    assert never["n_fire_sample"] == 0 and never["p_duplicate"] is None
    assert r.headline.startswith("1/1 candidates pass vs 1/2 controls")
    # pooled over heads 0 and 1, the half-and-half feature joins
    r = find_induction_features(model, sae, ActivationSource(model, windows), heads=[0, 1], live=live, pooled=True,
                                n_control=0, progress=False)
    assert [x["feature"] for x in r.candidate_features] == [0, 1]
    with pytest.raises(ValueError, match="out of range"):
        find_induction_features(model, sae, ActivationSource(model, windows), heads=[model.cfg.n_heads], progress=False)


def test_repeat_first_half_makes_every_bigram_of_the_half_recur():
    w = np.arange(2 * 8).reshape(2, 8)  # BOS + 7 content tokens: half 3, one token of padding
    assert repeat_first_half(w, 1).tolist() == [[0, 1, 2, 3, 1, 2, 3, 1], [8, 9, 10, 11, 9, 10, 11, 9]]
    w = np.arange(1, 9)[None]  # no BOS, even content
    assert repeat_first_half(w, 0).tolist() == [[1, 2, 3, 4, 1, 2, 3, 4]]
    # every bigram of the half has a first instance there and a later one in the copy
    row = np.random.default_rng(0).permutation(100)[:33][None]
    r = repeat_first_half(row, 1)
    for t in row[0, 2:17]:
        _, _, first = bigram_instances(r, int(t), [0], 1)
        assert first.tolist() == [True, False]


def test_repeat_half_makes_a_feature_testable_that_natural_windows_cannot_test(tiny, monkeypatch):
    """The planted feature's token occurs once per window: untestable as is, passing on repeated halves."""
    model, _ = tiny
    sae, u = planted_sae(model)
    _, eff = logit_effects(model, sae, [0], k=1)
    t = int(eff[0]["top"][0][0])
    rng = np.random.default_rng(4)
    windows = rng.choice([x for x in range(3, 101) if x != t], size=(6, 24))
    windows[:, 0] = model.cfg.bos_token_id or 0
    windows[:, 6] = t  # once, in the first half (content positions 1..11)
    monkeypatch.setattr(model, "run_with_cache", plant_induction_z(model, 1, t, u))
    kw = dict(heads=[0], n_control=0, repeat_windows=0, progress=False)
    f0 = find_induction_features(model, sae, ActivationSource(model, windows), **kw).candidate_features[0]
    assert not f0["testable"] and f0["n_first"] == 6
    r = find_induction_features(model, sae, ActivationSource(model, windows), repeat_half=True, **kw)
    f0 = r.candidate_features[0]
    assert f0["testable"] and f0["n_later"] == 6 and f0["pass_rate"] == 1.0 and f0["first_fire_rate"] == 0.0
    assert "first half twice" in r.rules["windows"]


def test_token_next_tests_the_token_a_feature_predicts_when_its_logit_token_is_another(tiny, monkeypatch):
    """Feature 0 fires where s is next by induction, but its top direct-logit token is not s (a middle-layer
    feature acting through later layers): the paper's token misses it, token='next' finds s and passes."""
    model, _ = tiny
    sae, u = planted_sae(model)
    _, eff = logit_effects(model, sae, [0], k=1)
    t_logit = int(eff[0]["top"][0][0])
    s = next(x for x in range(3, 101) if x != t_logit)
    windows = windows_with_bigrams([s], model.cfg.bos_token_id or 0, n_per=6)
    windows[windows == t_logit] = s + 1 if s + 1 != t_logit else s + 2  # the logit token never occurs
    monkeypatch.setattr(model, "run_with_cache", plant_induction_z(model, 1, s, u))
    kw = dict(heads=[0], n_control=0, progress=False)
    f0 = find_induction_features(model, sae, ActivationSource(model, windows), **kw).candidate_features[0]
    assert f0["token_id"] == t_logit and f0["token_source"] == "logit" and not f0["testable"]
    r = find_induction_features(model, sae, ActivationSource(model, windows), token="next", **kw)
    f0 = r.candidate_features[0]
    fires = [(row, p) for row in windows for p in range(1, windows.shape[1] - 1) if is_induction(row, p, s)]
    share = np.mean([row[p + 1] == s for row, p in fires])  # < 1: a random later copy of A need not precede s
    assert f0["top_next_token_id"] == s and f0["top_next_share"] == pytest.approx(share) and share > 0.5
    assert (f0["token_id"], f0["token_source"], f0["logit_token_id"]) == (s, "given", t_logit)
    assert f0["n_later"] >= 12 and f0["pass_rate"] == 1.0 and f0["first_fire_rate"] == 0.0
    with pytest.raises(ValueError, match="repeat_windows"):
        find_induction_features(model, sae, ActivationSource(model, windows), token="next", repeat_windows=0, **kw)


def test_behaviour_counts_match_brute_force_on_random_windows(tiny):
    """An ordinary random SAE: the counts equal a direct loop over a full forward's activations."""
    model, _ = tiny
    sae = random_sae(model, d_sae=8)
    windows = np.random.default_rng(1).integers(3, 12, size=(10, 20))  # small vocabulary: many repeats
    windows[:, 0] = model.cfg.bos_token_id or 0
    rows = behaviour(model, sae, range(8), ActivationSource(model, windows), per_feature=6, progress=False, batch_size=3)
    _, cache = model.run_with_cache(torch.from_numpy(windows.astype(np.int64)), [sae.cfg.hook_name])
    acts = sae.encode(cache[sae.cfg.hook_name].flatten(2)).detach()
    rank = np.random.default_rng(0).permutation(len(windows))
    for r in rows:
        t, f = r["token_id"], r["feature"]
        wins = [w for w in np.argsort(rank) if (windows[w, 2:] == t).any()][:6]
        later = fl = first = ff = 0
        for w in wins:
            for p in range(1, windows.shape[1] - 1):
                if windows[w, p + 1] == t:
                    earlier = any(windows[w, q] == windows[w, p] and windows[w, q + 1] == t for q in range(1, p))
                    fired = bool(acts[w, p, f] > 0)
                    later, fl = later + earlier, fl + (earlier and fired)
                    first, ff = first + (not earlier), ff + (not earlier and fired)
        assert (r["n_later"], r["n_later_fired"], r["n_first"], r["n_first_fired"], r["n_windows"]) == \
            (later, fl, first, ff, len(wins))


def test_layer_induction_heads_finds_a_planted_head(tiny, monkeypatch):
    model, _ = tiny
    n = 20  # repeated-random-token half length (tiny GPT-2 has a context of 64)
    hook = plant_attention(1, 2, lambda t, p: t - n + 1 if t > n else None)
    orig = model.run_with_cache
    monkeypatch.setattr(model, "run_with_cache", lambda tokens, names, stop_early=True:
                        model.run_with_hooks(tokens, [hook], cache=names))
    heads = layer_induction_heads(model, 1, n=n, batch=4)
    assert heads[0][0] == 2 and heads[0][1] == pytest.approx(1.0) and len(heads) == 1
    monkeypatch.setattr(model, "run_with_cache", orig)
    with pytest.raises(ValueError, match="no head with induction score"):
        layer_induction_heads(model, 1, n=n, batch=4)


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    from .test_case_study import make_cli_setup

    return make_cli_setup(tmp_path_factory.mktemp("cli"))


def test_cli_induction_features(cli_setup, monkeypatch, capsys):
    import json

    from .test_case_study import run_cli

    tmp, model = cli_setup
    common = ["--sae", str(tmp / "sae"), "--corpus", str(tmp / "corpus.txt"), "--windows", "20"]
    code, out, err = run_cli(monkeypatch, capsys, model, "induction-features", *common, "--head", "1.0", "--threshold", "0.2",
                             "--control", "4", "--out", str(tmp / "ind"))
    assert code == 0, err
    r = json.loads((tmp / "ind" / "induction_features.json").read_text())
    assert r["heads"] == ["1.0"] and r["controls"]["n"] == len(r["control_features"]) <= 4
    assert r["candidates"]["n"] == len(r["candidate_features"]) and r["headline"] in out
    assert (tmp / "ind" / "induction_features.png").exists()
    assert list(r) == ["model", "hook", "layer", "d_sae", "n_live", "heads", "head_induction_scores", "n_windows_pool", "rules",
                       "candidates", "controls", "repeat_base_rates", "passing_fraction_of_live", "headline",
                       "candidate_features", "control_features", "sae", "store", "live", "run"]
    assert r["live"].startswith("training density >= 1e-05") and r["n_windows_pool"] == 20
    code, out, err = run_cli(monkeypatch, capsys, model, "induction-features", *common, "--head", "1.0", "--threshold", "0.2",
                             "--control", "4", "--repeat-half", "--out", str(tmp / "ind2"))
    assert code == 0, err
    assert "first half twice" in json.loads((tmp / "ind2" / "induction_features.json").read_text())["rules"]["windows"]
    for head, message in (("0.1", "the SAE is on layer 1"), ("1.9", "layer 1 has 4 heads"), ("x", "write LAYER.HEAD")):
        code, _, err = run_cli(monkeypatch, capsys, model, "induction-features", *common, "--head", head,
                               "--out", str(tmp / "bad"))
        assert code == 2 and message in err, err
