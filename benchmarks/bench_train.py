"""SAE training-step throughput: SAELens's own step vs attnsae's dense recipe step vs attnsae's sparse step.

Every implementation gets the same weights (unit-norm decoder rows, W_enc = W_dec^T, b_dec = 0) and
the same synthetic activations x ~ N(0, 1) [B, d_in], and takes whole optimizer steps:

  saelens-standard     SAETrainer.step: StandardTrainingSAE.training_forward_pass (MSE + l1 * |f * |W_dec||_1),
                       backward, clip_grad_norm, Adam, lr scheduler, firing statistics; autocast for bf16
  saelens-topk         the same with TopKTrainingSAE (k active), dense activations
  saelens-topk-sparse  TopKTrainingSAE(use_sparse_activations=True) (SAELens's sparse option; fp32 only)
  ours-sparse-<recipe> attnsae.sae.trainer's loop body: recipe.loss under autocast (which runs
                       sparse_step.sae_step), backward, recipe.before_optimizer_step (decoder-parallel
                       grad removal), Adam, recipe.after_optimizer_step (decoder normalisation), firing counts.
                       Recipes: l1, l1_decnorm, topk.
  ours-dense-<recipe>  the same loop with sae_step forced onto its dense path (plain matmuls)

Two sparsity states: "init" (b_enc = 0: about half the latents fire, as at initialisation) and "warm"
(b_enc set per latent so that about --l0 latents fire per row, like a trained SAE). TopK runs have
L0 <= k in both, so they run in the warm state only.

Reported: activations/s, ratio to the SAELens step of the same kind (L1 / TopK) in the same dtype and
state, and the achieved FLOP/s of the matmul FLOPs each implementation executes (counted per
implementation, see `flops_*`) as a fraction of a big bf16 matmul timed in the same run.

    python benchmarks/bench_train.py [--quick] [--impls ...] [--dtypes float32 bfloat16]
"""

from __future__ import annotations

import argparse
import gc
import traceback
import warnings

import torch
from _common import bf16_peak, bias_for_l0, timeit

warnings.filterwarnings("ignore", message=".*[Ss]parse.*")


# ---------------------------------------------------------------- FLOP counts (matmul-like work only)
def flops_dense(B, D, S, **_):
    # forward: encoder, decoder; backward: grad f, grad W_dec, grad W_enc, grad (x - b_dec) for b_dec
    return 6 * 2 * B * D * S


def flops_ours_sparse(B, D, S, nnz, dense, **_):
    if dense:  # ran its dense fallback
        return flops_dense(B, D, S)
    # encoder forward; decoder, grad f at active, grad W_dec, grad W_enc on nnz entries; W_enc @ grad b_enc
    return 2 * B * D * S + 4 * 2 * nnz * D + 2 * D * S


# ---------------------------------------------------------------- implementations
def shared_weights(D, S, seed=0):
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(S, D, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    return {"W_enc": W_dec.T.contiguous(), "b_enc": torch.zeros(S), "W_dec": W_dec, "b_dec": torch.zeros(D)}


def load_weights(module, weights):
    with torch.no_grad():
        for name, w in weights.items():
            getattr(module, name).copy_(w)


def make_saelens(kind, weights, a, dtype, sparse=False):
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    D, S = weights["W_dec"].shape[1], weights["W_dec"].shape[0]
    if kind == "standard":
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=D, d_sae=S, l1_coefficient=a.l1))
    else:
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=S, k=a.k, use_sparse_activations=sparse))
    load_weights(sae, weights)
    cfg = SAETrainerConfig(total_training_samples=a.B * 10**6, train_batch_size_samples=a.B, lr=a.lr, lr_end=a.lr,
                           adam_beta1=0.9, adam_beta2=0.999, autocast=dtype == torch.bfloat16)
    trainer = SAETrainer(cfg, sae, data_provider=iter(()))

    def step(x):
        out = trainer.step(x)
        trainer.n_training_steps += 1
        return out.feature_acts, None

    return step


