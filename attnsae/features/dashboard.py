"""Feature dashboards: the data a person needs to judge one feature, as a JSON-able dict.

Built from the one-pass FeatureStats plus a forward over only the windows shown (top-k windows
and a few random examples per activation-quantile group), which also gives each shown
activation's DFA by head and by source position. The dict layout is the one viz.html renders
(viz.dashboard writes the pages and a Neuronpedia-like export).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from tqdm.auto import tqdm

from ..attribution.dfa import attention_parts_many, dfa_by_head, dfa_by_source
from ..attribution.heads import head_attribution, layer_of
from ..attribution.logit_path import logit_effects
from ..models.text import TokenText
from .stats import HIST_EDGES, FeatureStats

NEURON_ALIGNMENT_ROWS = 3  # SAEDashboard's feature tables show three rows


def _histogram(stats: FeatureStats, f: int) -> dict:
    counts = stats.hist[f]
    nz = counts.nonzero().flatten()
    if len(nz) == 0:
        return {"edges": [], "counts": [], "log_x": True}
    lo, hi = int(nz[0]), int(nz[-1]) + 1
    return {"edges": HIST_EDGES[lo:hi + 1].tolist(), "counts": counts[lo:hi].tolist(), "log_x": True}


def choose_examples(stats: FeatureStats, f: int, n_top: int = 20, n_groups: int = 10, per_group: int = 3, seed: int = 0):
    """(top [(window, pos, act)], groups [{label, lo, hi, examples}]) for feature f; groups are equal-count
    activation quantiles of a uniform sample of its activating tokens, highest first."""
    ok = stats.top_act[f] > 0
    top = list(zip(stats.top_window[f][ok].tolist(), stats.top_pos[f][ok].tolist(), stats.top_act[f][ok].tolist()))[:n_top]
    have = stats.sample_window[f] >= 0
    acts = stats.sample_act[f][have]
    order = acts.argsort(descending=True)
    sample = list(zip(stats.sample_window[f][have][order].tolist(), stats.sample_pos[f][have][order].tolist(),
                      acts[order].tolist()))
    rng = np.random.default_rng([seed, f])
    groups = []
    chunks = [c for c in np.array_split(np.arange(len(sample)), min(n_groups, len(sample))) if len(c)]
    for g, chunk in enumerate(chunks):
        pick = sorted(rng.choice(chunk, size=min(per_group, len(chunk)), replace=False).tolist())
        hi, lo = sample[chunk[0]][2], sample[chunk[-1]][2]
        groups.append({"label": f"Q{len(chunks) - g}" + (" (highest)" if g == 0 else " (lowest)" if g == len(chunks) - 1 else ""),
                       "lo": lo, "hi": hi, "n_sampled": len(chunk), "examples": [sample[i] for i in pick]})
    return top, groups


def build_dashboards(source, sae, stats: FeatureStats, features, **kw) -> list[dict]:
    """One dashboard dict per feature (see viz.html for the layout); `stats` are the SAE's over `source`,
    whose model runs the windows shown. `kw`: build_dashboards_many's options."""
    return build_dashboards_many(source, [(sae, stats, features)], **kw)[0]


def build_dashboards_many(source, jobs, *, n_top: int = 20, per_group: int = 3, before: int = 32, after: int = 4,
                          n_sources: int = 5, batch_size: int = 16, seed: int = 0, progress: bool = True) -> list[list[dict]]:
    """`build_dashboards` for each (sae, stats, features) of `jobs` (SAEs of any layers of source's model): the
    windows any of them shows run once, in one forward that keeps every layer's attention (instead of a forward
    per SAE)."""
    model, windows = source.model, source.windows
    jobs = [(sae, stats, [int(f) for f in features]) for sae, stats, features in jobs]
    text = TokenText(model.tokenizer)
    chosen = [{f: choose_examples(stats, f, n_top, per_group=per_group, seed=seed) for f in features}
              for _, stats, features in jobs]

    # every shown (feature, window, pos) of each job, by window; a job shows a window up to its last shown position
    # plus `after` (its own end, whatever other jobs show), and the forward runs to the furthest of those ends
    wanted = defaultdict(lambda: defaultdict(list))
    for i, job_chosen in enumerate(chosen):
        for f, (top, groups) in job_chosen.items():
            for w, p, _ in top + [e for g in groups for e in g["examples"]]:
                wanted[w][i].append((f, p))
    ctx = windows.shape[1]
    ends = {w: {i: min(ctx, max(p for _, p in fp) + after + 1) for i, fp in by_job.items()} for w, by_job in wanted.items()}
    shown = [{} for _ in jobs]
    order = sorted(wanted, key=lambda w: max(ends[w].values()))
    layers = sorted({layer_of(sae) for sae, _, _ in jobs})
    with torch.no_grad():
        for b in tqdm(range(0, len(order), batch_size), desc="dashboard examples", disable=not progress):
            ws = order[b:b + batch_size]
            tokens = torch.from_numpy(np.asarray(windows[ws, :max(max(ends[w].values()) for w in ws)], dtype=np.int64))
            parts = attention_parts_many(model, tokens, layers)
            for i, (sae, _, _) in enumerate(jobs):
                if not any(i in wanted[w] for w in ws):
                    continue
                layer_parts = parts[layer_of(sae)]
                acts = sae.encode(layer_parts["z"].flatten(2).float())
                acts[:, :sae.cfg.first_pos] = 0
                for j, w in enumerate(ws):
                    for f, p in wanted[w].get(i, ()):
                        if (f, w, p) not in shown[i]:
                            shown[i][f, w, p] = _example(sae, layer_parts, acts, tokens, j, w, f, p, ends[w][i], before,
                                                         n_sources, text)
    return [_dashboards(source, sae, stats, features, chosen[i], shown[i], text) for i, (sae, stats, features) in enumerate(jobs)]


