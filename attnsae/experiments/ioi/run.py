"""Run the IOI experiments on one model and its layers' SAEs: one IOIResult (ioi.json and the figures).

Parts (paper 4.3 and appendix K): prompts and the clean logit diff (always); "heads": S-inhibition and
name-mover heads found by heads.HEAD_RULE; "splice": figs. 14/15; "features": fig. 16a; "path": fig. 16b;
"noise": fig. 5 / table 4. Nothing here is specific to one model: layers and heads come from the
model's own head scores and the IOI head search, or from the caller.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ...models.hooks import head_name
from ...results import Result
from ..head_scores import head_scores, top_layers
from .heads import head_roles, s_inhibition_after
from .measure import clean_logit_diff, summarize
from .noising import noise_s2
from .plots import plot_ioi
from .prompts import abc_prompts, corruptions, encode, ioi_prompts, ioi_vocab
from .saes import feature_ablation, path_patching, saes_by_layer, splice_eval

PARTS = ("heads", "splice", "features", "path", "noise")
DEFINITIONS = {"logit_diff": "logit(IO) - logit(S) at END (the last prompt token)",
               "kl": "KL(clean || intervened) of the next-token distribution at END, nats",
               "recovered": "(LD_noised - LD_zero) / (LD_clean - LD_zero), LD_zero: those layers' hook_z "
                            "zero-ablated at S2"}


@dataclass
class IOIResult(Result):
    """ioi.json: the prompts and clean logit diff, then one entry per part that ran (None: not run)."""

    name: ClassVar[str] = "ioi"
    model: str
    dtype: str
    n_per_order: int
    n_abc: int
    n_names: int
    templates: list[str]
    examples: list[str]
    clean_logit_diff: dict
    accuracy: float
    sae_layers: list[int]
    k_s_inhibition: int = 4  # found S-inhibition heads the summary lists (and path patching used)
    heads: dict | None = None
    splice: dict | None = None
    feature_layers: list[int] | None = None
    features: dict | None = None
    path: dict | None = None
    noise: dict | None = None
    timing_s: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """As written since the first version: plain values, NaN where a head's effect was not measured."""
        out = {"model": self.model, "dtype": self.dtype, "n_per_order": self.n_per_order, "n_abc": self.n_abc,
               "n_names": self.n_names, "templates": self.templates, "examples": self.examples, "definitions": DEFINITIONS,
               "clean_logit_diff": self.clean_logit_diff, "accuracy": self.accuracy, "sae_layers": self.sae_layers}
        parts = {"heads": self.heads, "splice": self.splice, "feature_layers": self.feature_layers,
                 "features": self.features, "path": self.path, "noise": self.noise}
        return {**out, **{k: v for k, v in parts.items() if v is not None}, "timing_s": self.timing_s}

    def summary(self) -> str:
        c = self.clean_logit_diff
        lines = [f"clean logit diff {c['mean']:.3f} (ABBA {c['ABBA']:.3f}, BABA {c['BABA']:.3f}); IO > S on "
                 f"{self.accuracy:.0%} of {2 * self.n_per_order} prompts; {self.n_names} single-token names"]
        if self.heads is not None:
            lines.append("S-inhibition heads: " + _heads_str(self.heads, self.heads["s_inhibition"][:self.k_s_inhibition]))
            lines.append("name-mover heads:   " + _heads_str(self.heads, self.heads["name_movers"][:3]))
        if self.splice is not None:
            for r in self.splice["layers"]:
                lines.append(f"splice L{r['layer']}: logit diff {r['sae']['logit_diff']['mean']:.3f} KL {r['sae']['kl']:.4f} | "
                             f"mean ablation {r['mean_ablation']['logit_diff']['mean']:.3f} KL {r['mean_ablation']['kl']:.4f}")
            for r in self.splice["sections"]:
                if r["layers"]:
                    lines.append(f"splice {r['name']} {r['layers']}: logit diff {r['sae']['logit_diff']['mean']:.3f} "
                                 f"KL {r['sae']['kl']:.4f}" + (f" (no SAE for {r['missing']})" if r["missing"] else ""))
        for l, r in (self.features or {}).items():
            lines.append(f"L{l} features at S2 ({r['n_features_firing_at_s2']} fire; no-op check |Δ| <= "
                         f"{r['keep_error_max_abs_change']:.1e}): " + _table_str(r["table"]))
        for l, r in (self.path or {}).items():
            lines.append(f"L{l} path patching skipped: {r['skipped']}" if "skipped" in r else
                         f"L{l} path patching via {', '.join(r['heads'])}: " + _table_str(r["table"]))
        if self.noise is not None:
            z = self.noise
            lines.append(f"noising layers {z['layers']} at S2: clean {z['clean']['mean']:.3f}, zero-ablated "
                         f"{z['zero']['mean']:.3f}; recovered: "
                         + ", ".join(f"{k} {v['recovered']:.0%}" for k, v in z["corruptions"].items()))
        return "\n".join(lines)

    def plot(self, out: Path) -> list[Path]:
        return plot_ioi(self.to_json(), out)


