"""The end-to-end job: load -> tokenize -> harvest -> train -> evaluate -> report folder.

Every stage writes into one run folder and is skipped or resumed when its output is already
there, so re-running a killed job continues where it stopped:
    run/store/      activation store (resumable harvest)
    run/train/      checkpoints, density histograms
    run/sae/        the SAE (cfg.json + sae_weights.safetensors + sparsity.safetensors)
    run/report/     report.json, report.md, plots
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..data import WindowSpec, harvest, load_windows
from ..data.harvest import hook_width
from ..evals import activation_batches, check_compatible, fidelity, sparsity, zero_ablation_by_layer
from ..evals.plots import density_histogram
from ..evals.plots import zero_ablation_by_layer as plot_zero_by_layer
from ..models import DEFAULT_MODEL, MODEL_DTYPES, load_model
from ..sae import TrainConfig, load_sae, sae_config_for, train_sae
from .layers import layers_train_config


def main_train_config() -> TrainConfig:
    """The main job's recipe: the every-layer study's (layers_train_config: BatchTopK at 16x, 9,216 latents, k = 16,
    lr 2e-3 warmed up over 100 steps, beta2 0.999, a firing floor of 3e-4), sized so the whole job takes about six
    minutes on 2 CPU cores: 350 steps x 2048 = 0.72M activations, 1.4 passes over the 508,000 harvested (the harvest's
    forward costs more than training). The paper's L1 recipe is `--recipe l1`; at this budget it leaves most latents
    dead."""
    return dataclasses.replace(layers_train_config(), steps=350, checkpoint_every=100, hist_every=175)


@dataclass
class JobConfig:
    model: str = DEFAULT_MODEL
    hook: str = "blocks.15.attn.hook_z"
    out: str = "runs/main"
    windows: WindowSpec = field(default_factory=WindowSpec)
    train_windows: int | None = 4000  # windows harvested for training (None: all): 508,000 rows
    harvest_dtype: str = "bfloat16"  # model precision while harvesting (2.2x faster here)
    store_dtype: str = "bfloat16"
    eval_dtype: str = "float32"  # model precision for CE / KL
    device: str = "auto"  # model and training (models.device.resolve_device)
    eval_windows: int = 16  # held-out windows for CE / KL (fp32; six forwards each)
    # held-out windows for L0, EV and dead counts: dead = fires on < 1e-5 of them, so >= 100,000 inputs (800 x 127)
    sparsity_windows: int | None = 800
    zero_ablation_windows: int = 4  # per-layer zero-ablation table (bf16, one forward per layer); 0 skips it
    train: TrainConfig = field(default_factory=main_train_config)

    def to_dict(self):
        return dataclasses.asdict(self)


def run_job(cfg: JobConfig, progress: bool = True) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.time()
    model = load_model(cfg.model, dtype=cfg.harvest_dtype, device=cfg.device)
    hook_width(model, cfg.hook)  # fail fast on a bad hook name
    train_w, held_w = load_windows(model, cfg.windows)
    if cfg.train_windows:
        train_w = train_w[: cfg.train_windows]
    timings["load_and_tokenize_s"] = time.time() - t

    t = time.time()
    store = harvest(model, train_w, out / "store", [cfg.hook], dtype=cfg.store_dtype, progress=progress,
                    extra_meta={"corpus": cfg.windows.corpus})
    timings["harvest_s"] = time.time() - t

    t = time.time()
    bs, seed = cfg.train.batch_size, cfg.train.seed
    sae_dir = train_sae(sae_config_for(cfg.train, store.d(), cfg.hook, store.meta), cfg.train, out,
                        lambda start: store.batches(bs, seed=seed, start=start), progress=progress, device=cfg.device)
    timings["train_s"] = time.time() - t

    t = time.time()
    sae = load_sae(sae_dir)
    exact = None if cfg.eval_dtype == cfg.harvest_dtype else load_model(cfg.model, dtype=cfg.eval_dtype, device=cfg.device)
    report = evaluate(model, sae, held_w, cfg, out / "report", progress, exact_model=exact)
    timings["eval_s"] = time.time() - t
    report["timings"] = timings
    report["store"] = {"path": str(out / "store"), "n_tokens": len(store), "dtype": store.manifest["dtype"]}
    write_report(report, out / "report")
    return out / "report"


def evaluate(model, sae, held_w, cfg: JobConfig, report_dir: Path, progress: bool = True, exact_model=None) -> dict:
    """Sparsity and zero ablation by layer with `model`; CE and KL with `exact_model` (the same model loaded in
    cfg.eval_dtype: a cast of `model` would keep its weights' bf16 rounding), or `model` cast to it."""
    check_compatible(model, sae)  # before any forward: a wrong-model SAE would fail with a shape error
    report_dir.mkdir(parents=True, exist_ok=True)
    sae = sae.to(model.device)  # activations never leave the model's device
    n_sp = cfg.sparsity_windows or len(held_w)
    sp, density = sparsity(sae, activation_batches(model, sae, held_w[:n_sp]), progress)
    density_histogram(density.numpy(), report_dir / "density.png", title=f"{sae.cfg.hook_name} held-out density")
    rows = []
    if cfg.zero_ablation_windows:  # in the harvest precision: it only says where zero ablation matters
        rows = zero_ablation_by_layer(model, held_w[: cfg.zero_ablation_windows], progress=progress)
        plot_zero_by_layer(rows, report_dir / "zero_ablation_by_layer.png")
    model = exact_model if exact_model is not None else model.to(MODEL_DTYPES[cfg.eval_dtype])
    fid = fidelity(model, sae, held_w[: cfg.eval_windows], progress=progress)
    return {
        "model": model.cfg.name, "hook": sae.cfg.hook_name, "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae,
        "recipe": sae.cfg.training.get("recipe"), "l1_coeff": sae.cfg.training.get("l1_coeff"),
        "tokens_trained": sae.cfg.training.get("tokens_trained"), "sparsity": sp.to_dict(), "fidelity": fid.to_dict(),
        "zero_ablation_by_layer": rows, "config": cfg.to_dict(),
    }


# Zero-ablating hook_z must cost at least this much (nats) for % CE recovered to be worth reading.
CE_RECOVERED_MIN_DELTA = 0.2


def write_report(report: dict, report_dir: Path) -> None:
    (report_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    sp, fid = report["sparsity"], report["fidelity"]
    dz, tokens = fid["delta_ce_zero"], report.get("tokens_trained")
    if dz >= CE_RECOVERED_MIN_DELTA:
        lead = (f"Zero-ablating this hook costs {dz:.3f} nats, so % CE recovered means something here: "
                f"**{100 * fid['ce_recovered']:.1f}%**, with the ΔCE and KL beside it.")
    else:
        lead = (f"Zero-ablating this hook costs only {dz:.3f} nats (< {CE_RECOVERED_MIN_DELTA}), so % CE recovered is "
                "ill-conditioned at this layer; the numbers that mean something are the SAE's ΔCE and KL against "
                "zero- and mean-ablating the hook, first below.")
    lines = [
        f"# Attention Output SAE: {report['model']} `{report['hook']}`",
        "",
        f"d_in {report['d_in']}, d_sae {report['d_sae']}, recipe `{report.get('recipe') or 'not recorded'}`, "
        + (f"trained on {tokens:,} activations." if tokens else "no training record (an SAE trained elsewhere)."),
        "",
        lead,
        "",
        "| fidelity on held-out text | SAE spliced | zero-ablated | mean-ablated |",
        "|---|---|---|---|",
        f"| ΔCE vs clean (nats) | {fid['delta_ce_sae']:+.4f} | {dz:+.4f} | {fid['ce_mean'] - fid['ce_clean']:+.4f} |",
        f"| KL(clean ‖ ·) per token (nats) | {fid['kl_sae']:.4f} | {fid['kl_zero']:.4f} | {fid['kl_mean']:.4f} |",
        "",
        f"KL of the SAE = {fid['kl_sae'] / max(fid['kl_mean'], 1e-12):.2f} × the mean-ablation KL "
        f"(CE clean {fid['ce_clean']:.4f} nats over {fid['n_tokens']:,} next-token predictions; with the SAE's error term "
        f"added back: {fid['ce_sae_with_error']:.4f}, which must equal clean).",
        "",
        "| sparsity and reconstruction | value |",
        "|---|---|",
        f"| L0 (held-out) | {sp['l0']:.2f} |",
        f"| explained variance | {sp['explained_variance']:.3f} |",
        f"| dead features (< {sp['dead_threshold']:g} of {sp['n_inputs']:,} inputs) | {sp['n_dead']} of {report['d_sae']} |",
        f"| dense features (> {sp['dense_threshold']:g}) | {sp['n_dense']} |",
        f"| % CE recovered | {100 * fid['ce_recovered']:.1f}% |",
        "",
        "% CE recovered exceeds 100% whenever mean-ablating the hook beats the clean model (then any",
        "reconstruction near the mean does); read it with the ΔCE and KL rows and the per-layer table below.",
        "",
        "![density](density.png)",
    ]
    if report.get("zero_ablation_by_layer"):
        lines += ["", "## Zero-ablating each layer's hook_z (room for % CE recovered)", "",
                  "| layer | ΔCE zero − clean (nats) |", "|---|---|"]
        lines += [f"| {r['layer']} | {r['delta_ce_zero']:.4f} |" for r in report["zero_ablation_by_layer"]]
        lines += ["", "![zero ablation](zero_ablation_by_layer.png)"]
    if report.get("timings"):
        lines += ["", "## Timings", ""] + [f"- {k}: {v:.1f}" for k, v in report["timings"].items()]
    (report_dir / "report.md").write_text("\n".join(lines) + "\n")