def make_ours(recipe_name, weights, a, dtype, sparse):
    from attnsae.sae import RECIPES, SAE, SAEConfig, TrainConfig
    from attnsae.sae.sparse_step import sae_step

    D, S = weights["W_dec"].shape[1], weights["W_dec"].shape[0]
    arch = RECIPES[recipe_name].architecture
    sae = SAE(SAEConfig(d_in=D, d_sae=S, architecture=arch, k=a.k if arch == "topk" else None))
    cfg = TrainConfig(recipe=recipe_name, k=a.k, l1_coeff=a.l1, lr=a.lr, batch_size=a.B, steps=10**6,
                      dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    recipe = RECIPES[recipe_name](sae, cfg)
    load_weights(sae, weights)  # after the recipe, which may rescale the decoder at init
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.betas)
    fire_counts = torch.zeros(S, dtype=torch.long)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    step_no = cfg.steps  # past every warm-up

    def dense_loss(x):  # the recipe's loss with sae_step forced onto its dense path
        f, recon = sae_step(sae, x, dtype=dtype, dense_density=0.0)
        loss = (recon - x).pow(2).sum(-1).mean()
        if recipe_name == "l1":
            loss = loss + cfg.l1_coeff * f.sum(-1).mean()
        elif recipe_name == "l1_decnorm":
            loss = loss + cfg.l1_coeff * (f * sae.W_dec.norm(dim=1)).sum(-1).mean()
        # topk: MSE only; AuxK needs dead latents, and none die within a benchmark (as in the dense recipe)
        return loss, f, recon

    def step(x):
        with autocast:
            loss, f, recon = recipe.loss(x, step_no) if sparse else dense_loss(x)
        if not torch.isfinite(loss):
            raise FloatingPointError("loss is not finite")
        dense = getattr(f.grad_fn, "dense", None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        recipe.before_optimizer_step()
        opt.step()
        recipe.after_optimizer_step()
        with torch.no_grad():
            fire_counts.add_((f > 0).sum(0))
        return f, dense

    return step


IMPLS = {
    "saelens-standard": ("l1", lambda w, a, dt: make_saelens("standard", w, a, dt), flops_dense),
    "ours-dense-l1": ("l1", lambda w, a, dt: make_ours("l1", w, a, dt, False), flops_dense),
    "ours-sparse-l1": ("l1", lambda w, a, dt: make_ours("l1", w, a, dt, True), flops_ours_sparse),
    "ours-dense-l1_decnorm": ("l1", lambda w, a, dt: make_ours("l1_decnorm", w, a, dt, False), flops_dense),
    "ours-sparse-l1_decnorm": ("l1", lambda w, a, dt: make_ours("l1_decnorm", w, a, dt, True), flops_ours_sparse),
    "saelens-topk": ("topk", lambda w, a, dt: make_saelens("topk", w, a, dt), flops_dense),
    "saelens-topk-sparse": ("topk", lambda w, a, dt: make_saelens("topk", w, a, dt, sparse=True), None),
    "ours-dense-topk": ("topk", lambda w, a, dt: make_ours("topk", w, a, dt, False), flops_dense),
    "ours-sparse-topk": ("topk", lambda w, a, dt: make_ours("topk", w, a, dt, True), flops_ours_sparse),
}
BASELINE = {"l1": "saelens-standard", "topk": "saelens-topk"}


def run_one(name, a, dtype, state, x, weights):
    kind, make, flops_fn = IMPLS[name]
    if name == "saelens-topk-sparse" and dtype == torch.bfloat16:
        return {"skip": "fp32 only (SAELens: sparse activations not worth it under autocast)"}
    w = dict(weights)
    if state == "warm" and kind == "l1":
        w["b_enc"] = bias_for_l0(x, w["W_enc"], w["b_dec"], a.l0)
    step = make(w, a, dtype)
    seen = {}

    def timed():
        f, dense = step(x)
        seen["l0"] = (f > 0).sum(-1).float().mean().item() if not f.is_sparse else f.coalesce().values().gt(0).sum().item() / a.B
        seen["dense"] = dense

    t = timeit(timed, a.reps, warmup=a.warmup)
    B, S, D = a.B, a.d_sae, a.d_in
    nnz = seen["l0"] * B
    if flops_fn is flops_ours_sparse and kind == "topk":
        nnz = a.k * B  # the active set is the k selected entries, zero or not
    flops = flops_fn(B=B, D=D, S=S, k=a.k, nnz=nnz, dense=bool(seen["dense"])) if flops_fn else float("nan")
    return {"sec": t, "l0": seen["l0"], "dense": seen["dense"], "flops": flops}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one step each: checks that everything runs")
    ap.add_argument("--B", type=int, default=4096)
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=24576)
    ap.add_argument("--k", type=int, default=64, help="TopK k")
    ap.add_argument("--l0", type=float, default=64, help="target L0 of the warm state")
    ap.add_argument("--l1", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--states", nargs="+", default=["init", "warm"])
    ap.add_argument("--impls", nargs="+", default=list(IMPLS), choices=list(IMPLS))
    ap.add_argument("--debug", action="store_true", help="print tracebacks of failing implementations")
    a = ap.parse_args(argv)
    if a.quick:
        a.B, a.d_in, a.d_sae, a.k, a.l0, a.reps, a.warmup = 256, 64, 2048, 16, 16, 1, 1
    try:
        import sae_lens

        peers = f"sae_lens {sae_lens.__version__}"
    except ImportError:
        a.impls = [i for i in a.impls if not i.startswith("saelens")]
        peers = "sae_lens not installed: SAELens rows skipped (run benchmarks/run.sh)"
    peak = bf16_peak(1024 if a.quick else 4096)
    print(f"SAE training step: B={a.B} d_in={a.d_in} d_sae={a.d_sae} k={a.k} warm L0~{a.l0:g}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; {peers}")
    print(f"bf16 matmul peak (measured now): {peak / 1e12:.3f} TFLOP/s; median of {a.reps} steps after {a.warmup} warm-up")
    torch.manual_seed(0)
    x = torch.randn(a.B, a.d_in)
    weights = shared_weights(a.d_in, a.d_sae)
    results = {}
    header = (f"{'implementation':<24}{'dtype':<10}{'state':<6}{'L0':>8}{'path':>7}{'ms/step':>10}{'acts/s':>10}"
              f"{'vs SAELens':>11}{'GFLOP':>9}{'TFLOP/s':>9}{'%peak':>7}")
    print(header)
    print("-" * len(header))
    for dtype_name in a.dtypes:
        dtype = getattr(torch, dtype_name)
        for state in a.states:
            for name in a.impls:
                kind = IMPLS[name][0]
                if kind == "topk" and state == "init":
                    continue  # TopK sparsity is fixed by k
                try:
                    r = run_one(name, a, dtype, state, x, weights)
                except Exception as e:  # a peer that cannot run this config is reported, not fatal
                    r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"}
                    if a.debug:
                        traceback.print_exc()
                gc.collect()
                results[(name, dtype_name, state)] = r
                row = f"{name:<24}{dtype_name:<10}{state:<6}"
                if "sec" not in r:
                    print(row + "  " + r.get("skip", r.get("error", "")), flush=True)
                    continue
                base = results.get((BASELINE[kind], dtype_name, state), {})
                ratio = base["sec"] / r["sec"] if "sec" in base else float("nan")
                path = {None: "-", True: "dense", False: "sparse"}[r["dense"]]
                tf = r["flops"] / r["sec"]
                print(row + f"{r['l0']:8.1f}{path:>7}{r['sec'] * 1e3:10.1f}{a.B / r['sec']:10.0f}{ratio:10.2f}x"
                      f"{r['flops'] / 1e9:9.1f}{tf / 1e12:9.3f}{100 * tf / peak:6.1f}%", flush=True)
    print("\nvs SAELens: SAELens step time / this step time (same kind, dtype, state); >1 is faster.")
    print("GFLOP: matmul FLOPs this implementation executes per step (dense ones: 6 matmuls of 2*B*d_in*d_sae).")
    if any("error" in r for r in results.values()):
        print("Errors above are the peer's own code failing at this configuration on this machine.")
    return results


if __name__ == "__main__":
    main()