def _heads_str(roles: dict, heads) -> str:
    if not heads:
        return "none found"
    e, a2, ai, d = (np.array(roles[k]) for k in ("effect", "attn_s2", "attn_io", "dla"))
    return ", ".join(f"{head_name(l, h)} (effect {e[l, h]:+.2f}, attn S2 {a2[l, h]:.2f} / IO {ai[l, h]:.2f}, DLA {d[l, h]:+.2f})"
                     for l, h in heads)


def _table_str(table: list[dict]) -> str:
    """The 6 largest effects of a feature table, then the error term's per order."""
    top = ", ".join(("err" if e["feature"] == "error_term" else f"F{e['feature']}") + f" {e['order']} {e['delta']:+.3f}"
                    for e in table[:6])
    error = " ".join(f"{e['order']} {e['delta']:+.3f}" for e in table if e["feature"] == "error_term")
    return f"{top}; error term {error}"


def parse_sections(specs, cfg) -> dict[str, list[int]]:
    """['5,6', ...] -> {'layers 5,6': [5, 6], ...}: cross-sections for fig. 15, checked against a ModelConfig."""
    sections = {}
    for spec in specs:
        try:
            layers = sorted({int(x) for x in spec.split(",")})
        except ValueError:
            raise ValueError(f"--cross-section {spec!r}: write layers separated by commas, e.g. 5,6") from None
        bad = [l for l in layers if not 0 <= l < cfg.n_layers]
        if bad:
            raise ValueError(f"--cross-section {spec}: layers {bad} out of range ({cfg.n_layers} layers)")
        sections[f"layers {spec}"] = layers
    return sections


def role_sections(head_scores: dict, roles: dict | None, k: int = 2) -> dict[str, list[int]]:
    """Cross-sections (fig. 15) from the model's own heads: the layers of its k strongest duplicate-token,
    previous-token and induction heads, and of the S-inhibition and name-mover heads found on IOI."""
    out = {f"{name} heads": top_layers(head_scores[key], k)
           for name, key in (("duplicate-token", "duplicate"), ("previous-token", "previous"), ("induction", "induction"))}
    if roles:
        out["S-inhibition heads"] = sorted({l for l, _ in roles["s_inhibition"][:4]})
        out["name-mover heads"] = sorted({l for l, _ in roles["name_movers"][:3]})
    return {k: v for k, v in out.items() if v}


def default_feature_layers(by_layer: dict, hs: dict | None) -> list[int]:
    """SAE layers holding one of the model's 2 strongest induction or 2 strongest duplicate-token heads (the paper
    studies GPT-2's L5/L6 induction and L3 duplicate-token layers); all SAE layers if none of those has one."""
    if not by_layer:
        return []
    roles = {l for key in ("induction", "duplicate") for l in top_layers(hs[key], 2)} if hs is not None else set()
    return sorted(roles & set(by_layer)) or list(by_layer)


