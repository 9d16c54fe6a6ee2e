"""Feature dashboards on disk: an HTML page and our JSON each, and per layer one Neuronpedia dashboard batch
in SAEDashboard's exact format (features.dashboard builds the data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .html import render_dashboard, write_html

NEURONPEDIA_BATCH = "neuronpedia-batch.json"


def write_dashboards(dashboards: list[dict], out: Path, layer: int, n_heads: int) -> dict[int, str]:
    """Write features/L{layer}/F{i}.html + .json and features/L{layer}/neuronpedia-batch.json; returns
    {feature: path relative to out}."""
    folder = Path(out) / "features" / f"L{layer}"
    folder.mkdir(parents=True, exist_ok=True)
    links = {}
    for d in dashboards:
        d["links"] = {"index": "../../index.html", "heads": [[f"H{h}", f"../../heads/L{layer}H{h}.html"] for h in range(n_heads)]}
        name = f"F{d['feature']}"
        write_html(folder / f"{name}.html", render_dashboard(d))
        (folder / f"{name}.json").write_text(json.dumps(d))
        links[d["feature"]] = f"features/L{layer}/{name}.html"
    if dashboards:
        (folder / NEURONPEDIA_BATCH).write_text(json.dumps(neuronpedia_batch(dashboards)))
    return links


def neuronpedia_batch(dashboards: list[dict], sae_set: str = "att-attnsae") -> dict:
    """The dashboards of one SAE as SAEDashboard 0.8's NeuronpediaDashboardBatch.to_dict(), the JSON its Neuronpedia
    runner uploads: {model_id, layer, sae_set, sae_id_suffix, features}. Top examples are the bin (-1, max act, -1), as theirs;
    the quantile groups' bins are their activation ranges and the fraction of activating tokens in each."""
    first = dashboards[0]
    return {"model_id": first["model"], "layer": first["layer"], "sae_set": sae_set, "sae_id_suffix": None,
            "features": [_feature(d) for d in dashboards]}


def _feature(d: dict) -> dict:
    h, lh, align = d["histogram"], d["logit_histogram"], d["decoder_alignment"]
    bins = [(-1.0, d["max_act"], -1.0, e) for e in d["top_examples"]]
    bins += [(g["lo"], g["hi"], g["contains"], e) for g in d["quantile_groups"] for e in g["examples"]]
    return {
        "feature_index": d["feature"],
        "neuron_alignment_indices": align["indices"], "neuron_alignment_values": _r(align["values"]),
        "neuron_alignment_l1": _r(align["l1"]),
        # not computed here: SAEDashboard's correlation tables (empty lists are its own default)
        "correlated_neurons_indices": [], "correlated_neurons_l1": [], "correlated_neurons_pearson": [],
        "correlated_features_indices": [], "correlated_features_l1": [], "correlated_features_pearson": [],
        "neg_str": [t for t, _ in d["logit_effect"]["bottom"]], "neg_values": _r([v for _, v in d["logit_effect"]["bottom"]]),
        "pos_str": [t for t, _ in d["logit_effect"]["top"]], "pos_values": _r([v for _, v in d["logit_effect"]["top"]]),
        "frac_nonzero": d["density"],
        "freq_hist_data_bar_values": _r([float(np.sqrt(a * b)) for a, b in zip(h["edges"][:-1], h["edges"][1:])]),
        "freq_hist_data_bar_heights": _r(h["counts"]),
        "logits_hist_data_bar_heights": _r(lh["heights"]), "logits_hist_data_bar_values": _r(lh["values"]),
        "n_prompts_total": d["n_prompts"], "n_tokens_in_prompt": d["ctx"], "dataset": d["dataset"] or "",
        "decoder_weights_dist": _r(d["head_attribution"]),  # SAEDashboard's allocation_by_head for attention SAEs
        "vector": [],  # its steering-vector runner's field
        "activations": [{
            "bin_min": lo, "bin_max": hi, "bin_contains": contains, "tokens": e["tokens"], "values": _r(e["acts"]),
            "qualifying_token_index": e["pos"],
            "dfa_values": _r(e["dfa_values"]), "dfa_maxValue": max((s["value"] for s in e["dfa_source"]), default=0.0),
            "dfa_targetIndex": e["pos"],
        } for lo, hi, contains, e in bins],
    }


def _r(values) -> list[float]:
    """Rounded to 3 decimals, as SAEDashboard writes them."""
    return [round(float(v), 3) for v in values]
