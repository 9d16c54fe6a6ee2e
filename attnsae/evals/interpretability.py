"""Human interpretability ratings of sampled SAE features (paper section 3.2, Table 2).

A rater looks at each sampled feature's dashboard and answers "interpretable?" yes or no.
The score is the fraction judged interpretable with an exact (Clopper–Pearson) 95% interval.

Ratings file (JSON), one per SAE sample::

    {"sae": "path/or/name", "layer": 15 | null, "seed": 0,
     "features": [{"feature": 123, "dashboard": "features/f123.html", "verdict": null | true | false,
                   "note": ""}, ...]}

``dashboard`` is relative to the ratings file's folder. :func:`sample` writes a fresh one with the
sampled features' dashboards and the HTML rating sheet. Verdicts come from the terminal loop
(:func:`ask`, which saves after every answer) or from that sheet (``rate.html``), whose exported
JSON is merged in with :func:`merge_export`.
"""
from __future__ import annotations

import json
import math
import operator
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

__all__ = ["clopper_pearson", "new_ratings", "load_ratings", "save_ratings", "validate_ratings",
           "sample", "ask", "score", "merge_export", "RatingsError"]


class RatingsError(ValueError):
    """A ratings file or exported ratings that do not follow the format."""


# ----------------------------------------------------------------------------------------------
# Clopper–Pearson
# ----------------------------------------------------------------------------------------------

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the regularized incomplete beta (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0, 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _beta_quantile(q: float, a: float, b: float) -> float:
    """p with I_p(a, b) = q, by bisection (I_p is increasing in p) to ~1e-12."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13:
            break
    return 0.5 * (lo + hi)


def clopper_pearson(x: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial confidence interval for x successes out of n trials.

    lower = Beta(alpha/2; x, n-x+1) quantile (0 when x == 0),
    upper = Beta(1-alpha/2; x+1, n-x) quantile (1 when x == n), alpha = 1 - confidence.
    """
    def as_int(name: str, v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError(f"clopper_pearson: {name} must be an integer, got {v!r}")
        try:
            return operator.index(v)  # int, numpy integers
        except TypeError:
            if isinstance(v, float) and v.is_integer():
                return int(v)
            raise ValueError(f"clopper_pearson: {name} must be an integer, got {v!r}") from None

    x, n = as_int("x", x), as_int("n", n)
    if n <= 0:
        raise ValueError(f"clopper_pearson: n must be > 0, got {n}")
    if not 0 <= x <= n:
        raise ValueError(f"clopper_pearson: need 0 <= x <= n, got x={x}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"clopper_pearson: confidence must be in (0, 1), got {confidence}")
    alpha = 1.0 - confidence
    lower = 0.0 if x == 0 else _beta_quantile(alpha / 2, x, n - x + 1)
    upper = 1.0 if x == n else _beta_quantile(1 - alpha / 2, x + 1, n - x)
    return lower, upper


# ----------------------------------------------------------------------------------------------
# Ratings file
# ----------------------------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_ratings(r: Any, where: str = "ratings") -> dict:
    """Check r follows the ratings format; returns it. Raises RatingsError naming the problem."""
    if not isinstance(r, dict):
        raise RatingsError(f"{where}: top level must be a JSON object, got {type(r).__name__}")
    for key in ("sae", "layer", "seed", "features"):
        if key not in r:
            raise RatingsError(f"{where}: missing key {key!r}")
    if not isinstance(r["sae"], str):
        raise RatingsError(f"{where}: 'sae' must be a string, got {r['sae']!r}")
    if r["layer"] is not None and not _is_int(r["layer"]):
        raise RatingsError(f"{where}: 'layer' must be an integer or null, got {r['layer']!r}")
    if not _is_int(r["seed"]):
        raise RatingsError(f"{where}: 'seed' must be an integer, got {r['seed']!r}")
    if not isinstance(r["features"], list):
        raise RatingsError(f"{where}: 'features' must be a list")
    seen: set[int] = set()
    for i, f in enumerate(r["features"]):
        at = f"{where}: features[{i}]"
        if not isinstance(f, dict):
            raise RatingsError(f"{at} must be an object, got {f!r}")
        for key in ("feature", "dashboard", "verdict"):
            if key not in f:
                raise RatingsError(f"{at}: missing key {key!r}")
        if not _is_int(f["feature"]) or f["feature"] < 0:
            raise RatingsError(f"{at}: 'feature' must be a non-negative integer, got {f['feature']!r}")
        if f["feature"] in seen:
            raise RatingsError(f"{at}: feature {f['feature']} appears more than once")
        seen.add(f["feature"])
        if not isinstance(f["dashboard"], str):
            raise RatingsError(f"{at}: 'dashboard' must be a string, got {f['dashboard']!r}")
        if f["verdict"] is not None and not isinstance(f["verdict"], bool):
            raise RatingsError(f"{at}: 'verdict' must be true, false or null, got {f['verdict']!r}")
        if not isinstance(f.setdefault("note", ""), str):
            raise RatingsError(f"{at}: 'note' must be a string, got {f['note']!r}")
    return r


def new_ratings(sae_name: str, layer: int | None, seed: int,
                features_with_paths: Iterable[tuple[int, str]] | Iterable[dict]) -> dict:
    """A fresh, unrated ratings dict. features_with_paths: (feature, dashboard path) pairs
    (or dicts with "feature" and "dashboard"), dashboard paths relative to the ratings file."""
    feats = []
    for item in features_with_paths:
        if isinstance(item, dict):
            feature, dash = item["feature"], item["dashboard"]
        else:
            feature, dash = item
        if hasattr(feature, "item"):  # numpy / torch scalars
            feature = feature.item()
        feats.append({"feature": feature, "dashboard": str(dash), "verdict": None, "note": ""})
    return validate_ratings({"sae": str(sae_name), "layer": layer, "seed": seed, "features": feats},
                            "new_ratings")


def load_ratings(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RatingsError(f"{path}: no such ratings file") from None
    try:
        r = json.loads(text)
    except json.JSONDecodeError as e:
        raise RatingsError(f"{path}: not valid JSON ({e})") from None
    return validate_ratings(r, str(path))


def save_ratings(path: str | os.PathLike, r: dict) -> None:
    """Validate and write atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    validate_ratings(r, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(r, fh, indent=1, ensure_ascii=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# ----------------------------------------------------------------------------------------------
# Sampling, rating, scoring, merging
# ----------------------------------------------------------------------------------------------

def sample(source, sae, sae_name: str, n: int, out: str | os.PathLike, seed: int = 0) -> tuple[list[int], Path]:
    """Sample n random live features of `sae` over the windows of `source` (a features.ActivationSource) and
    write, in out: their dashboards, rate.html (the rating sheet) and a fresh ratings.json. Refuses a folder
    that already has a ratings file (it may hold verdicts). Returns (features, ratings file)."""
    from ..attribution.heads import layer_of
    from ..features.dashboard import build_dashboards
    from ..features.stats import feature_stats, random_live
    from ..viz.dashboard import write_dashboards
    from ..viz.html import render_rating_sheet, write_html

    out = Path(out)
    ratings = out / "ratings.json"
    if ratings.exists():
        raise ValueError(f"{ratings} exists (it may hold verdicts); rate into a new --out folder")
    (stats,) = feature_stats(source, [sae])
    feats = random_live(stats, n, seed)
    layer = layer_of(sae)
    links = write_dashboards(build_dashboards(source, sae, stats, feats, seed=seed), out, layer, source.model.cfg.n_heads)
    save_ratings(ratings, new_ratings(sae_name, layer, seed, [(f, links[f]) for f in feats]))
    write_html(out / "rate.html", render_rating_sheet({
        "title": f"Rate {len(feats)} random live features of {sae_name}", "sae": sae_name, "seed": seed,
        "n": len(feats), "features": [{"feature": f, "dashboard": links[f]} for f in feats], "ratings_file": ratings.name}))
    return feats, ratings


_ANSWERS = {"y": True, "yes": True, "n": False, "no": False, "s": "skip", "skip": "skip", "q": "quit", "quit": "quit"}


def ask(path: str | os.PathLike, inp: IO[str] = sys.stdin, out: IO[str] = sys.stdout) -> dict:
    """Ask about every unrated feature in the ratings file at path, in file order.

    Answers: y / n (anything after the letter is kept as the note, e.g. "y fires on dates"),
    s to skip for now (asked again next time), q to stop. The file is saved after every verdict,
    so an interrupted session loses nothing. Returns the ratings dict.
    """
    path = Path(path)
    r = load_ratings(path)
    todo = [f for f in r["features"] if f["verdict"] is None]
    n_total = len(r["features"])
    out.write(f"{len(todo)} of {n_total} features unrated in {path}\n"
              "Open each dashboard and answer y / n (text after the letter is saved as a note), "
              "s to skip, q to quit.\n")
    for i, f in enumerate(todo):
        dash = (path.parent / f["dashboard"]).resolve()
        out.write(f"\n[{n_total - len(todo) + i + 1}/{n_total}] feature {f['feature']}\n  dashboard: {dash}\n")
        while True:
            out.write("interpretable? [y/n/s(kip)/q(uit)] ")
            out.flush()
            line = inp.readline()
            if line == "":  # end of input: stop as if q
                out.write("\n")
                _summary(r, out)
                return r
            word, _, note = line.strip().partition(" ")
            ans = _ANSWERS.get(word.lower())
            if ans is None:
                out.write("  please answer y, n, s or q\n")
                continue
            break
        if ans == "quit":
            break
        if ans == "skip":
            continue
        f["verdict"] = ans
        if note.strip():
            f["note"] = note.strip()
        save_ratings(path, r)
    _summary(r, out)
    return r


def _summary(r: dict, out: IO[str]) -> None:
    s = score(r)
    if s["n_rated"] == 0:
        out.write("no features rated yet\n")
        return
    out.write(f"rated {s['n_rated']} of {s['n_total']}: {s['n_interpretable']} interpretable = "
              f"{s['percent']:.1f}% (95% CI {100 * s['ci_low']:.1f}–{100 * s['ci_high']:.1f}%)\n")


def score(r: dict, confidence: float = 0.95) -> dict:
    """n_rated, n_interpretable, percent (0-100) and a Clopper–Pearson interval (fractions in
    [0, 1]); percent and the interval are None while nothing is rated."""
    validate_ratings(r)
    verdicts = [f["verdict"] for f in r["features"] if f["verdict"] is not None]
    n, k = len(verdicts), sum(verdicts)
    if n == 0:
        lo = hi = pct = None
    else:
        lo, hi = clopper_pearson(k, n, confidence)
        pct = 100.0 * k / n
    return {"n_total": len(r["features"]), "n_rated": n, "n_interpretable": k, "percent": pct,
            "ci_low": lo, "ci_high": hi, "confidence": confidence}


def score_summary(s: dict) -> str:
    """One line for a person: `score`'s result."""
    if not s["n_rated"]:
        return f"none of the {s['n_total']} features is rated yet"
    return (f"{s['n_interpretable']}/{s['n_rated']} interpretable = {s['percent']:.1f}% (95% Clopper-Pearson "
            f"[{100 * s['ci_low']:.1f}%, {100 * s['ci_high']:.1f}%]); {s['n_total'] - s['n_rated']} unrated")


def merge_export(path: str | os.PathLike, exported_json: dict | str | os.PathLike) -> dict:
    """Merge verdicts and notes exported from the HTML rating sheet into the ratings file at path.

    exported_json: the parsed dict, its JSON text, or the path of the downloaded file. Features
    not in the ratings file are refused (nothing is written then). An exported null verdict does
    not clear an existing one. Saves and returns the merged ratings.
    """
    path = Path(path)
    if isinstance(exported_json, dict):
        exp = exported_json
    elif isinstance(exported_json, str) and exported_json.lstrip().startswith("{"):
        try:
            exp = json.loads(exported_json)
        except json.JSONDecodeError as e:
            raise RatingsError(f"exported ratings: not valid JSON ({e})") from None
    else:
        exp = load_ratings(exported_json)
    exp = validate_ratings(exp, "exported ratings")
    r = load_ratings(path)
    if exp["sae"] and r["sae"] and exp["sae"] != r["sae"]:
        raise RatingsError(f"exported ratings are for SAE {exp['sae']!r}, the file {path} for {r['sae']!r}")
    by_feature = {f["feature"]: f for f in r["features"]}
    unknown = [f["feature"] for f in exp["features"] if f["feature"] not in by_feature]
    if unknown:
        raise RatingsError(f"exported ratings name features not in {path}: {unknown[:10]}"
                           + (" ..." if len(unknown) > 10 else ""))
    for f in exp["features"]:
        mine = by_feature[f["feature"]]
        if f["verdict"] is not None:
            mine["verdict"] = f["verdict"]
        if f.get("note"):
            mine["note"] = f["note"]
    save_ratings(path, r)
    return r