@torch.no_grad()
def run_ioi(model, saes=(), n: int = 64, n_abc: int = 128, seed: int = 0, parts=PARTS, s_inhibition=None,
            k_s_inhibition: int = 4, noise_layers=None, sections=None, feature_layers=None, min_attn: float = 0.1,
            chunk: int = 256) -> IOIResult:
    """All requested parts. n: prompts per order (ABBA, BABA); n_abc: ABC prompts for the means; s_inhibition:
    [(layer, head)] to use instead of the found ones; noise_layers: default the layers of the 2 strongest induction
    heads; sections: {name: layers} for fig. 15 (default role_sections; see parse_sections); feature_layers: SAE
    layers for the feature parts (default: default_feature_layers)."""
    bad = set(parts) - set(PARTS)
    if bad:
        raise ValueError(f"unknown parts {sorted(bad)}; choose from {PARTS}")
    by_layer = saes_by_layer(model, saes)
    if feature_layers is not None:
        missing = [l for l in feature_layers if l not in by_layer]
        if missing:
            raise ValueError(f"--feature-layers {missing} have no SAE (SAEs given for layers {list(by_layer)})")
    timing, t0 = {}, time.time()
    vocab = ioi_vocab(model)
    prompts = ioi_prompts(vocab, n, seed)
    batch = encode(vocab, prompts)
    abc = encode(vocab, abc_prompts(vocab, max(n_abc, len(vocab.templates)), seed + 1))
    ld = clean_logit_diff(model, batch)
    res = IOIResult(model=model.cfg.name, dtype=str(model.dtype).replace("torch.", ""), n_per_order=n, n_abc=len(abc),
                    n_names=len(vocab.names), templates=list(vocab.templates), examples=batch.text[:4],
                    clean_logit_diff=summarize(ld, batch, vocab), accuracy=float((ld > 0).float().mean()),
                    sae_layers=list(by_layer), k_s_inhibition=k_s_inhibition)
    timing["prompts"] = time.time() - t0
    want_roles = "heads" in parts or ("path" in parts and s_inhibition is None) or ("splice" in parts and sections is None)
    hs = None
    if ("noise" in parts and noise_layers is None) or ("splice" in parts and sections is None) \
            or ({"features", "path"} & set(parts) and feature_layers is None):
        hs = head_scores(model, n=min(50, (model.cfg.n_ctx - 1) // 2))  # short-context models too
    if want_roles:
        t = time.time()
        res.heads = head_roles(model, batch, abc, min_attn=min_attn, chunk=chunk)
        timing["heads"] = time.time() - t
    if "splice" in parts and by_layer:
        t = time.time()
        secs = sections if sections is not None else {**role_sections(hs, res.heads), "all SAE layers": list(by_layer)}
        res.splice = splice_eval(model, batch, abc, by_layer, secs)
        timing["splice"] = time.time() - t
    flayers = default_feature_layers(by_layer, hs) if feature_layers is None else list(feature_layers)
    if {"features", "path"} & set(parts):
        res.feature_layers = flayers
    if "features" in parts:
        res.features = {}
        for l in flayers:
            t = time.time()
            r = feature_ablation(model, batch, by_layer[l], chunk=chunk)
            r["seconds"] = time.time() - t
            timing[f"features L{l}"] = r["seconds"]
            res.features[str(l)] = r
    if "path" in parts:
        res.path = {}
        for l in flayers:
            heads = [h for h in s_inhibition if h[0] > l] if s_inhibition is not None else \
                s_inhibition_after(res.heads, l, k_s_inhibition)
            if not heads:
                res.path[str(l)] = {"skipped": f"no S-inhibition head after layer {l}"}
                continue
            t = time.time()
            r = path_patching(model, batch, by_layer[l], heads, chunk=chunk)
            r["seconds"] = time.time() - t
            timing[f"path L{l}"] = r["seconds"]
            res.path[str(l)] = r
    if "noise" in parts:
        t = time.time()
        layers = list(noise_layers) if noise_layers is not None else top_layers(hs["induction"], 2)
        res.noise = noise_s2(model, batch, corruptions(vocab, prompts, seed + 2), layers)
        timing["noise"] = time.time() - t
    timing["total"] = time.time() - t0
    res.timing_s = {k: round(v, 1) for k, v in timing.items()}
    return res