def _dashboards(source, sae, stats: FeatureStats, features: list[int], chosen: dict, shown: dict, text) -> list[dict]:
    model, windows = source.model, source.windows
    layer, n_heads = layer_of(sae), model.cfg.n_heads
    attribution = head_attribution(sae, n_heads)
    path, logits = logit_effects(model, sae, features)
    dec = sae.W_dec.detach().float()
    out = []
    for f, lg in zip(features, logits):
        top, groups = chosen[f]
        row = dec[f]
        strongest = row.abs().topk(min(NEURON_ALIGNMENT_ROWS, len(row))).indices
        sampled = sum(g["n_sampled"] for g in groups) or 1
        out.append({
            "model": model.cfg.name, "model_dtype": str(model.dtype).removeprefix("torch."), "hook": sae.cfg.hook_name,
            "layer": layer, "feature": f, "d_sae": sae.d_sae,
            "n_heads": n_heads, "density": float(stats.density[f]), "n_tokens": stats.n_tokens,
            "n_prompts": int(len(windows)), "ctx": int(windows.shape[1]), "dataset": sae.cfg.dataset_path,
            "max_act": float(stats.act_max[f]), "mean_act": float(stats.mean_act[f]),
            "head_attribution": attribution[f].tolist(),
            "head_fve": None if torch.isnan(stats.head_fve[f]).any() else stats.head_fve[f].tolist(),
            "logit_effect": {"convention": path,
                             "top": [[s, float(v)] for s, v in zip(text(lg["top"][0]), lg["top"][1])],
                             "bottom": [[s, float(v)] for s, v in zip(text(lg["bottom"][0]), lg["bottom"][1])]},
            "logit_histogram": lg["hist"],
            # the input dimensions (of hook_z, head-major) its decoder row writes most to: SAEDashboard's neuron alignment
            "decoder_alignment": {"indices": strongest.tolist(), "values": row[strongest].tolist(),
                                  "l1": (row[strongest].abs() / row.abs().sum().clamp_min(1e-12)).tolist()},
            "histogram": _histogram(stats, f),
            "top_examples": [shown[f, w, p] for w, p, _ in top],
            "quantile_groups": [{**{k: g[k] for k in ("label", "lo", "hi", "n_sampled")}, "contains": g["n_sampled"] / sampled,
                                 "examples": [shown[f, w, p] for w, p, _ in g["examples"]]} for g in groups],
        })
    return out


def _example(sae, parts, acts, tokens, j, w, f, p, end, before, n_sources, text) -> dict:
    by_head, bias = dfa_by_head(sae, parts["z"][j, p], [f])  # [1, H]
    src = dfa_by_source(sae, parts["pattern"][j, :, p:p + 1, :end], parts["v"][j, :end], [f])[0, 0]  # [H, src]
    total = src.sum(0)
    top_src = total[:p + 1].argsort(descending=True)[:n_sources].tolist()  # causal: sources at or before p
    start = max(0, p - before)
    # keep strong sources in view, except BOS-like positions the SAE never reads (attention sinks)
    strong = [s for s in top_src if s >= sae.cfg.first_pos and total[s] > 0.1 * max(float(total.max()), 1e-9)]
    start = min([start] + strong)
    return {
        "window": int(w), "pos": p - start, "act": float(acts[j, p, f]),
        "tokens": text(tokens[j, start:end]), "acts": acts[j, start:end, f].tolist(),
        "dfa_source": [{"pos": s - start, "value": float(total[s]), "by_head": src[:, s].tolist()}
                       for s in top_src if s >= start],
        "dfa_values": total[start:end].tolist(),  # every shown source position, summed over heads
        "dfa_head": by_head[0].tolist(), "dfa_bias": float(bias[0]),
    }
