"""The IOI figures: head roles, splicing (figs. 14, 15), features at S2 (fig. 16) and noising (fig. 5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...models.hooks import head_name
from ...plotting import pyplot, save


def plot_ioi(res: dict, out: Path) -> list[Path]:
    """Every figure of an ioi.json's parts into `out`; returns their paths."""
    name, paths = res["model"], []

    def save(path, draw, *args):
        draw(path, *args)
        paths.append(path)

    if "heads" in res:
        save(out / "heads.png", plot_heads, res["heads"], name)
    if "splice" in res:
        clean = res["splice"]["clean"]["mean"]
        rows = res["splice"]["layers"]
        save(out / "splice_layers.png", plot_splice, [f"L{r['layer']}" for r in rows], rows, clean,
             f"{name}: each layer's attention SAE spliced in (fig. 14)")
        secs = [r for r in res["splice"]["sections"] if r["layers"]]
        if secs:
            save(out / "splice_sections.png", plot_splice, [f"{r['name']}\nL{_layers_str(r['layers'])}" for r in secs], secs,
                 clean, f"{name}: SAEs spliced into several layers at once (fig. 15)")
    for key, what in (("features", "zero-ablating SAE features at S2 (error term kept)"),
                      ("path", "path patching SAE features out of the S-inhibition heads' values at S2")):
        for layer, r in res.get(key, {}).items():
            if "table" in r:
                save(out / f"{key}_L{layer}.png", plot_feature_table, r["table"], f"{name} L{layer}: {what}"
                     + (f"\nheads {', '.join(r['heads'])}" if "heads" in r else ""))
    if "noise" in res:
        save(out / "noising.png", plot_noising, res["noise"], name)
    return paths


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


def plot_splice(path, labels, rows, clean: float, title: str) -> None:
    plt = pyplot()
    x = np.arange(len(labels))
    fig, axes = plt.subplots(2, 1, figsize=(max(7, 0.35 * len(labels) + 3), 6.5), sharex=True)
    for ax, metric in zip(axes, ("logit_diff", "kl"), strict=True):
        for i, (kind, color) in enumerate((("sae", "#3b6ea8"), ("mean_ablation", "#d08c2c"))):
            vals = [r[kind][metric]["mean"] if metric == "logit_diff" else r[kind][metric] for r in rows]
            ax.bar(x + (i - 0.5) * 0.4, vals, 0.4, color=color, label="with SAE" if kind == "sae" else "mean ablation (ABC)")
        ax.set_ylabel("avg logit diff" if metric == "logit_diff" else "avg KL(clean || run), nats")
    axes[1].set_xticks(x, labels, fontsize=7, rotation=0 if max(map(len, labels)) < 5 else 30,
                       ha="center" if max(map(len, labels)) < 5 else "right")
    axes[0].axhline(clean, color="#333", ls="--", lw=1, label=f"clean {clean:.2f}")
    axes[0].legend(frameon=False, fontsize=7, ncol=3)
    fig.suptitle(title, fontsize=10)
    save(fig, path)


def plot_feature_table(path, table: list[dict], title: str, top: int = 15) -> None:
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
    save(fig, path)


def plot_noising(path, r: dict, name: str) -> None:
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
    save(fig, path)


def plot_heads(path, roles: dict, name: str) -> None:
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
        axes[0].annotate(head_name(l, h), (a2[l, h] - ai[l, h], e[l, h]), fontsize=7, color="#c0392b")
    for (l, h) in roles["name_movers"][:3]:
        axes[1].scatter(ai[l, h], d[l, h], s=30, color="#3b6ea8")
        axes[1].annotate(head_name(l, h), (ai[l, h], d[l, h]), fontsize=7, color="#3b6ea8")
    axes[0].set_title("S-inhibition heads (red)", fontsize=9)
    axes[1].set_title("name movers (blue)", fontsize=9)
    fig.suptitle(f"{name}: IOI head roles at END", fontsize=10)
    save(fig, path)
