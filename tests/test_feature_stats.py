"""The one-pass feature statistics agree with brute force over the same tokens; activations from a model
or a store agree."""

import numpy as np
import pytest
import torch

from attnsae.attribution import Moments, dfa_by_head, layer_of
from attnsae.data import ActivationStore, harvest
from attnsae.features import ActivationSource, FeatureStats, cached_stats, encode_features, feature_stats
from attnsae.features.stats import HIST_EDGES
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
    (st,) = feature_stats(ActivationSource(model, windows), [sae], batch_size=5, progress=False, top_k=4, n_samples=8)
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
            if a > 0:  # the same fp32 value, summed in another order (SAE.active recomputes the active entries)
                assert act[w, p, f].item() == pytest.approx(a.item(), rel=1e-5, abs=1e-6)


def test_random_sample_holds_real_activating_tokens_without_repeats(setup):
    model, sae, windows = setup
    (st,) = feature_stats(ActivationSource(model, windows), [sae], batch_size=5, progress=False, n_samples=8)
    _, act = brute(model, sae, windows)
    for f in range(sae.d_sae):
        ok = st.sample_window[f] >= 0
        assert int(ok.sum()) == min(8, int(st.count[f]))
        pairs = {(int(w), int(p)) for w, p in zip(st.sample_window[f][ok], st.sample_pos[f][ok])}
        assert len(pairs) == int(ok.sum())
        for w, p in pairs:
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
        (st,) = feature_stats(ActivationSource(model, w), [sae], batch_size=1, progress=False, n_samples=4, seed=seed)
        hits += torch.bincount(st.sample_window[0], minlength=2).float()
    assert abs(hits[0] / hits.sum() - 0.5) < 0.06  # windows arrive in different batches: no batch bias


def test_head_variance_shares_match_explicit_dfa(setup):
    model, sae, windows = setup
    (st,) = feature_stats(ActivationSource(model, windows), [sae], batch_size=5, progress=False)
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
    (a,) = feature_stats(ActivationSource(model, windows), [sae], batch_size=6, progress=False)
    (b,) = feature_stats(ActivationSource.from_store(model, store), [sae], batch_size=4, progress=False)
    torch.testing.assert_close(a.count, b.count)
    torch.testing.assert_close(a.top_act, b.top_act, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.head_fve, b.head_fve, atol=1e-4, rtol=1e-4, equal_nan=True)
    a.save(tmp_path / "s.safetensors")
    c = FeatureStats.load(tmp_path / "s.safetensors")
    assert c.n_tokens == a.n_tokens
    torch.testing.assert_close(c.top_window, a.top_window)
    # a subset of the store's windows, mapped back by index, equals the model over those windows
    sub = [5, 2, 9]
    (c,) = feature_stats(ActivationSource.from_store(model, store, sub), [sae], progress=False)
    (d,) = feature_stats(ActivationSource(model, windows[sub]), [sae], progress=False)
    torch.testing.assert_close(c.count, d.count)
    torch.testing.assert_close(c.top_window, d.top_window)


def test_stats_cache_loads_saved_stats_computes_the_rest_and_refuses_other_windows(setup, tmp_path):
    model, sae, windows = setup
    source = ActivationSource(model, windows)
    (a,) = feature_stats(source, [sae], progress=False)
    (b,) = cached_stats(source, [sae], tmp_path, progress=False)  # nothing saved: one pass
    torch.testing.assert_close(b.count, a.count)
    a.count.zero_()  # a mark: what the cache returns is the saved file
    a.save(tmp_path / f"L{layer_of(sae)}.safetensors")
    (c,) = cached_stats(source, [sae], tmp_path, progress=False)
    assert (c.count == 0).all() and c.n_windows == len(windows)
    with pytest.raises(ValueError, match="covers 24 windows, the inputs have 5"):
        cached_stats(ActivationSource(model, windows[:5]), [sae], tmp_path)


def test_activations_at_points_from_store_match_the_model_and_full_encoding(tiny, tmp_path):
    model, _ = tiny
    windows = np.random.default_rng(2).integers(3, 101, size=(6, 12)).astype(np.int32)
    windows[:, 0] = model.cfg.bos_token_id or 0
    store = harvest(model, windows, tmp_path / "s", ["blocks.1.attn.hook_z"], dtype="float32", progress=False)
    feats = [1, 4, 6]
    for sae in (random_sae(model, d_sae=8), random_sae(model, d_sae=8, architecture="topk", k=3)):
        w = np.array([0, 5, 2, 2, 3, 0])
        p = np.array([1, 11, 4, 0, 7, 3])
        from_model = ActivationSource(model, windows).at(sae, feats, w, p, batch_size=2)
        from_store = ActivationSource.from_store(model, store).at(sae, feats, w, p)
        _, cache = model.run_with_cache(torch.from_numpy(windows.astype(np.int64)), [sae.cfg.hook_name])
        full = sae.encode(cache[sae.cfg.hook_name].flatten(2))[torch.from_numpy(w), torch.from_numpy(p)][:, feats].detach()
        full[p == 0] = 0  # BOS is not read
        torch.testing.assert_close(from_model, full, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(from_store, full, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(encode_features(sae, cache[sae.cfg.hook_name].flatten(2), feats),
                                   sae.encode(cache[sae.cfg.hook_name].flatten(2))[..., feats], atol=1e-5, rtol=1e-5)
        # a subset of the store's windows, mapped back by index
        sub = ActivationSource.from_store(model, store, [3, 0]).at(sae, feats, np.array([1, 0]), np.array([5, 2]))
        torch.testing.assert_close(sub, ActivationSource(model, windows).at(sae, feats, np.array([0, 3]), np.array([5, 2])))


def test_source_refuses_activations_it_cannot_give(tiny, tmp_path):
    model, _ = tiny
    windows = np.random.default_rng(3).integers(3, 101, size=(4, 10)).astype(np.int32)
    store = ActivationSource.from_store(model, harvest(model, windows, tmp_path / "s", ["blocks.0.attn.hook_z"],
                                                       dtype="float32", progress=False))
    with pytest.raises(ValueError, match="not the SAE's hook blocks.1.attn.hook_z"):
        feature_stats(store, [random_sae(model, d_sae=4)])
    with pytest.raises(ValueError, match="skips positions < 1 but the SAE reads from position 0"):
        store.at(random_sae(model, layer=0, d_sae=4, first_pos=0), [0], [0], [1])
    with pytest.raises(ValueError, match="the store's windows are 10 tokens, these are 9"):
        ActivationSource(model, windows[:, :9], store.store)
    with pytest.raises(ValueError, match="needs a model or a store"):
        ActivationSource(None, windows).at(random_sae(model, d_sae=4), [0], [0], [1])
    other = random_sae(model, layer=0, d_sae=4)
    other.cfg.model_name = "another-model"  # same hook and width, other model: never mixed silently
    with pytest.raises(ValueError, match="activations, the SAE was trained on another-model"):
        store.at(other, [0], [0], [1])
