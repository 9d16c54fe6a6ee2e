"""Feature dashboards on disk: an HTML page each, and JSON close to Neuronpedia's feature export
(features.dashboard builds the data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .html import render_dashboard, write_html


def write_dashboards(dashboards: list[dict], out: Path, layer: int, n_heads: int) -> dict[int, str]:
    """Write features/L{layer}/F{i}.html + .json; returns {feature: path relative to out}."""
    folder = Path(out) / "features" / f"L{layer}"
    folder.mkdir(parents=True, exist_ok=True)
    links = {}
    for d in dashboards:
        d["links"] = {"index": "../../index.html", "heads": [[f"H{h}", f"../../heads/L{layer}H{h}.html"] for h in range(n_heads)]}
        name = f"F{d['feature']}"
        write_html(folder / f"{name}.html", render_dashboard(d))
        (folder / f"{name}.json").write_text(json.dumps({**neuronpedia_json(d), "dashboard": d}))
        links[d["feature"]] = f"features/L{layer}/{name}.html"
    return links


def neuronpedia_json(d: dict) -> dict:
    """A dashboard in (close to) Neuronpedia's feature export format, plus the attention-specific fields."""
    examples = d["top_examples"] + [e for g in d["quantile_groups"] for e in g["examples"]]
    bins = [(None, None)] * len(d["top_examples"]) + [(g["lo"], g["hi"]) for g in d["quantile_groups"] for _ in g["examples"]]
    h = d["histogram"]
    return {
        "modelId": d["model"], "layer": f"{d['layer']}-attnsae-hook_z", "index": d["feature"], "hook": d["hook"],
        "maxActApprox": d["max_act"], "frac_nonzero": d["density"], "n_tokens": d["n_tokens"],
        "pos_str": [t for t, _ in d["logit_effect"]["top"]], "pos_values": [v for _, v in d["logit_effect"]["top"]],
        "neg_str": [t for t, _ in d["logit_effect"]["bottom"]], "neg_values": [v for _, v in d["logit_effect"]["bottom"]],
        "logit_convention": d["logit_effect"]["convention"],
        "freq_hist_data_bar_heights": h["counts"],
        "freq_hist_data_bar_values": [float(np.sqrt(a * b)) for a, b in zip(h["edges"][:-1], h["edges"][1:])],
        "decoder_weights_dist": d["head_attribution"], "head_fve": d["head_fve"],
        "activations": [{
            "tokens": e["tokens"], "values": e["acts"], "maxValue": e["act"], "maxValueTokenIndex": e["pos"],
            "minValue": min(e["acts"]), "binMin": lo, "binMax": hi,
            "dfa_values": e["dfa_values"], "dfa_targetIndex": e["pos"],
            "dfa_maxValue": max((s["value"] for s in e["dfa_source"]), default=0.0),
        } for e, (lo, hi) in zip(examples, bins)],
    }
