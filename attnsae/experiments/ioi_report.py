"""Run the IOI experiments on one model and its layers' SAEs; write ioi.json and the figures.

Parts (paper 4.3 and appendix K): prompts and the clean logit diff (always); "heads": S-inhibition and
name-mover heads found by ioi.HEAD_RULE; "splice": figs. 14/15; "features": fig. 16a; "path": fig. 16b;
"noise": fig. 5 / table 4. Nothing here is specific to one model: layers and heads come from the
model's own head scores and the IOI head search, or from the caller.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..plotting import pyplot
from . import ioi
from .head_scores import top_layers
from .ioi_saes import feature_ablation, path_patching, saes_by_layer, splice_eval

PARTS = ("heads", "splice", "features", "path", "noise")


def role_sections(head_scores: dict, roles: dict | None, k: int = 2) -> dict[str, list[int]]:
    """Cross-sections (fig. 15) from the model's own heads: the layers of its k strongest duplicate-token,
    previous-token and induction heads, and of the S-inhibition and name-mover heads found on IOI."""
    out = {f"{name} heads": top_layers(head_scores[key], k)
           for name, key in (("duplicate-token", "duplicate"), ("previous-token", "previous"), ("induction", "induction"))}
    if roles:
        out["S-inhibition heads"] = sorted({l for l, _ in roles["s_inhibition"][:4]})
        out["name-mover heads"] = sorted({l for l, _ in roles["name_movers"][:3]})
    return {k: v for k, v in out.items() if v}


@torch.no_grad()
def run_ioi(model, saes=(), out=None, n: int = 64, n_abc: int = 128, seed: int = 0, parts=PARTS,
            s_inhibition=None, k_s_inhibition: int = 4, noise_layers=None, sections=None, feature_layers=None,
            min_attn: float = 0.1, chunk: int = 256, log=print) -> dict:
    """All requested parts; returns the result dict (also written to out/ioi.json with figures when `out`).
    n: prompts per order (ABBA, BABA); n_abc: ABC prompts for the means; s_inhibition: [(layer, head)] to use
    instead of the found ones; noise_layers: default the layers of the 2 strongest induction heads;
    sections: {name: layers} for fig. 15 (default role_sections); feature_layers: SAE layers for the
    feature parts (default: default_feature_layers)."""
    bad = set(parts) - set(PARTS)
    if bad:
        raise ValueError(f"unknown parts {sorted(bad)}; choose from {PARTS}")
    by_layer = saes_by_layer(model, saes)
    if feature_layers is not None:
        missing = [l for l in feature_layers if l not in by_layer]
        if missing:
            raise ValueError(f"--feature-layers {missing} have no SAE (SAEs given for layers {list(by_layer)})")
    timing, t0 = {}, time.time()
    vocab = ioi.ioi_vocab(model)
    prompts = ioi.ioi_prompts(vocab, n, seed)
    batch = ioi.encode(vocab, prompts)
    abc = ioi.encode(vocab, ioi.abc_prompts(vocab, max(n_abc, len(vocab.templates)), seed + 1))
    ld = ioi.clean_logit_diff(model, batch)
    res = {"model": model.cfg.name, "dtype": str(model.dtype).replace("torch.", ""), "n_per_order": n, "n_abc": len(abc),
           "n_names": len(vocab.names), "templates": list(vocab.templates), "examples": batch.text[:4],
           "definitions": {"logit_diff": "logit(IO) - logit(S) at END (the last prompt token)",
                           "kl": "KL(clean || intervened) of the next-token distribution at END, nats",
                           "recovered": "(LD_noised - LD_zero) / (LD_clean - LD_zero), LD_zero: those layers' hook_z "
                                        "zero-ablated at S2"},
           "clean_logit_diff": ioi.summarize(ld, batch, vocab),
           "accuracy": float((ld > 0).float().mean()), "sae_layers": list(by_layer)}
    c = res["clean_logit_diff"]
    log(f"clean logit diff {c['mean']:.3f} (ABBA {c['ABBA']:.3f}, BABA {c['BABA']:.3f}); IO > S on {res['accuracy']:.0%} "
        f"of {len(batch)} prompts; {len(vocab.names)} single-token names")
    timing["prompts"] = time.time() - t0
    want_roles = "heads" in parts or ("path" in parts and s_inhibition is None) or ("splice" in parts and sections is None)
    hs = None
    if ("noise" in parts and noise_layers is None) or ("splice" in parts and sections is None) \
            or ({"features", "path"} & set(parts) and feature_layers is None):
        from .head_scores import head_scores

        hs = head_scores(model, n=min(50, (model.cfg.n_ctx - 1) // 2))  # short-context models too
    roles = None
    if want_roles:
        t = time.time()
        roles = ioi.head_roles(model, batch, abc, min_attn=min_attn, chunk=chunk)
        res["heads"] = roles
        timing["heads"] = time.time() - t
        log("S-inhibition heads: " + _heads_str(roles, roles["s_inhibition"][:k_s_inhibition]))
        log("name-mover heads:   " + _heads_str(roles, roles["name_movers"][:3]))
    if "splice" in parts and by_layer:
        t = time.time()
        secs = sections if sections is not None else {**role_sections(hs, roles), "all SAE layers": list(by_layer)}
        res["splice"] = splice_eval(model, batch, abc, by_layer, secs)
        timing["splice"] = time.time() - t
        for r in res["splice"]["layers"]:
            log(f"splice L{r['layer']}: logit diff {r['sae']['logit_diff']['mean']:.3f} KL {r['sae']['kl']:.4f} | "
                f"mean ablation {r['mean_ablation']['logit_diff']['mean']:.3f} KL {r['mean_ablation']['kl']:.4f}")
        for r in res["splice"]["sections"]:
            if r["layers"]:
                log(f"splice {r['name']} {r['layers']}: logit diff {r['sae']['logit_diff']['mean']:.3f} KL {r['sae']['kl']:.4f}"
                    + (f" (no SAE for {r['missing']})" if r["missing"] else ""))
    flayers = default_feature_layers(by_layer, hs) if feature_layers is None else list(feature_layers)
    if {"features", "path"} & set(parts):
        res["feature_layers"] = flayers
    if "features" in parts:
        res["features"] = {}
        for l in flayers:
            t = time.time()
            r = feature_ablation(model, batch, by_layer[l], chunk=chunk)
            r["seconds"] = time.time() - t
            timing[f"features L{l}"] = r["seconds"]
            res["features"][str(l)] = r
            log(f"L{l} features at S2 ({r['n_features_firing_at_s2']} fire; no-op check |Δ| <= {r['keep_error_max_abs_change']:.1e}): "
                + ", ".join(_entry_str(e) for e in r["table"][:6]) + f"; error term {_error_str(r['table'])}")
    if "path" in parts:
        res["path"] = {}
        for l in flayers:
            heads = [h for h in s_inhibition if h[0] > l] if s_inhibition is not None else \
                ioi.s_inhibition_after(roles, l, k_s_inhibition)
            if not heads:
                res["path"][str(l)] = {"skipped": f"no S-inhibition head after layer {l}"}
                log(f"L{l} path patching skipped: no S-inhibition head after layer {l}")
                continue
            t = time.time()
            r = path_patching(model, batch, by_layer[l], heads, chunk=chunk)
            r["seconds"] = time.time() - t
            timing[f"path L{l}"] = r["seconds"]
            res["path"][str(l)] = r
            log(f"L{l} path patching via {', '.join(r['heads'])}: " + ", ".join(_entry_str(e) for e in r["table"][:6])
                + f"; error term {_error_str(r['table'])}")
    if "noise" in parts:
        t = time.time()
        layers = list(noise_layers) if noise_layers is not None else top_layers(hs["induction"], 2)
        res["noise"] = ioi.noise_s2(model, batch, ioi.corruptions(vocab, prompts, seed + 2), layers)
        timing["noise"] = time.time() - t
        z = res["noise"]
        log(f"noising layers {layers} at S2: clean {z['clean']['mean']:.3f}, zero-ablated {z['zero']['mean']:.3f}; recovered: "
            + ", ".join(f"{k} {v['recovered']:.0%}" for k, v in z["corruptions"].items()))
    timing["total"] = time.time() - t0
    res["timing_s"] = {k: round(v, 1) for k, v in timing.items()}
    if out is not None:
        write_ioi(res, out)
        log(f"wrote {Path(out) / 'ioi.json'} and figures")
    return res


def default_feature_layers(by_layer: dict, hs: dict | None) -> list[int]:
    """SAE layers holding one of the model's 2 strongest induction or 2 strongest duplicate-token heads (the paper
    studies GPT-2's L5/L6 induction and L3 duplicate-token layers); all SAE layers if none of those has one."""
    if not by_layer:
        return []
    roles = {l for key in ("induction", "duplicate") for l in top_layers(hs[key], 2)} if hs is not None else set()
    return sorted(roles & set(by_layer)) or list(by_layer)


