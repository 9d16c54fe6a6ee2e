"""Dashboard data and the per-head report on tiny models of every family."""

import json

import numpy as np
import pytest
import torch

from attnsae.attribution import dfa_bias
from attnsae.attribution.logit_path import logit_effects
from attnsae.features import ActivationSource, build_dashboards, choose_examples, feature_stats
from attnsae.viz.dashboard import write_dashboards
from attnsae.viz.report import head_report
from tests.conftest import peer
from tests.test_attribution import random_sae


@pytest.fixture
def built(tiny):
    model, _ = tiny
    sae = random_sae(model, d_sae=16)
    with torch.no_grad():
        sae.b_enc -= 0.2
    rng = np.random.default_rng(0)
    windows = rng.integers(3, 101, size=(30, 20)).astype(np.int32)
    windows[:, 0] = 0
    source = ActivationSource(model, windows)
    (stats,) = feature_stats(source, [sae], batch_size=8, progress=False, n_samples=40)
    feats = [int(f) for f in stats.count.argsort(descending=True)[:3]]
    ds = build_dashboards(source, sae, stats, feats, n_top=5, per_group=2, before=6, progress=False)
    return model, sae, stats, windows, feats, ds


def test_examples_agree_with_the_pass_and_dfa_sums_exactly(built):
    model, sae, stats, windows, feats, ds = built
    for f, d in zip(feats, ds):
        assert d["feature"] == f and len(d["head_attribution"]) == model.cfg.n_heads
        assert [e["act"] for e in d["top_examples"]] == pytest.approx(stats.top_act[f][:5].tolist(), abs=1e-5)
        assert len(d["quantile_groups"]) == 10 and all(len(g["examples"]) == 2 for g in d["quantile_groups"])
        his = [g["hi"] for g in d["quantile_groups"]]
        assert his == sorted(his, reverse=True)  # highest group first
        for e in d["top_examples"] + [x for g in d["quantile_groups"] for x in g["examples"]]:
            assert len(e["tokens"]) == len(e["acts"]) == len(e["dfa_values"])
            assert e["acts"][e["pos"]] == pytest.approx(e["act"], abs=1e-6) and e["act"] > 0
            # the activating token's pre-activation = sum of head terms + bias = sum over all sources + bias
            assert sum(e["dfa_head"]) + e["dfa_bias"] == pytest.approx(e["act"], abs=1e-4)
            assert e["dfa_bias"] == pytest.approx(float(dfa_bias(sae)[f]), abs=1e-6)
            for s in e["dfa_source"]:
                assert sum(s["by_head"]) == pytest.approx(s["value"], abs=1e-5)
                assert e["dfa_values"][s["pos"]] == pytest.approx(s["value"], abs=1e-6)
                assert s["pos"] <= e["pos"]  # causal
        g = d["quantile_groups"][0]
        for e in g["examples"]:
            assert g["lo"] - 1e-5 <= e["act"] <= g["hi"] + 1e-5


def test_quantile_groups_split_the_sample_evenly(built):
    _, _, stats, _, feats, _ = built
    _, groups = choose_examples(stats, feats[0], per_group=3)
    n = int((stats.sample_window[feats[0]] >= 0).sum())
    sizes = [g["n_sampled"] for g in groups]
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1


def test_logit_effect_is_the_direct_path_through_the_norm_gains(built):
    model, sae, _, _, feats, _ = built
    c = model.cfg
    _, rows = logit_effects(model, sae, feats, k=5)
    block = model.blocks[1]
    for f, row in zip(feats, rows):
        u = (sae.W_dec[f] @ block.W_O).detach()[None]
        if c.post_norms:
            u, s = block.normalize(u, "ln1_post")
            u = u * s  # undo the division by the RMS, keep the (1 + w) gain
        b = getattr(model, "ln_final_b", None)
        x, s = model.final_norm(u)
        if b is not None:
            x = x - b
        want = ((x * s) @ model.W_U).detach()[0]
        torch.testing.assert_close(row["top"][1], want.topk(5).values, rtol=1e-4, atol=1e-4)
        assert row["top"][0].tolist() == want.topk(5).indices.tolist()
        assert row["bottom"][0].tolist() == want.topk(5, largest=False).indices.tolist()


# SAEDashboard 0.8.0's NeuronpediaDashboardBatch / Feature / Activation .to_dict() keys (neuronpedia_dashboard.py)
BATCH_KEYS = {"model_id", "layer", "sae_set", "sae_id_suffix", "features"}
FEATURE_KEYS = {
    "feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
    "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson", "correlated_features_indices",
    "correlated_features_l1", "correlated_features_pearson", "neg_str", "neg_values", "pos_str", "pos_values",
    "frac_nonzero", "freq_hist_data_bar_values", "freq_hist_data_bar_heights", "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values", "n_prompts_total", "n_tokens_in_prompt", "dataset", "decoder_weights_dist", "vector",
    "activations"}
ACTIVATION_KEYS = {"bin_min", "bin_max", "bin_contains", "tokens", "values", "qualifying_token_index", "dfa_values",
                   "dfa_maxValue", "dfa_targetIndex"}


