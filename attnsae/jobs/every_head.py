"""The every-head study in one command: an SAE on every layer's hook_z, Table 1 of the paper for this
model, every head's top features (ranked by DFA variance share or by weight-based attribution, both shown,
with how well the two rankings agree), and the heads' polysemanticity, reachable from one index page.

    out/store/, out/L{l}/sae     one harvest of every layer, one SAE per layer (jobs.layers)
    out/L{l}/eval.json           that layer's fidelity and sparsity on held-out text (reused when there)
    out/table1.json, .md         per layer: L0, % CE recovered with ΔCE beside it, KL vs zero/mean ablation, EV, dead
    out/heads/index.html         every head's top features with dashboards (viz.report)
    out/polysemanticity.*        each head's top features grouped into families (experiments.polysemanticity)
    out/index.html               all of it, from one page
Every stage is skipped when its output exists, so a killed study resumes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..attribution.heads import head_attribution, ranking_agreement
from ..data import ActivationStore, load_windows
from ..evals import activation_batches, fidelity, sparsity
from ..experiments.polysemanticity import polysemanticity
from ..features.source import ActivationSource
from ..features.stats import cached_stats
from ..models import load_model
from ..results import write
from ..sae import load_sae
from ..viz.html import render_study, write_html
from ..viz.report import head_report
from .layers import LayersConfig, run_layers


@dataclass
class EveryHeadConfig:
    layers: LayersConfig = field(default_factory=lambda: LayersConfig(out="runs/every_head"))
    eval_windows: int = 16  # held-out windows for CE / KL per layer (the per-layer ΔCE table uses 16)
    # held-out windows for L0, EV and dead counts: dead = fires on < 1e-5 of them, so at least 100,000 inputs
    # (800 windows of ctx 128 = 101,600) for "dead" to mean more than "never seen firing"
    sparsity_windows: int = 800
    report_windows: int | None = 400  # store windows for the per-head report's statistics (None: all)
    k: int = 10  # top features per head
    rank_by: str = "dfa"  # the every-head study ranks a head's features by DFA variance share
    seed: int = 0


def evaluate_layer(model, sae, held, cfg: EveryHeadConfig, path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    sae = sae.to(model.device)
    sp, _ = sparsity(sae, activation_batches(model, sae, held[: cfg.sparsity_windows]), progress=False)
    fid = fidelity(model, sae, held[: cfg.eval_windows], progress=False)
    row = {"layer": sae.cfg.layer, "d_sae": sae.d_sae, **sp.to_dict(), **fid.to_dict()}
    path.write_text(json.dumps(row, indent=1))
    return row


def table1_markdown(rows: list[dict]) -> str:
    lines = ["| layer | d_sae | L0 | % CE rec. | ΔCE SAE | ΔCE zero | KL SAE | KL zero | KL mean | EV | dead |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['layer']} | {r['d_sae']} | {r['l0']:.1f} | {100 * r['ce_recovered']:.1f}% | {r['delta_ce_sae']:+.4f} | "
              f"{r['delta_ce_zero']:+.4f} | {r['kl_sae']:.4f} | {r['kl_zero']:.4f} | {r['kl_mean']:.4f} | "
              f"{r['explained_variance']:.3f} | {r['n_dead']} ({100 * r['n_dead'] / r['d_sae']:.1f}%) |" for r in rows]
    return "\n".join(lines) + "\n"


def run_every_head(cfg: EveryHeadConfig, progress: bool = True) -> Path:
    out = Path(cfg.layers.out)
    sae_dirs = run_layers(cfg.layers, progress)
    model = load_model(cfg.layers.model, dtype="float32", device=cfg.layers.device)
    saes = [load_sae(sae_dirs[l]) for l in sorted(sae_dirs)]
    _, held = load_windows(model, cfg.layers.windows)

    rows = [evaluate_layer(model, sae, held, cfg, out / f"L{sae.cfg.layer}" / "eval.json") for sae in saes]
    (out / "table1.json").write_text(json.dumps(rows, indent=1))
    (out / "table1.md").write_text(table1_markdown(rows))

    for sae in saes:
        sae.cpu()  # statistics read the store on the CPU
    store = ActivationStore(out / "store", verify=False)
    n = store.n_windows if cfg.report_windows is None else min(store.n_windows, cfg.report_windows)
    model.to(torch.bfloat16)  # statistics and dashboards: bf16 is 2x faster here; CE / KL above were fp32
    source = ActivationSource.from_store(model, store, np.arange(n))
    if not (out / "heads" / "report.json").exists():
        head_report(source, saes, out / "heads", k=cfg.k, rank_by=cfg.rank_by, seed=cfg.seed, progress=progress)
    stats = cached_stats(source, saes, out / "heads" / "stats")

    agreement = []
    for sae, st in zip(saes, stats):
        a = ranking_agreement(head_attribution(sae, model.cfg.n_heads), st.head_fve, st.live(), cfg.k)
        agreement.append({"layer": sae.cfg.layer, "per_head": a.tolist(), "mean": float(a.mean())})
    (out / "agreement.json").write_text(json.dumps(agreement, indent=1))

    if not (out / "polysemanticity.json").exists():
        write(polysemanticity(source, saes, stats, k=cfg.k), out)
    poly = json.loads((out / "polysemanticity.json").read_text())

    page = {"model": model.cfg.name, "k": cfg.k, "rank_by": cfg.rank_by, "table1": rows, "agreement": agreement,
            "mean_agreement": float(np.mean([a["mean"] for a in agreement])), "polysemanticity": poly.get("table", {}),
            "n_report_windows": n}
    return write_html(out / "index.html", render_study(page))
