"""Plots a person would rather look at than read (matplotlib, written to PNG)."""

from __future__ import annotations

import numpy as np

from ..plotting import pyplot, save


def density_histogram(density: np.ndarray, path, title: str = "feature density", dead_threshold: float = 1e-5):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    d = np.asarray(density, dtype=float)
    ax.hist(np.log10(d + 1e-10), bins=60, color="#3b6ea8")
    ax.axvline(np.log10(dead_threshold), color="#b33", ls="--", lw=1, label=f"dead < {dead_threshold:g}")
    ax.set_xlabel("log10 firing frequency (dead features sit at -10)")
    ax.set_ylabel("features")
    ax.set_title(f"{title}\n{int((d < dead_threshold).sum())} of {len(d)} features below the dead threshold", fontsize=10)
    ax.legend(frameon=False)
    save(fig, path)


def training_curves(history: list[dict], path):
    plt = pyplot()
    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, key, label in zip(axes, ("l0", "explained_var", "dead"), ("L0", "explained variance", "dead features (window)")):
        ax.plot(steps, [h[key] for h in history], color="#3b6ea8")
        ax.set_xlabel("step")
        ax.set_title(label)
    save(fig, path)


def frontier(points: list[dict], path, x="l0", y="ce_recovered"):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([p[x] for p in points], [100 * p[y] for p in points], "o-", color="#3b6ea8")
    for p in points:
        ax.annotate(f"l1={p['l1_coeff']:g}", (p[x], 100 * p[y]), fontsize=7, textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("L0")
    ax.set_ylabel("% CE recovered")
    save(fig, path)


def zero_ablation_by_layer(rows: list[dict], path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.bar([r["layer"] for r in rows], [r["delta_ce_zero"] for r in rows], color="#3b6ea8")
    ax.set_xlabel("layer")
    ax.set_ylabel("ΔCE (nats)")
    ax.set_title("CE increase from zero-ablating each layer's hook_z", fontsize=10)
    ax.set_yscale("symlog", linthresh=1e-3)  # a layer whose ablation helps shows below zero
    save(fig, path)


def head_variance_explained(result: dict, path):
    """Bars: each head's share of a feature's activation variance (DFA by head), one group per threshold."""
    plt = pyplot()
    ts = result["thresholds"]
    n_heads = result["n_heads"]
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * n_heads * len(ts) + 2), 3.4))
    width = 0.8 / len(ts)
    for i, t in enumerate(ts):
        ax.bar(np.arange(n_heads) + i * width, t["head_fve"], width, label=f"act > {t['threshold']:g} (n={t['n_tokens']})")
    ax.set_xticks(np.arange(n_heads) + 0.4 - width / 2, [f"H{h}" for h in range(n_heads)])
    ax.axhline(0, color="#888", lw=0.6)
    ax.set_ylabel("fraction of variance explained")
    ax.set_title(f"L{result['layer']} feature {result['feature']}: DFA by head", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    save(fig, path)
