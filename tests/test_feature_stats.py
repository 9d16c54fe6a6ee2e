"""The one-pass feature statistics agree with brute force over the same tokens."""

import numpy as np
import pytest
import torch

from attnsae.attribution import Moments, dfa_by_head
from attnsae.data import ActivationStore, harvest
from attnsae.viz.feature_stats import HIST_EDGES, FeatureStats, collect_stats, stats_from_store
from tests.test_attribution import random_sae


def brute(model, sae, windows):
    _, cache = model.run_with_cache(torch.from_numpy(windows.astype(np.int64)), [sae.cfg.hook_name])
    z = cache[sae.cfg.hook_name]
    act = sae.encode(z.flatten(2))
    act[:, :sae.cfg.first_pos] = 0
    return z, act


@pytest.fixture
def setup(tiny, windows):
    model, _ = tiny
    sae = random_sae(model, d_sae=24)
    with torch.no_grad():
        sae.b_enc -= 0.3  # sparser
    return model, sae, windows


def test_counts_max_hist_and_top_windows_match_brute_force(setup):
    model, sae, windows = setup
    (st,) = collect_stats(model, [sae], windows, batch_size=5, progress=False, top_k=4, n_samples=8)
    z, act = brute(model, sae, windows)
    assert st.n_tokens == windows.shape[0] * (windows.shape[1] - 1) and st.n_windows == len(windows)
    torch.testing.assert_close(st.count, (act > 0).sum((0, 1)))
    torch.testing.assert_close(st.act_max, act.amax((0, 1)))
    torch.testing.assert_close(st.act_sum.float(), act.sum((0, 1)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st.hist.sum(1), st.count)
    assert st.hist.shape[1] == len(HIST_EDGES) - 1
    wmax, wpos = act.max(1)  # [windows, F]
    for f in range(sae.d_sae):
        want = wmax[:, f].sort(descending=True).values[:4]
        torch.testing.assert_close(st.top_act[f], want)
        for a, w, p in zip(st.top_act[f], st.top_window[f], st.top_pos[f]):
            if a > 0:
                assert act[w, p, f] == a


def test_random_sample_holds_real_activating_tokens_without_repeats(setup):
    model, sae, windows = setup
    (st,) = collect_stats(model, [sae], windows, batch_size=5, progress=False, n_samples=8)
    _, act = brute(model, sae, windows)
    for f in range(sae.d_sae):
        ok = st.sample_window[f] >= 0
        assert int(ok.sum()) == min(8, int(st.count[f]))
        pairs = {(int(w), int(p)) for w, p in zip(st.sample_window[f][ok], st.sample_pos[f][ok])}
        assert len(pairs) == int(ok.sum())
        for (w, p), a in zip(pairs, st.sample_act[f][ok]):
            assert act[w, p, f] > 0
        torch.testing.assert_close(act[st.sample_window[f][ok], st.sample_pos[f][ok], f], st.sample_act[f][ok])


def test_sample_is_uniform_over_activating_tokens(tiny):
    """A feature firing on every token: each of the 2 windows' tokens is sampled about equally often."""
    model, _ = tiny
    sae = random_sae(model, d_sae=2)
    with torch.no_grad():
        sae.b_enc.fill_(100.0)
    w = np.random.default_rng(0).integers(3, 90, size=(2, 9))
    hits = torch.zeros(2)
    for seed in range(200):
        (st,) = collect_stats(model, [sae], w, batch_size=1, progress=False, n_samples=4, seed=seed)
        hits += torch.bincount(st.sample_window[0], minlength=2).float()
    assert abs(hits[0] / hits.sum() - 0.5) < 0.06  # windows arrive in different batches: no batch bias


def test_head_variance_shares_match_explicit_dfa(setup):
    model, sae, windows = setup
    (st,) = collect_stats(model, [sae], windows, batch_size=5, progress=False)
    z, act = brute(model, sae, windows)
    parts, _ = dfa_by_head(sae, z)  # [b, p, F, H]
    for f in range(sae.d_sae):
        m = act[..., f] > 0
        if m.sum() == 0:
            assert torch.isnan(st.head_fve[f]).all()
            continue
        mom = Moments((model.cfg.n_heads,))
        mom.add(parts[..., f, :][m].sum(-1), parts[..., f, :][m])
        torch.testing.assert_close(st.head_fve[f], mom.shares().float(), atol=2e-4, rtol=1e-3)
        assert float(st.head_fve[f].sum()) == pytest.approx(1.0, abs=1e-3)


def test_store_pass_equals_model_pass_and_save_load(setup, tmp_path):
    model, sae, windows = setup
    store = ActivationStore(harvest(model, windows, tmp_path / "store", [sae.cfg.hook_name], dtype="float32",
                                    windows_per_shard=7, progress=False).root)
    (a,) = collect_stats(model, [sae], windows, batch_size=6, progress=False)
    b = stats_from_store(store, sae, model.cfg.n_heads, windows_per_batch=4, progress=False)
    torch.testing.assert_close(a.count, b.count)
    torch.testing.assert_close(a.top_act, b.top_act, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.head_fve, b.head_fve, atol=1e-4, rtol=1e-4, equal_nan=True)
    a.save(tmp_path / "s.safetensors")
    c = FeatureStats.load(tmp_path / "s.safetensors")
    assert c.n_tokens == a.n_tokens
    torch.testing.assert_close(c.top_window, a.top_window)
