"""Interpretability ratings: Clopper–Pearson intervals, the ratings file, the terminal loop, merging."""
import io
import json
import math

import pytest

from attnsae.evals import interpretability as I

# The paper's Table 2 (30 rated features per SAE): interpretable count -> 95% CI in percent.
# Not used: the layer-0 row, 97% with [82.2%, 99.9%]. 97% of 30 is 29/30, whose exact interval is
# [82.8%, 99.9%], which is also what the paper itself prints for its layer-2 row at 97%; the
# layer-0 lower bound is inconsistent with both.
TABLE2 = {20: (47.2, 82.7), 26: (69.3, 96.2), 29: (82.8, 99.9), 23: (57.7, 90.1), 24: (61.4, 92.3),
          21: (50.6, 85.3), 18: (40.6, 77.3), 19: (43.9, 80.1), 25: (65.3, 94.4)}


@pytest.mark.parametrize("x", sorted(TABLE2))
def test_clopper_pearson_matches_paper_table2(x):
    lo, hi = I.clopper_pearson(x, 30)
    assert (round(100 * lo, 1), round(100 * hi, 1)) == TABLE2[x]


def _binom_cdf(k, n, p):
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(0, k + 1))


@pytest.mark.parametrize("x,n", [(1, 7), (3, 10), (7, 19), (50, 120), (0, 5), (5, 5), (199, 200)])
def test_clopper_pearson_is_the_exact_binomial_tail(x, n):
    lo, hi = I.clopper_pearson(x, n)
    if x > 0:  # P(X >= x | lo) = 2.5%
        assert abs((1 - _binom_cdf(x - 1, n, lo)) - 0.025) < 1e-9
    if x < n:  # P(X <= x | hi) = 2.5%
        assert abs(_binom_cdf(x, n, hi) - 0.025) < 1e-9


def test_clopper_pearson_edges_and_errors():
    lo, hi = I.clopper_pearson(0, 30)
    assert lo == 0.0 and abs(hi - (1 - 0.025 ** (1 / 30))) < 1e-10
    lo, hi = I.clopper_pearson(30, 30)
    assert hi == 1.0 and abs(lo - 0.025 ** (1 / 30)) < 1e-10
    lo, hi = I.clopper_pearson(0, 1)
    assert (lo, round(hi, 10)) == (0.0, 0.975)
    lo99, hi99 = I.clopper_pearson(20, 30, confidence=0.99)
    lo95, hi95 = I.clopper_pearson(20, 30)
    assert lo99 < lo95 < 20 / 30 < hi95 < hi99
    for bad in [(-1, 10), (11, 10), (0, 0), (3, -2)]:
        with pytest.raises(ValueError, match="clopper_pearson"):
            I.clopper_pearson(*bad)
    with pytest.raises(ValueError, match="integer"):
        I.clopper_pearson(2.5, 10)
    with pytest.raises(ValueError, match="confidence"):
        I.clopper_pearson(2, 10, confidence=1.0)


def _ratings(tmp_path, n=5):
    path = tmp_path / "r" / "ratings.json"
    r = I.new_ratings("runs/sae_L15", 15, 7, [(10 * i, f"features/f{10 * i}.html") for i in range(n)])
    I.save_ratings(path, r)
    return path


def test_new_save_load_roundtrip(tmp_path):
    path = _ratings(tmp_path)
    r = I.load_ratings(path)
    assert r["sae"] == "runs/sae_L15" and r["layer"] == 15 and r["seed"] == 7
    assert [f["feature"] for f in r["features"]] == [0, 10, 20, 30, 40]
    assert all(f["verdict"] is None and f["note"] == "" for f in r["features"])
    assert list(path.parent.iterdir()) == [path]  # no temp files left behind
    s = I.score(r)
    assert (s["n_rated"], s["n_interpretable"], s["percent"], s["ci_low"]) == (0, 0, None, None)
    # dict items work too, and layer may be null
    r2 = I.new_ratings("x", None, 0, [{"feature": 3, "dashboard": "a.html"}])
    assert r2["layer"] is None


@pytest.mark.parametrize("mutate,msg", [
    (lambda r: r.pop("seed"), "missing key 'seed'"),
    (lambda r: r["features"].append(dict(r["features"][0])), "more than once"),
    (lambda r: r["features"][1].update(verdict="yes"), "verdict"),
    (lambda r: r["features"][1].update(verdict=1), "verdict"),
    (lambda r: r["features"][0].update(feature="3"), "feature"),
    (lambda r: r["features"][0].update(feature=True), "feature"),
    (lambda r: r.update(layer="15"), "layer"),
    (lambda r: r.update(features={}), "features"),
    (lambda r: r["features"][2].update(note=None), "note"),
])
def test_malformed_files_rejected(tmp_path, mutate, msg):
    path = _ratings(tmp_path)
    r = json.loads(path.read_text())
    mutate(r)
    path.write_text(json.dumps(r))
    with pytest.raises(I.RatingsError, match=msg):
        I.load_ratings(path)


