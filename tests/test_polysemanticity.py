"""Head polysemanticity (app. J, table 3): classes, labels, mechanisms, and families found on planted heads."""

import json

import numpy as np
import pytest
import torch

from attnsae.experiments.polysemanticity import (
    CLASSES,
    CONTEXT,
    auto_families,
    classify_head,
    mechanism,
    polysemanticity,
    read_labels,
)
from attnsae.features import ActivationSource, feature_stats
from attnsae.sae import SAE, SAEConfig
from tests.test_experiments import plant_attention


def test_head_classes_from_labels():
    assert classify_head(["a"] * 10) == CLASSES[0] == "monosemantic"
    assert classify_head(["a"] * 9 + ["b"]) == CLASSES[1]
    assert classify_head(["a"] * 8 + ["b", "c"]) == CLASSES[1]  # two exceptions, even of different families
    assert classify_head(["a"] * 7 + ["b"] * 3) == CLASSES[2]
    assert classify_head(["a"] * 5 + ["b"] * 5) == CLASSES[2]
    assert classify_head(["a"] * 5 + ["b"] * 3 + ["c"] * 2) == CLASSES[3]
    assert classify_head(["a"] * 7 + ["b", "c", "d"]) == CLASSES[3]
    with pytest.raises(ValueError):
        classify_head([])


def test_read_labels(tmp_path):
    p = tmp_path / "labels.json"
    p.write_text(json.dumps({"3": "induction", "L2.F7": "context"}))
    assert read_labels(p, [2]) == {(2, 3): "induction", (2, 7): "context"}
    with pytest.raises(ValueError, match="ambiguous"):
        read_labels(p, [2, 4])
    p.write_text(json.dumps({"F3": "x"}))
    with pytest.raises(ValueError, match="not a feature id"):
        read_labels(p, [2])


def test_mechanism_labels():
    text = lambda ids: [f"t{i}" for i in ids]  # noqa: E731
    row = np.array([0, 5, 6, 7, 5, 9, 0, 8])
    assert mechanism(row, 4, 0, 0, text) == "attention sink (BOS)"
    assert mechanism(row, 7, 6, 0, text) == "attention sink (BOS)"  # a BOS between documents
    assert mechanism(row, 4, 4, 0, text) == "current token"
    assert mechanism(row, 4, 1, 0, text) == "duplicate token"  # row[1] = row[4] = 5
    assert mechanism(row, 4, 2, 0, text) == "induction"  # row[1] = 5 = row[4], source is the token after it
    assert mechanism(row, 5, 4, 0, text) == "previous token"
    assert mechanism(row, 5, 3, 0, text) == "source 't7'"


