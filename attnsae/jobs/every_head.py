"""The every-head study in one command: an SAE on every layer's hook_z, Table 1 of the paper for this
model, every head's top features (ranked by DFA variance share or by weight-based attribution, both shown,
with how well the two rankings agree), and the heads' polysemanticity, reachable from one index page.

    out/L{l}/sae                 one SAE per layer, all trained from one stream (jobs.layers)
    out/L{l}/eval.json           that layer's fidelity and sparsity on held-out text (reused when there)
    out/timings.json             wall seconds of each stage this run
    out/table1.json, .md         per layer: L0, % CE recovered with ΔCE beside it, KL vs zero/mean ablation, EV, dead
    out/heads/index.html         every head's top features with dashboards (viz.report)
    out/polysemanticity.*        each head's top features grouped into families (experiments.polysemanticity)
    out/index.html               all of it, from one page
Every stage is skipped when its output exists, so a killed study resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import distributed
from ..attribution.heads import head_attribution, ranking_agreement
from ..data import ActivationStore, load_windows
from ..evals import fidelity_many, sparsity_many
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
    report_windows: int = 400  # training windows for the per-head report's statistics and dashboards
    k: int = 10  # top features per head
    rank_by: str = "dfa"  # the every-head study ranks a head's features by DFA variance share
    seed: int = 0


def evaluate_layers(model, saes, held, cfg: EveryHeadConfig, out: Path, progress: bool = True) -> list[dict]:
    """Each layer's Table 1 row: sparsity for every layer from one pass over the held-out windows, then CE / KL
    with the SAE, zero and mean ablation spliced in (evals.fidelity_many); rows already in L{l}/eval.json are reused."""
    paths = [out / f"L{sae.cfg.layer}" / "eval.json" for sae in saes]
    todo = [i for i, p in enumerate(paths) if not p.exists()]
    if todo:
        todo_saes = [saes[i].to(model.device) for i in todo]
        sparse = sparsity_many(model, todo_saes, held[: cfg.sparsity_windows], progress=progress)
        fids = fidelity_many(model, todo_saes, held[: cfg.eval_windows], progress=progress)
        for i, sae, (sp, _), fid in zip(todo, todo_saes, sparse, fids):
            row = {"layer": sae.cfg.layer, "d_sae": sae.d_sae, **sp.to_dict(), **fid.to_dict()}
            paths[i].write_text(json.dumps(row, indent=1))
    return [json.loads(p.read_text()) for p in paths]


def table1_markdown(rows: list[dict]) -> str:
    lines = ["| layer | d_sae | L0 | % CE rec. | ΔCE SAE | ΔCE zero | KL SAE | KL zero | KL mean | EV | dead |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['layer']} | {r['d_sae']} | {r['l0']:.1f} | {100 * r['ce_recovered']:.1f}% | {r['delta_ce_sae']:+.4f} | "
              f"{r['delta_ce_zero']:+.4f} | {r['kl_sae']:.4f} | {r['kl_zero']:.4f} | {r['kl_mean']:.4f} | "
              f"{r['explained_variance']:.3f} | {r['n_dead']} ({100 * r['n_dead'] / r['d_sae']:.1f}%) |" for r in rows]
    return "\n".join(lines) + "\n"


def run_every_head(cfg: EveryHeadConfig, progress: bool = True) -> Path:
    out = Path(cfg.layers.out)
    clock, timings = time.time(), {}

    def lap(stage):
        nonlocal clock
        timings[stage] = round(time.time() - clock, 1)
        clock = time.time()

    sae_dirs = run_layers(cfg.layers, progress)
    lap("train")
    main = distributed.is_main()
    distributed.shutdown()  # under torchrun the ranks share the training; rank 0 does the rest alone
    if not main:
        return out / "index.html"
    model = load_model(cfg.layers.model, dtype="float32", device=cfg.layers.device)
    saes = [load_sae(sae_dirs[l]) for l in sorted(sae_dirs)]
    train_w, held = load_windows(model, cfg.layers.windows)
    rows = evaluate_layers(model, saes, held, cfg, out, progress)
    (out / "table1.json").write_text(json.dumps(rows, indent=1))
    (out / "table1.md").write_text(table1_markdown(rows))
    lap("evaluate")

    # statistics and dashboards in fp32 as well: bf16 moves DFA by up to 14% and flips features between live and dead
    for sae in saes:
        sae.cpu()  # statistics read activations on the CPU
    if (out / "store").exists():  # trained from a store: read the activations instead of running the model
        store = ActivationStore(out / "store", verify=False)
        source = ActivationSource.from_store(model, store, np.arange(min(store.n_windows, cfg.report_windows)))
    else:
        source = ActivationSource(model, train_w[: cfg.report_windows])
    if not (out / "heads" / "report.json").exists():
        head_report(source, saes, out / "heads", k=cfg.k, rank_by=cfg.rank_by, seed=cfg.seed, progress=progress)
    stats = cached_stats(source, saes, out / "heads" / "stats")

    agreement = []
    for sae, st in zip(saes, stats):
        a = ranking_agreement(head_attribution(sae, model.cfg.n_heads), st.head_fve, st.live(), cfg.k)
        agreement.append({"layer": sae.cfg.layer, "per_head": a.tolist(), "mean": float(a.mean())})
    (out / "agreement.json").write_text(json.dumps(agreement, indent=1))
    lap("head report")

    if not (out / "polysemanticity.json").exists():
        write(polysemanticity(source, saes, stats, k=cfg.k), out)
    poly = json.loads((out / "polysemanticity.json").read_text())
    lap("polysemanticity")
    (out / "timings.json").write_text(json.dumps(timings, indent=1))

    page = {"model": model.cfg.name, "k": cfg.k, "rank_by": cfg.rank_by, "table1": rows, "agreement": agreement,
            "mean_agreement": float(np.mean([a["mean"] for a in agreement])), "polysemanticity": poly.get("table", {}),
            "n_report_windows": len(source)}
    return write_html(out / "index.html", render_study(page))