def test_not_json_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(I.RatingsError, match="not valid JSON"):
        I.load_ratings(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(I.RatingsError, match="JSON object"):
        I.load_ratings(bad)
    with pytest.raises(I.RatingsError, match="no such"):
        I.load_ratings(tmp_path / "missing.json")


def test_save_refuses_invalid_and_keeps_old_file(tmp_path):
    path = _ratings(tmp_path)
    before = path.read_text()
    r = I.load_ratings(path)
    r["features"][0]["verdict"] = "maybe"
    with pytest.raises(I.RatingsError):
        I.save_ratings(path, r)
    assert path.read_text() == before


def test_ask_loop_saves_every_answer_and_resumes(tmp_path):
    path = _ratings(tmp_path)
    out = io.StringIO()
    # feature 0: y with a note; 10: garbage then n; 20: skip; 30: quit
    r = I.ask(path, inp=io.StringIO("y fires on dates\nmaybe\nn\ns\nq\n"), out=out)
    text = out.getvalue()
    assert text.count("interpretable? [y/n/s(kip)/q(uit)]") == 5
    assert "please answer y, n, s or q" in text
    assert "rated 2 of 5: 1 interpretable" in text
    saved = I.load_ratings(path)
    assert saved == r
    assert [f["verdict"] for f in saved["features"]] == [True, False, None, None, None]
    assert saved["features"][0]["note"] == "fires on dates"

    # resuming asks only the unrated ones (20, 30, 40), in order; end of input stops cleanly
    out = io.StringIO()
    I.ask(path, inp=io.StringIO("n\nyes\n"), out=out)
    text = out.getvalue()
    assert "3 of 5 features unrated" in text
    assert "feature 20" in text and "feature 30" in text and "feature 40" in text and "feature 10\n" not in text
    saved = I.load_ratings(path)
    assert [f["verdict"] for f in saved["features"]] == [True, False, False, True, None]
    s = I.score(saved)
    assert (s["n_rated"], s["n_interpretable"], s["percent"]) == (4, 2, 50.0)
    assert (s["ci_low"], s["ci_high"]) == I.clopper_pearson(2, 4)


def test_ask_saves_before_being_killed(tmp_path):
    """Every answer is on disk before the next question is asked."""
    path = _ratings(tmp_path)

    class Dying(io.StringIO):
        def __init__(self):
            super().__init__("y\nn\n")
            self.calls = 0

        def readline(self, *a):
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt
            return super().readline(*a)

    with pytest.raises(KeyboardInterrupt):
        I.ask(path, inp=Dying(), out=io.StringIO())
    assert [f["verdict"] for f in I.load_ratings(path)["features"]][:3] == [True, False, None]


def test_merge_export(tmp_path):
    path = _ratings(tmp_path)
    r = I.load_ratings(path)
    r["features"][0]["verdict"] = False  # rated in the terminal
    I.save_ratings(path, r)
    exported = {"sae": "runs/sae_L15", "layer": 15, "seed": 7,
                "features": [{"feature": 10, "dashboard": "features/f10.html", "verdict": True, "note": "dates"},
                             {"feature": 0, "dashboard": "features/f0.html", "verdict": None, "note": ""},
                             {"feature": 40, "dashboard": "features/f40.html", "verdict": False, "note": ""}]}
    merged = I.merge_export(path, json.dumps(exported))
    assert [f["verdict"] for f in merged["features"]] == [False, True, None, None, False]  # null does not clear
    assert merged["features"][1]["note"] == "dates"
    assert I.load_ratings(path) == merged
    # also from a downloaded file
    f = tmp_path / "ratings (1).json"
    exported["features"] = [{"feature": 20, "dashboard": "x", "verdict": True, "note": ""}]
    f.write_text(json.dumps(exported))
    assert I.merge_export(path, f)["features"][2]["verdict"] is True

    before = path.read_text()
    exported["features"] = [{"feature": 20, "dashboard": "x", "verdict": False, "note": ""},
                            {"feature": 999, "dashboard": "x", "verdict": True, "note": ""}]
    with pytest.raises(I.RatingsError, match=r"not in .*\[999\]"):
        I.merge_export(path, exported)
    assert path.read_text() == before  # nothing written
    exported["features"] = exported["features"][:1]
    exported["sae"] = "runs/other"
    with pytest.raises(I.RatingsError, match="for SAE"):
        I.merge_export(path, exported)
    exported["sae"] = "runs/sae_L15"
    exported["features"][0]["verdict"] = "no"
    with pytest.raises(I.RatingsError, match="verdict"):
        I.merge_export(path, exported)


def test_sample_writes_dashboards_the_rating_sheet_and_fresh_ratings(tiny, tmp_path):
    import numpy as np

    from attnsae.features import ActivationSource
    from tests.test_attribution import random_sae

    model, _ = tiny
    windows = np.random.default_rng(0).integers(3, 101, size=(10, 12))
    windows[:, 0] = 0
    source, sae = ActivationSource(model, windows), random_sae(model, d_sae=12)
    feats, path = I.sample(source, sae, "runs/my-sae", 3, tmp_path, seed=1)
    r = I.load_ratings(path)
    assert path == tmp_path / "ratings.json" and len(feats) == 3 and r["sae"] == "runs/my-sae" and r["layer"] == 1
    assert [f["feature"] for f in r["features"]] == feats and all(f["verdict"] is None for f in r["features"])
    assert all((tmp_path / f["dashboard"]).exists() for f in r["features"]) and (tmp_path / "rate.html").exists()
    with pytest.raises(ValueError, match="exists"):  # never overwrites verdicts
        I.sample(source, sae, "runs/my-sae", 3, tmp_path)
