"""An L1 sweep on one store: the L0 / CE-recovered frontier, as JSON, markdown and a plot."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..data import ActivationStore, WindowSpec, load_windows
from ..evals import activation_batches, fidelity, sparsity
from ..evals.plots import frontier
from ..models import load_model
from ..sae import TrainConfig, load_sae, sae_config_for, train_sae


def sweep_train_config() -> TrainConfig:
    """The paper's L1 recipe at the old main job's size (8x, 4000 steps x 2048, resampling scaled down from the
    paper's 1000-step warm-back to fit the shorter run); the sweep varies l1_coeff."""
    return TrainConfig(recipe="l1", expansion=8, l1_coeff=6.0, batch_size=2048, steps=4000, resample_every=800,
                       n_resamples=3, resample_warmup=300, checkpoint_every=250, hist_every=1000)


def run_sweep(store_dir, out, l1_coeffs: list[float], base: TrainConfig, model_name: str | None = None,
              eval_windows: int = 64, sparsity_windows: int | None = None, device: str = "auto") -> str:
    store = ActivationStore(store_dir)
    meta, out = store.meta, Path(out)
    model = load_model(model_name or meta["model"], device=device)
    store.check_model(model)
    _, held = load_windows(model, WindowSpec(corpus=meta.get("corpus", "default"), ctx=meta["context_size"]))
    rows = []
    for l1 in l1_coeffs:
        cfg = dataclasses.replace(base, l1_coeff=l1)
        sae_dir = train_sae(sae_config_for(cfg, store.d(), store.hooks[0], meta), cfg, out / f"l1_{l1:g}",
                            lambda s, c=cfg: store.batches(c.batch_size, seed=c.seed, start=s), device=device)
        sae = load_sae(sae_dir, device=model.device)
        sp, _ = sparsity(sae, activation_batches(model, sae, held[:sparsity_windows or len(held)]))
        fid = fidelity(model, sae, held[:eval_windows])
        rows.append({"l1_coeff": l1, "l0": sp.l0, "explained_variance": sp.explained_variance, "n_dead": sp.n_dead,
                     **{k: v for k, v in fid.to_dict().items()}})
    (out / "sweep.json").write_text(json.dumps(rows, indent=2))
    frontier(rows, out / "frontier.png")
    lines = ["| l1 | L0 | % CE rec. | ΔCE SAE | ΔCE zero | ΔCE mean | KL SAE | KL zero | KL mean | EV | dead |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['l1_coeff']:g} | {r['l0']:.1f} | {100 * r['ce_recovered']:.1f}% | {r['delta_ce_sae']:+.4f} | "
              f"{r['delta_ce_zero']:+.4f} | {r['ce_mean'] - r['ce_clean']:+.4f} | {r['kl_sae']:.4f} | {r['kl_zero']:.4f} | "
              f"{r['kl_mean']:.4f} | {r['explained_variance']:.3f} | {r['n_dead']} |" for r in rows]
    table = "\n".join(lines)
    (out / "sweep.md").write_text(table + "\n")
    return table