def test_neuronpedia_batch_is_saedashboards_format(built, tmp_path):
    model, sae, stats, windows, feats, ds = built
    write_dashboards(ds, tmp_path, 1, model.cfg.n_heads)
    batch = json.loads((tmp_path / "features" / "L1" / "neuronpedia-batch.json").read_text())
    assert ds[0]["model_dtype"] == str(model.dtype).removeprefix("torch.")  # the precision the numbers came from
    assert set(batch) == BATCH_KEYS and batch["model_id"] == model.cfg.name and batch["layer"] == 1
    assert [f["feature_index"] for f in batch["features"]] == feats
    for f, d in zip(batch["features"], ds):
        assert set(f) == FEATURE_KEYS and all(set(a) == ACTIVATION_KEYS for a in f["activations"])
        assert len(f["activations"]) == 5 + 20 and f["n_prompts_total"] == 30 and f["n_tokens_in_prompt"] == 20
        top = f["activations"][0]
        assert (top["bin_min"], top["bin_contains"]) == (-1.0, -1.0) and top["bin_max"] == pytest.approx(d["max_act"], abs=1e-3)
        assert max(top["values"]) == pytest.approx(d["top_examples"][0]["act"], abs=1e-3)
        assert sum(a["bin_contains"] for a in f["activations"][5::2]) == pytest.approx(1.0)  # the 10 groups tile the sample
        # the logits histogram counts the whole vocabulary; its bars sit inside the effect's range
        assert sum(f["logits_hist_data_bar_heights"]) == model.cfg.d_vocab
        assert min(f["neg_values"]) - 1e-2 <= f["logits_hist_data_bar_values"][0] <= f["logits_hist_data_bar_values"][-1]
        row = sae.W_dec[d["feature"]].detach()
        assert f["neuron_alignment_indices"][0] == int(row.abs().argmax())
        assert f["decoder_weights_dist"] == pytest.approx(d["head_attribution"], abs=1e-3)


@pytest.mark.peers
def test_saedashboard_reads_our_neuronpedia_batch_back_unchanged(built, tmp_path):
    """SAEDashboard's own classes (in .venv-peers) parse the batch and write the same JSON back."""
    peer("sae_dashboard")
    from sae_dashboard.neuronpedia.neuronpedia_dashboard import NeuronpediaDashboardBatch

    model, sae, stats, windows, feats, ds = built
    write_dashboards(ds, tmp_path, 1, model.cfg.n_heads)
    ours = json.loads((tmp_path / "features" / "L1" / "neuronpedia-batch.json").read_text())
    assert NeuronpediaDashboardBatch(**ours).to_dict() == ours


def test_head_report_writes_every_head_and_skips_dead_features(tiny, tmp_path):
    model, _ = tiny
    sae = random_sae(model, d_sae=24)
    with torch.no_grad():
        sae.b_enc[:4] = -100.0  # dead
        sae.W_dec[:4] = 0
        sae.W_dec[:4, :model.cfg.d_head] = 1.0  # ...and all written by head 0: would top its list if not skipped
    windows = np.random.default_rng(1).integers(3, 101, size=(20, 16)).astype(np.int32)
    windows[:, 0] = 0
    r = head_report(ActivationSource(model, windows), [sae], tmp_path, k=3, n_random=2, progress=False)
    (layer,) = r["layers"]
    assert len(layer["heads"]) == model.cfg.n_heads and layer["n_live"] <= 20
    for h in range(model.cfg.n_heads):
        page = json.loads((tmp_path / "heads" / f"L1H{h}.json").read_text())
        assert len(page["features"]) == 3
        assert all(row["feature"] >= 4 for row in page["features"])
        scores = [row["score"] for row in page["features"]]
        assert scores == sorted(scores, reverse=True)
        for row in page["features"]:
            assert (tmp_path / "heads" / row["dashboard"]).resolve().exists()
    assert (tmp_path / "index.html").exists() and len(r["dashboards"]) == 2
    assert r["timing"]["feature_tokens_per_second"] > 0


def assert_same(a, b, where="dashboards"):
    """Equal structures, floats to 1e-5."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5), where
    else:
        assert a == b, where


def test_dashboards_of_several_layers_at_once_equal_each_built_alone(tiny):
    """One forward for every layer's examples gives each SAE the dashboards it gets alone (its own windows' ends
    too, whatever the other SAEs show)."""
    from attnsae.experiments.polysemanticity import auto_families, auto_families_many
    from attnsae.features.dashboard import build_dashboards_many

    model = tiny[0]
    saes = [random_sae(model, layer=0, d_sae=16, seed=1), random_sae(model, layer=1, d_sae=16, seed=2)]
    rng = np.random.default_rng(1)
    windows = rng.integers(3, 101, size=(24, 20)).astype(np.int32)
    windows[:, 0] = 0
    source = ActivationSource(model, windows)
    stats = feature_stats(source, saes, batch_size=8, progress=False, n_samples=40)
    feats = [[int(f) for f in st.count.argsort(descending=True)[:4]] for st in stats]
    kw = dict(n_top=5, per_group=2, before=6, batch_size=5, progress=False)
    together = build_dashboards_many(source, list(zip(saes, stats, feats)), **kw)
    alone = [build_dashboards(source, sae, st, fs, **kw) for sae, st, fs in zip(saes, stats, feats)]
    assert [[d["feature"] for d in ds] for ds in together] == feats
    assert_same(together, alone)  # floats to rounding: a window runs to another length beside other windows
    fam_together = auto_families_many(source, list(zip(saes, stats, feats)), n_examples=4, batch_size=5, progress=False)
    assert fam_together == [auto_families(source, sae, st, fs, n_examples=4, batch_size=5, progress=False)
                            for sae, st, fs in zip(saes, stats, feats)]
