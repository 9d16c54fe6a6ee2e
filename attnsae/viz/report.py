"""The per-head report: for every head of every layer with an SAE, its top features by weight-based
head attribution (dead features skipped), with dashboards, as JSON and browsable HTML.

    out/index.html, report.json             layers x heads -> head pages
    out/heads/L{l}H{h}.html / .json         a head's top-k features: score, density, max activation
    out/features/L{l}/F{i}.html / .json     feature dashboards; neuronpedia-batch.json: SAEDashboard's Neuronpedia batch
    out/stats/L{l}.safetensors              the one-pass statistics of every feature (reusable)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..attribution.heads import head_attribution, head_ranking, layer_of, top_features_by_head
from ..evals.metrics import DEAD_THRESHOLD
from ..features.dashboard import build_dashboards_many
from ..features.stats import feature_stats, random_live
from .dashboard import write_dashboards
from .html import render_head_page, render_index, write_html


def _snippet(example: dict | None, width: int = 8) -> str:
    if not example:
        return ""
    p = example["pos"]
    before = "".join(example["tokens"][max(0, p - width):p])
    return f"…{before}‹{example['tokens'][p]}›".replace("\n", "↵")


def head_report(source, saes: list, out, k: int = 10, n_random: int = 0, seed: int = 0, batch_size: int = 32,
                progress: bool = True, names: list[str] | None = None, rank_by: str = "attribution",
                **dashboard_kw) -> dict:
    """Write the report folder for the SAEs' features over the windows of `source` (a features.ActivationSource);
    returns the report dict (also saved as report.json). Each head's top k live features are ranked by
    `rank_by` (attribution.heads.RANKINGS); the page shows both scores."""
    out = Path(out)
    (out / "heads").mkdir(parents=True, exist_ok=True)
    (out / "stats").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    all_stats = feature_stats(source, saes, batch_size, progress)
    t_stats = time.perf_counter() - t0
    model = source.model
    n_heads = model.cfg.n_heads
    layers = []
    attributions = [head_attribution(sae, n_heads) for sae in saes]
    tops, extras, jobs = [], [], []
    for sae, stats, attribution in zip(saes, all_stats, attributions):
        stats.save(out / "stats" / f"L{layer_of(sae)}.safetensors")
        tops.append(top_features_by_head(head_ranking(attribution, stats.head_fve, rank_by), stats.live(), k))
        extras.append(random_live(stats, n_random, seed) if n_random else [])
        jobs.append((sae, stats, sorted({f for head in tops[-1] for f, _ in head} | set(extras[-1]))))
    t = time.perf_counter()
    all_dashboards = build_dashboards_many(source, jobs, seed=seed, batch_size=16, progress=progress, **dashboard_kw)
    t_dash, n_dash = time.perf_counter() - t, sum(map(len, all_dashboards))
    for i, (sae, stats, attribution, top, extra, dashboards) in enumerate(
            zip(saes, all_stats, attributions, tops, extras, all_dashboards)):
        layer, live = layer_of(sae), stats.live()
        by_feature = {d["feature"]: d for d in dashboards}
        links = write_dashboards(dashboards, out, layer, n_heads)
        heads = []
        for h in range(n_heads):
            rows = [{"feature": f, "score": float(attribution[f, h]), "density": float(stats.density[f]),
                     "max_act": float(stats.act_max[f]),
                     "head_fve": None if torch.isnan(stats.head_fve[f, h]) else float(stats.head_fve[f, h]),
                     "top_example": (by_feature[f]["top_examples"] or [None])[0], "dashboard": "../" + links[f]}
                    for f, _ in top[h]]
            page = {"model": model.cfg.name, "hook": sae.cfg.hook_name, "layer": layer, "head": h, "n_heads": n_heads, "k": k,
                    "n_tokens": stats.n_tokens, "dead_threshold": DEAD_THRESHOLD, "features": rows,
                    "links": {"index": "../index.html",
                              "prev": f"L{layer}H{h - 1}.html" if h > 0 else None,
                              "next": f"L{layer}H{h + 1}.html" if h < n_heads - 1 else None}}
            write_html(out / "heads" / f"L{layer}H{h}.html", render_head_page(page))
            (out / "heads" / f"L{layer}H{h}.json").write_text(json.dumps(page))
            heads.append({"head": h, "page": f"heads/L{layer}H{h}.html",
                          "top": [{"feature": r["feature"], "score": r["score"], "density": r["density"],
                                   "summary": _snippet(r["top_example"])} for r in rows]})
        layers.append({"layer": layer, "hook": sae.cfg.hook_name, "sae": names[i] if names else sae.cfg.hook_name,
                       "n_live": int(live.sum()), "d_sae": sae.d_sae, "heads": heads,
                       "random_features": [[f"L{layer} F{f}", links[f]] for f in extra]})
    n_tokens = all_stats[0].n_tokens
    report = {
        "model": model.cfg.name, "model_dtype": str(model.dtype).removeprefix("torch."),
        "title": f"{model.cfg.name}: top features of every attention head", "n_tokens": n_tokens,
        "k": k, "rank_by": rank_by, "dead_threshold": DEAD_THRESHOLD, "layers": layers,
        "dashboards": [pair for layer in layers for pair in layer["random_features"]],
        "timing": {"stats_seconds": t_stats, "dashboards_seconds": t_dash, "n_dashboards": n_dash,
                   "total_seconds": time.perf_counter() - t0,
                   "feature_tokens_per_second": sum(s.d_sae for s in saes) * n_tokens / t_stats,
                   "source": "store" if source.store is not None else "model forward"},
    }
    write_html(out / "index.html", render_index(report))
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report