def _heads_str(roles, heads) -> str:
    if not heads:
        return "none found"
    e, a2, ai, d = (np.array(roles[k]) for k in ("effect", "attn_s2", "attn_io", "dla"))
    return ", ".join(f"{l}.{h} (effect {e[l, h]:+.2f}, attn S2 {a2[l, h]:.2f} / IO {ai[l, h]:.2f}, DLA {d[l, h]:+.2f})"
                     for l, h in heads)


def _entry_str(e) -> str:
    f = "err" if e["feature"] == "error_term" else f"F{e['feature']}"
    return f"{f} {e['order']} {e['delta']:+.3f}"


def _error_str(table) -> str:
    return " ".join(f"{e['order']} {e['delta']:+.3f}" for e in table if e["feature"] == "error_term")


# ---- output -------------------------------------------------------------------------------------

def write_ioi(res: dict, out) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ioi.json").write_text(json.dumps(res, indent=1))
    name = res["model"]
    if "heads" in res:
        plot_heads(res["heads"], out / "heads.png", name)
    if "splice" in res:
        clean = res["splice"]["clean"]["mean"]
        rows = res["splice"]["layers"]
        plot_splice([f"L{r['layer']}" for r in rows], rows, clean, out / "splice_layers.png",
                    f"{name}: each layer's attention SAE spliced in (fig. 14)")
        secs = [r for r in res["splice"]["sections"] if r["layers"]]
        if secs:
            plot_splice([f"{r['name']}\nL{_layers_str(r['layers'])}" for r in secs], secs, clean, out / "splice_sections.png",
                        f"{name}: SAEs spliced into several layers at once (fig. 15)")
    for key, what in (("features", "zero-ablating SAE features at S2 (error term kept)"),
                      ("path", "path patching SAE features out of the S-inhibition heads' values at S2")):
        for layer, r in res.get(key, {}).items():
            if "table" in r:
                plot_feature_table(r["table"], out / f"{key}_L{layer}.png", f"{name} L{layer}: {what}"
                                   + (f"\nheads {', '.join(r['heads'])}" if "heads" in r else ""))
    if "noise" in res:
        plot_noising(res["noise"], out / "noising.png", name)