def one_head_sae(model, per_head=10, layer=1, seed=0, first_pos=1):
    """Feature j is written by head j // per_head only (attribution 1) and reads only that head's z."""
    c = model.cfg
    H, dh = c.n_heads, c.d_head
    F = H * per_head
    sae = SAE(SAEConfig(d_in=H * dh, d_sae=F, hook_name=f"blocks.{layer}.attn.hook_z", model_name=c.name,
                        first_pos=first_pos))
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(F, H, dh)
    for j in range(F):
        mask[j, j // per_head] = 1
    with torch.no_grad():
        dec = torch.randn(F, H, dh, generator=g) * mask
        sae.W_dec.copy_(dec.flatten(1) / dec.flatten(1).norm(dim=1, keepdim=True))
        sae.W_enc.copy_((torch.randn(F, H, dh, generator=g) * mask).flatten(1).T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def make_fire(model, sae, windows):
    """z has a large common component in random models, so a random read is always on or always off:
    flip the always-off ones (b_dec and b_enc are 0, so the sign of w . z decides)."""
    _, cache = model.run_with_cache(torch.from_numpy(windows.astype(np.int64)), [sae.cfg.hook_name])
    pre = sae.pre_acts(cache[sae.cfg.hook_name].flatten(2))[:, sae.cfg.first_pos:].flatten(0, 1)
    with torch.no_grad():
        sae.W_enc *= torch.where((pre > 0).any(0), 1.0, -1.0)


def test_polysemanticity_table_from_person_labels(tiny):
    model, _ = tiny
    H = model.cfg.n_heads
    sae = one_head_sae(model)
    windows = np.random.default_rng(0).integers(3, 101, size=(8, 16))
    windows[:, 0] = model.cfg.bos_token_id or 0
    make_fire(model, sae, windows)
    source = ActivationSource(model, windows)
    (st,) = feature_stats(source, [sae], progress=False)
    families = {0: ["a"] * 10, 1: ["a"] * 9 + ["b"], 2: ["a"] * 5 + ["b"] * 5, 3: ["a"] * 4 + ["b"] * 3 + ["c"] * 3}
    labels = {(1, h * 10 + i): fam for h, fams in families.items() for i, fam in enumerate(fams)}
    del labels[1, 0]  # an unlabelled feature is left out of its head's classification
    r = polysemanticity(source, [sae], [st], labels=labels)
    by_head = {x["head"]: x for x in r.heads}
    assert [by_head[f"1.{h}"]["class"] for h in range(4)] == list(CLASSES)
    assert by_head["1.0"]["n_labelled"] == 9 and by_head["1.3"]["families"] == {"a": 4, "b": 3, "c": 3}
    assert {f["feature"] for f in by_head["1.2"]["features"]} == set(range(20, 30))
    assert all(by_head[f"1.{h}"]["class"] is None for h in range(4, H))  # no labels at all
    assert (st.count > 0).all() and r.n_classified == 4 and all(v["n"] == 1 and v["fraction"] == 0.25 for v in r.table.values())


def test_automatic_families_find_planted_previous_token_and_sink_heads(tiny, monkeypatch):
    model, _ = tiny
    # first_pos 3: at dest 1 the previous token is BOS (a sink), at dest 2 position 1 is the previous token
    sae = one_head_sae(model, per_head=3, first_pos=3)
    hooks = [plant_attention(1, 0, lambda t, p: t - 1), plant_attention(1, 1, lambda t, p: 0),
             plant_attention(1, 2, lambda t, p: 1)]  # head 2 moves the token at position 1: a context head
    monkeypatch.setattr(model, "run_with_cache", lambda tokens, names, stop_early=True:
                        model.run_with_hooks(tokens, hooks, cache=names))
    rng = np.random.default_rng(0)
    windows = np.stack([rng.permutation(np.arange(13, 101))[:16] for _ in range(10)])  # no repeats in a window
    windows[:, 0] = model.cfg.bos_token_id or 0
    windows[:, 1] = np.arange(3, 13)  # a different context token in every window
    # each feature reads its head's mean z (plus noise): it fires on most tokens, its source's DFA term > 0
    _, cache = model.run_with_cache(torch.from_numpy(windows.astype(np.int64)), [sae.cfg.hook_name])
    mean = cache[sae.cfg.hook_name][:, 3:].mean((0, 1))  # [H, dh]
    _, dh = mean.shape
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for j in range(sae.d_sae):
            h = j // 3
            sae.W_enc[:, j] = 0
            sae.W_enc[h * dh:(h + 1) * dh, j] = mean[h] + 0.1 * mean[h].norm() * torch.randn(dh, generator=g) / dh ** 0.5
    source = ActivationSource(model, windows)
    (st,) = feature_stats(source, [sae], progress=False)
    assert (st.count[:9] >= 5).all()
    fam = auto_families(source, sae, st, range(9), n_examples=5, progress=False)
    assert all(len(fam[f]["examples"]) == 5 for f in range(9))
    for f in range(3):  # head 0 only attends to t - 1
        assert fam[f]["family"] == fam[f]["coarse_family"] == "previous token"
        assert set(fam[f]["examples"]) == {"previous token"}
    for f in range(3, 6):  # head 1 only attends to BOS
        assert fam[f]["family"] == fam[f]["coarse_family"] == "attention sink (BOS)"
    for f in range(6, 9):  # head 2 moves a different token in each window: mixed sources, one coarse family
        assert all(x.startswith("source ") for x in fam[f]["examples"]) and len(set(fam[f]["examples"])) == 5
        assert fam[f]["family"] == f"mixed (F{f})" and fam[f]["coarse_family"] == CONTEXT
    r = polysemanticity(source, [sae], [st], k=3, n_examples=5, progress=False)
    by_head = {x["head"]: x for x in r.heads}
    assert by_head["1.0"]["class"] == by_head["1.1"]["class"] == "monosemantic"
    assert by_head["1.0"]["families"] == {"previous token": 3}
    assert len(by_head["1.2"]["families"]) == 3 and by_head["1.2"]["class_coarse"] == "monosemantic"  # 3 mixed; 1 coarse
    assert r.table_coarse["monosemantic"]["n"] >= 3


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    from .test_case_study import make_cli_setup

    return make_cli_setup(tmp_path_factory.mktemp("cli"))


def test_cli_polysemanticity(cli_setup, monkeypatch, capsys):
    from .test_case_study import run_cli

    tmp, model = cli_setup
    common = ["--sae", str(tmp / "sae"), "--corpus", str(tmp / "corpus.txt"), "--windows", "20", "--k", "3"]
    (tmp / "labels.json").write_text(json.dumps({str(i): "same" for i in range(16)}))
    code, out, err = run_cli(monkeypatch, capsys, model, "polysemanticity", *common, "--labels", str(tmp / "labels.json"),
                             "--out", str(tmp / "poly_labels"))
    assert code == 0, err
    r = json.loads((tmp / "poly_labels" / "polysemanticity.json").read_text())
    assert r["table"]["monosemantic"]["fraction"] == 1.0 and r["n_classified"] == model.cfg.n_heads
    assert list(r) == ["model", "layers", "k", "labels", "n_heads", "n_classified", "table", "heads", "saes", "n_windows", "run"]
    code, out, err = run_cli(monkeypatch, capsys, model, "polysemanticity", *common, "--examples", "3",
                             "--out", str(tmp / "poly"))
    assert code == 0, err
    r = json.loads((tmp / "poly" / "polysemanticity.json").read_text())
    assert r["n_classified"] == model.cfg.n_heads and sum(v["n"] for v in r["table"].values()) == model.cfg.n_heads
    assert list(r) == ["model", "layers", "k", "labels", "n_heads", "n_classified", "table", "table_coarse", "heads", "saes",
                       "n_windows", "run"]
    assert (tmp / "poly" / "polysemanticity.md").read_text().count("| 1.") == model.cfg.n_heads
    assert (tmp / "poly" / "polysemanticity.png").exists() and "plausibly monosemantic" in out
    (tmp / "labels.json").write_text(json.dumps({"F3": "x"}))
    code, _, err = run_cli(monkeypatch, capsys, model, "polysemanticity", *common, "--labels", str(tmp / "labels.json"),
                           "--out", str(tmp / "bad"))
    assert code == 2 and "not a feature id" in err
    # --stats: saved statistics of the same windows are used (here all-dead: no head gets a feature), others refused
    from attnsae.features import InputSpec, load_inputs

    monkeypatch.setattr("attnsae.models.load_model", lambda *a, **k: model)
    inputs = load_inputs(InputSpec([str(tmp / "sae")], corpus=str(tmp / "corpus.txt"), windows=20, store_windows="all"))
    (st,) = feature_stats(inputs.source, inputs.saes, progress=False)
    st.count.zero_()
    (tmp / "stats").mkdir()
    st.save(tmp / "stats" / "L1.safetensors")
    (tmp / "labels.json").write_text(json.dumps({str(i): "same" for i in range(16)}))
    code, _, err = run_cli(monkeypatch, capsys, model, "polysemanticity", *common, "--labels", str(tmp / "labels.json"),
                           "--stats", str(tmp / "stats"), "--out", str(tmp / "poly_stats"))
    assert code == 0, err
    assert json.loads((tmp / "poly_stats" / "polysemanticity.json").read_text())["n_classified"] == 0
    code, _, err = run_cli(monkeypatch, capsys, model, "polysemanticity", *common, "--windows", "10",
                           "--stats", str(tmp / "stats"), "--out", str(tmp / "bad"))
    assert code == 2 and "covers 20 windows, the inputs have 10" in err