def _layers_str(layers) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'"""
    out, run = [], []
    for l in sorted(layers):
        if run and l != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(l)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def plot_splice(labels, rows, clean: float, path, title: str) -> None:
    plt = pyplot()
    x = np.arange(len(labels))
    fig, axes = plt.subplots(2, 1, figsize=(max(7, 0.35 * len(labels) + 3), 6.5), sharex=True)
    for ax, metric in zip(axes, ("logit_diff", "kl")):
        for i, (kind, color) in enumerate((("sae", "#3b6ea8"), ("mean_ablation", "#d08c2c"))):
            vals = [r[kind][metric]["mean"] if metric == "logit_diff" else r[kind][metric] for r in rows]
            ax.bar(x + (i - 0.5) * 0.4, vals, 0.4, color=color, label="with SAE" if kind == "sae" else "mean ablation (ABC)")
        ax.set_ylabel("avg logit diff" if metric == "logit_diff" else "avg KL(clean || run), nats")
    axes[1].set_xticks(x, labels, fontsize=7, rotation=0 if max(map(len, labels)) < 5 else 30,
                       ha="center" if max(map(len, labels)) < 5 else "right")
    axes[0].axhline(clean, color="#333", ls="--", lw=1, label=f"clean {clean:.2f}")
    axes[0].legend(frameon=False, fontsize=7, ncol=3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_feature_table(table: list[dict], path, title: str, top: int = 15) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.2, 1]})
    shown = table[:top]
    labels = [("error term" if e["feature"] == "error_term" else f"F{e['feature']}") + f" {e['order']}" for e in shown]
    colors = ["#888" if e["feature"] == "error_term" else ("#3b6ea8" if e["order"] == "ABBA" else "#c0392b") for e in shown]
    axes[0].barh(np.arange(len(shown))[::-1], [e["delta"] for e in shown], color=colors)
    axes[0].set_yticks(np.arange(len(shown))[::-1], labels, fontsize=7)
    axes[0].set_xlabel("Δ logit diff (avg over prompts of that order)")
    axes[0].set_title(f"top {len(shown)} (blue ABBA, red BABA, grey error)", fontsize=8)
    for order, color in (("ABBA", "#3b6ea8"), ("BABA", "#c0392b")):
        d = [e["delta"] for e in table if e["order"] == order and e["feature"] != "error_term"]
        if d:
            axes[1].hist(d, bins=40, color=color, alpha=0.6, label=order)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("Δ logit diff")
    axes[1].set_ylabel("features")
    axes[1].legend(frameon=False, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_noising(r: dict, path, name: str) -> None:
    plt = pyplot()
    keys = list(r["corruptions"])
    vals = [r["clean"]["mean"], r["zero"]["mean"]] + [r["corruptions"][k]["noised"]["mean"] for k in keys]
    labels = ["clean", "zero abl."] + keys
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 1), 3.6))
    ax.bar(range(len(vals)), vals, color=["#333", "#999"] + ["#3b6ea8"] * len(keys))
    for i, k in enumerate(keys):
        ax.text(i + 2, vals[i + 2], f"{r['corruptions'][k]['recovered']:.0%}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(vals)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("avg logit diff")
    ax.set_title(f"{name}: noising layers {r['layers']} hook_z at S2 (labels: recovered vs zero ablation)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_heads(roles: dict, path, name: str) -> None:
    plt = pyplot()
    e, a2, ai, d = (np.array(roles[k], dtype=float) for k in ("effect", "attn_s2", "attn_io", "dla"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    m = np.isfinite(e)
    axes[0].scatter((a2 - ai)[m], e[m], s=12, color="#999")
    axes[0].set_xlabel("attention END→S2 minus END→IO")
    axes[0].set_ylabel("Δ logit diff, head mean-ablated at END")
    axes[1].scatter(ai.ravel(), d.ravel(), s=12, color="#999")
    axes[1].set_xlabel("attention END→IO")
    axes[1].set_ylabel("direct logit attribution to IO − S")
    for (l, h) in roles["s_inhibition"][:4]:
        axes[0].scatter(a2[l, h] - ai[l, h], e[l, h], s=30, color="#c0392b")
        axes[0].annotate(f"{l}.{h}", (a2[l, h] - ai[l, h], e[l, h]), fontsize=7, color="#c0392b")
    for (l, h) in roles["name_movers"][:3]:
        axes[1].scatter(ai[l, h], d[l, h], s=30, color="#3b6ea8")
        axes[1].annotate(f"{l}.{h}", (ai[l, h], d[l, h]), fontsize=7, color="#3b6ea8")
    axes[0].set_title("S-inhibition heads (red)", fontsize=9)
    axes[1].set_title("name movers (blue)", fontsize=9)
    fig.suptitle(f"{name}: IOI head roles at END", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
