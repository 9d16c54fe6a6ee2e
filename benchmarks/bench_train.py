"""SAE training-step throughput: SAELens's own step vs attnsae's dense recipe step vs attnsae's sparse step.

Every implementation gets the same weights (unit-norm decoder rows, W_enc = W_dec^T, b_dec = 0) and
the same synthetic activations x ~ N(0, 1) [B, d_in], on the same device, and takes whole optimizer steps:

  saelens-standard     SAETrainer.step: StandardTrainingSAE.training_forward_pass (MSE + l1 * |f * |W_dec||_1),
                       backward, clip_grad_norm, Adam, lr scheduler, firing statistics; autocast for bf16
  saelens-topk         the same with TopKTrainingSAE (k active), dense activations
  saelens-topk-sparse  TopKTrainingSAE(use_sparse_activations=True) (SAELens's sparse option; fp32 only)
  saelens-batchtopk    BatchTopKTrainingSAE (top B*k of the batch, threshold EMA), dense activations
  saelens-jumprelu     JumpReLUTrainingSAE (step L0 loss, rectangle-kernel STE)
  saelens-matryoshka   MatryoshkaBatchTopKTrainingSAE with the same nested widths as ours
  ours-sparse-<recipe> attnsae.sae.trainer's loop body: recipe.loss under autocast (which runs
                       sparse_step.sae_step), backward, recipe.before_optimizer_step (decoder-parallel
                       grad removal), Adam, recipe.after_optimizer_step (decoder normalisation), firing counts
                       (the step's own where it returns them, as Trainer.train; else from f) and recipe.observe.
                       Recipes: l1, l1_decnorm, topk, batchtopk, jumprelu (sae_step) and matryoshka_batchtopk
                       (sae_step plus the prefixes' dense decoder products). Off the CPU sae_step (and the JumpReLU
                       recipe) is plain autograd (the sparse kernels are CPU ones): the path column says so.
  ours-dense-<recipe>  the same loop with sae_step forced onto its dense path (plain matmuls); CPU only
                       (on CUDA it would be the ours-sparse row again)

Two sparsity states: "init" (b_enc = 0: about half the latents fire, as at initialisation) and "warm"
(b_enc set per latent so that about --l0 latents fire per row, like a trained SAE). TopK runs have
L0 <= k in both, so they run in the warm state only.

Reported: activations/s, ratio to the SAELens step of the same kind (L1 / TopK) in the same dtype and
state, and the achieved FLOP/s of the matmul FLOPs each implementation executes (counted per
implementation, see `flops_*` and benchmarks/README.md) as a fraction of a big square bf16 matmul timed
in the same run on the same device. On CUDA every timed region is bracketed by torch.cuda.synchronize
and holds no host round trip of the benchmark's own (L0 is read after timing; --trainer-syncs adds the
two that attnsae's Trainer.train makes per step).

    python benchmarks/bench_train.py [--quick] [--device auto|cpu|cuda[:N]] [--impls ...] [--dtypes float32 bfloat16]
"""

from __future__ import annotations

import argparse
import gc
import traceback
import warnings

import torch
from _common import bias_for_l0, describe, device_from_args, measured_peak, timeit, to_device

warnings.filterwarnings("ignore", message=".*[Ss]parse.*")


# ---------------------------------------------------------------- FLOP counts (matmul-like work only)
def flops_dense(B, D, S, **_):
    # encoder: forward, grad W_enc, grad (x - b_dec) (b_dec needs it); decoder: forward, grad f, grad W_dec
    return 6 * 2 * B * D * S


def flops_ours(B, D, S, nnz, path, **_):
    if path != "sparse":  # its dense fallback (CPU), or plain autograd (off the CPU)
        return flops_dense(B, D, S)
    # encoder forward; decoder, grad f at active, grad W_dec, grad W_enc on nnz entries; W_enc @ grad b_enc
    return 2 * B * D * S + 4 * 2 * nnz * D + 2 * D * S


def flops_matryoshka(B, D, S, nnz, path, **_):
    # ours: the sparse step for the whole dictionary, plus the inner prefixes' dense decoder products (forward,
    # grad f, grad W_dec); each prefix adds only its own columns, so they span the largest inner prefix in total
    return flops_ours(B, D, S, nnz, path) + 3 * 2 * B * D * matryoshka_widths(S)[-2]


def flops_sparse_decoder(B, D, S, k, **_):
    # SAELens's sparse TopK: dense encoder (forward, grad W_enc, grad input); its COO decoder counted
    # at the k active latents per row (forward, grad f, grad W_dec): a lower bound on what it executes
    return 3 * 2 * B * D * S + 3 * 2 * B * k * D


# ---------------------------------------------------------------- implementations
def shared_weights(D, S, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(S, D, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    w = {"W_enc": W_dec.T.contiguous(), "b_enc": torch.zeros(S), "W_dec": W_dec, "b_dec": torch.zeros(D)}
    return {k: to_device(v, device) for k, v in w.items()}


def load_weights(module, weights):
    with torch.no_grad():
        for name, w in weights.items():
            getattr(module, name).copy_(w)


def matryoshka_widths(S):
    """Ours and SAELens's nested widths: the default TrainConfig.prefixes of d_sae."""
    from attnsae.sae import TrainConfig

    return sorted({max(1, round(p * S)) for p in TrainConfig().prefixes} | {S})


def make_saelens(kind, weights, a, dtype, device, sparse=False):
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    D, S = weights["W_dec"].shape[1], weights["W_dec"].shape[0]
    dev = str(device)
    if kind == "standard":
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=D, d_sae=S, l1_coefficient=a.l1, device=dev))
    elif kind == "batchtopk":
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D, d_sae=S, k=a.k, device=dev))
    elif kind == "matryoshka":
        sae = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
            d_in=D, d_sae=S, k=a.k, matryoshka_widths=matryoshka_widths(S), device=dev))
    elif kind == "jumprelu":
        sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=D, d_sae=S, l0_coefficient=a.l1, device=dev))
    else:
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=S, k=a.k, use_sparse_activations=sparse, device=dev))
    load_weights(sae, weights)
    cfg = SAETrainerConfig(total_training_samples=a.B * 10**6, train_batch_size_samples=a.B, lr=a.lr, lr_end=a.lr,
                           adam_beta1=0.9, adam_beta2=0.999, autocast=dtype == torch.bfloat16, device=dev)
    trainer = SAETrainer(cfg, sae, data_provider=iter(()))

    def step(x):
        out = trainer.step(x)
        trainer.n_training_steps += 1
        return out.feature_acts, None

    return step, lambda: None


def make_ours(recipe_name, weights, a, dtype, device, sparse):
    from attnsae.sae import RECIPES, SAE, SAEConfig, TrainConfig
    from attnsae.sae.sparse_step import sae_step

    D, S = weights["W_dec"].shape[1], weights["W_dec"].shape[0]
    arch = RECIPES[recipe_name].architecture
    sae = SAE(SAEConfig(d_in=D, d_sae=S, architecture=arch, k=a.k if arch == "topk" else None)).to(device)
    if arch == "jumprelu":  # as SAELens' init, so both start from the same function
        sae.set_threshold_(0.01)
    cfg = TrainConfig(recipe=recipe_name, k=a.k, l1_coeff=a.l1, l0_coeff=a.l1, lr=a.lr, batch_size=a.B, steps=10**6,
                      dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    recipe = RECIPES[recipe_name](sae, cfg)  # its state tensors live on the SAE's device
    load_weights(sae, weights)  # after the recipe, which may rescale the decoder at init
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.betas, fused=True)  # as Trainer
    # Trainer.train counts firings on the CPU (.cpu() each step); here on the device unless --trainer-syncs
    fire_counts = torch.zeros(S, dtype=torch.long, device="cpu" if a.trainer_syncs else device)
    finite = torch.ones((), dtype=torch.bool, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    step_no = cfg.steps  # past every warm-up
    path = "autograd" if device.type != "cpu" else None  # sae_step's plain-autograd fallback off the CPU

    def dense_loss(x):  # the recipe's loss with sae_step forced onto its dense path
        f, recon, *_, l0 = sae_step(sae, x, dtype=dtype, dense_density=0.0,
                                    bandwidth=cfg.bandwidth if arch == "jumprelu" else None)
        loss = (recon - x).pow(2).sum(-1).mean()
        if recipe_name == "jumprelu":
            loss = loss + cfg.l0_coeff * l0
        elif recipe_name == "l1":
            loss = loss + cfg.l1_coeff * f.sum(-1).mean()
        elif recipe_name == "l1_decnorm":
            loss = loss + cfg.l1_coeff * (f * sae.W_dec.norm(dim=1)).sum(-1).mean()
        # topk: MSE only; AuxK needs dead latents, and none die within a benchmark (as in the dense recipe)
        return loss, f, recon

    def step(x):
        fired = None  # as Trainer.train: the recipe's own firing counts when its step knows them
        with autocast:
            if sparse:
                loss, f, recon, fired = recipe.loss(x, step_no)
            else:
                loss, f, recon = dense_loss(x)
        if a.trainer_syncs:  # as Trainer.train: a host round trip per step
            if not torch.isfinite(loss):
                raise FloatingPointError("loss is not finite")
        else:  # the same check, read once after timing
            finite.logical_and_(torch.isfinite(loss))
        dense = {True: "dense", False: "sparse"}.get(getattr(recon.grad_fn, "dense", None), path or "autograd")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        recipe.before_optimizer_step()
        opt.step()
        recipe.after_optimizer_step()
        with torch.no_grad():
            if fired is None:
                fired = (f > 0).sum(0)
            recipe.observe(fired, len(x))
            fire_counts.add_(fired.cpu() if a.trainer_syncs else fired)
        return f, dense

    def check():
        if not bool(finite):
            raise FloatingPointError("loss was not finite")

    return step, check


IMPLS = {
    "saelens-standard": ("l1", lambda w, a, dt, dev: make_saelens("standard", w, a, dt, dev), flops_dense),
    "ours-dense-l1": ("l1", lambda w, a, dt, dev: make_ours("l1", w, a, dt, dev, False), flops_dense),
    "ours-sparse-l1": ("l1", lambda w, a, dt, dev: make_ours("l1", w, a, dt, dev, True), flops_ours),
    "ours-dense-l1_decnorm": ("l1", lambda w, a, dt, dev: make_ours("l1_decnorm", w, a, dt, dev, False), flops_dense),
    "ours-sparse-l1_decnorm": ("l1", lambda w, a, dt, dev: make_ours("l1_decnorm", w, a, dt, dev, True), flops_ours),
    "saelens-topk": ("topk", lambda w, a, dt, dev: make_saelens("topk", w, a, dt, dev), flops_dense),
    "saelens-topk-sparse": ("topk", lambda w, a, dt, dev: make_saelens("topk", w, a, dt, dev, sparse=True),
                            flops_sparse_decoder),
    "ours-dense-topk": ("topk", lambda w, a, dt, dev: make_ours("topk", w, a, dt, dev, False), flops_dense),
    "ours-sparse-topk": ("topk", lambda w, a, dt, dev: make_ours("topk", w, a, dt, dev, True), flops_ours),
    "saelens-batchtopk": ("batchtopk", lambda w, a, dt, dev: make_saelens("batchtopk", w, a, dt, dev), flops_dense),
    "ours-sparse-batchtopk": ("batchtopk", lambda w, a, dt, dev: make_ours("batchtopk", w, a, dt, dev, True), flops_ours),
    "saelens-jumprelu": ("jumprelu", lambda w, a, dt, dev: make_saelens("jumprelu", w, a, dt, dev), flops_dense),
    "ours-dense-jumprelu": ("jumprelu", lambda w, a, dt, dev: make_ours("jumprelu", w, a, dt, dev, False), flops_dense),
    "ours-sparse-jumprelu": ("jumprelu", lambda w, a, dt, dev: make_ours("jumprelu", w, a, dt, dev, True), flops_ours),
    "saelens-matryoshka": ("matryoshka", lambda w, a, dt, dev: make_saelens("matryoshka", w, a, dt, dev), flops_dense),
    "ours-matryoshka": ("matryoshka", lambda w, a, dt, dev: make_ours("matryoshka_batchtopk", w, a, dt, dev, True),
                        flops_matryoshka),
}
BASELINE = {"l1": "saelens-standard", "topk": "saelens-topk", "batchtopk": "saelens-batchtopk",
            "jumprelu": "saelens-jumprelu", "matryoshka": "saelens-matryoshka"}
FIXED_L0 = ("topk", "batchtopk", "matryoshka")  # sparsity set by k: warm state only


def run_one(name, a, dtype, state, x, weights, device):
    kind, make, flops_fn = IMPLS[name]
    if name == "saelens-topk-sparse" and dtype == torch.bfloat16:
        return {"skip": "fp32 only (SAELens: sparse activations not worth it under autocast)"}
    if name.startswith("ours-dense-") and device.type != "cpu":
        return {"skip": f"= ours-sparse-{name.split('-', 2)[2]} here (sae_step is plain autograd off the CPU)"}
    w = dict(weights)
    if state == "warm" and kind in ("l1", "jumprelu"):
        w["b_enc"] = bias_for_l0(x, w["W_enc"], w["b_dec"], a.l0)
    step, check = make(w, a, dtype, device)
    if a.batch_from == "host" and device.type == "cuda":  # each step copies its batch from pinned host memory
        x_host = x.cpu().pin_memory()

        def batch():
            return x_host.to(device, non_blocking=True)
    else:
        def batch():
            return x
    last = {}

    def timed():
        last["f"], last["path"] = step(batch())  # no host round trip: L0 is read after timing

    t = timeit(timed, a.reps, warmup=a.warmup, device=device)
    check()
    f = last["f"]
    with torch.no_grad():
        if f.is_sparse:
            l0 = f.coalesce().values().gt(0).sum().item() / a.B
        else:
            l0 = (f > 0).sum(-1).float().mean().item()
    B, S, D = a.B, a.d_sae, a.d_in
    nnz = l0 * B
    if flops_fn is flops_ours and kind == "topk":
        nnz = a.k * B  # the active set is the k selected entries, zero or not
    path = last["path"]
    if path == "autograd" and flops_fn in (flops_ours, flops_matryoshka):  # plain autograd executes the dense step
        flops_fn = flops_dense
    flops = flops_fn(B=B, D=D, S=S, k=a.k, nnz=nnz, path=path)
    return {"sec": t, "l0": l0, "path": path, "flops": flops}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one step each: checks that everything runs")
    ap.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N")
    ap.add_argument("--B", type=int, default=4096)
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=24576)
    ap.add_argument("--k", type=int, default=64, help="TopK k")
    ap.add_argument("--l0", type=float, default=64, help="target L0 of the warm state")
    ap.add_argument("--l1", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--reps", type=int, default=None,
                    help="CPU: timed steps, the median reported (default 3); CUDA: steps per timed round (default 20)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 1 on the CPU, 3 on CUDA)")
    ap.add_argument("--peak-n", type=int, default=None, help="size of the square bf16 matmul (default 4096 CPU, 8192 CUDA)")
    ap.add_argument("--batch-from", choices=["device", "host"], default="device",
                    help="host: each step copies its batch from pinned host memory (as from an activation store)")
    ap.add_argument("--trainer-syncs", action="store_true",
                    help="ours: the two host round trips Trainer.train makes per step (isfinite(loss), fire counts .cpu())")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    ap.add_argument("--states", nargs="+", default=["init", "warm"], choices=["init", "warm"])
    ap.add_argument("--impls", nargs="+", default=list(IMPLS), choices=list(IMPLS))
    ap.add_argument("--debug", action="store_true", help="print tracebacks of failing implementations")
    a = ap.parse_args(argv)
    device = device_from_args(a.device, ap.prog)
    cuda = device.type == "cuda"
    if a.quick:
        a.B, a.d_in, a.d_sae, a.k, a.l0, a.reps, a.warmup = 256, 64, 2048, 16, 16, 1, 1
        a.peak_n = a.peak_n or 1024
    a.reps = a.reps or (20 if cuda else 3)
    a.warmup = a.warmup if a.warmup is not None else (3 if cuda else 1)
    try:
        import sae_lens

        peers = f"sae_lens {sae_lens.__version__}"
    except ImportError:
        a.impls = [i for i in a.impls if not i.startswith("saelens")]
        peers = "sae_lens not installed: SAELens rows skipped (run benchmarks/run.sh)"
    peak, peak_line = measured_peak(a.peak_n, device, a.reps, a.warmup, "steps")
    print(f"SAE training step: B={a.B} d_in={a.d_in} d_sae={a.d_sae} k={a.k} warm L0~{a.l0:g}; batch from {a.batch_from}"
          f"{'; with Trainer.train host syncs' if a.trainer_syncs else ''}")
    print(f"{describe(device)}; {peers}")
    print(peak_line)
    torch.manual_seed(0)
    x = to_device(torch.randn(a.B, a.d_in), device)
    weights = shared_weights(a.d_in, a.d_sae, device)
    results = {}
    header = (f"{'implementation':<24}{'dtype':<10}{'state':<6}{'L0':>8}{'path':>9}{'ms/step':>10}{'acts/s':>11}"
              f"{'vs SAELens':>11}{'GFLOP':>9}{'TFLOP/s':>9}{'%peak':>7}")
    print(header)
    print("-" * len(header))
    for dtype_name in a.dtypes:
        dtype = getattr(torch, dtype_name)
        for state in a.states:
            for name in a.impls:
                kind = IMPLS[name][0]
                if kind in FIXED_L0 and state == "init":
                    continue  # sparsity fixed by k
                try:
                    r = run_one(name, a, dtype, state, x, weights, device)
                except Exception as e:  # a peer that cannot run this config is reported, not fatal
                    r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"}
                    if a.debug:
                        traceback.print_exc()
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
                results[(name, dtype_name, state)] = r
                row = f"{name:<24}{dtype_name:<10}{state:<6}"
                if "sec" not in r:
                    print(row + "  " + r.get("skip", r.get("error", "")), flush=True)
                    continue
                base = results.get((BASELINE[kind], dtype_name, state), {})
                ratio = f"{base['sec'] / r['sec']:10.2f}x" if "sec" in base else f"{'-':>11}"
                tf = r["flops"] / r["sec"]
                print(row + f"{r['l0']:8.1f}{r['path'] or '-':>9}{r['sec'] * 1e3:10.2f}{a.B / r['sec']:11.0f}{ratio}"
                      f"{r['flops'] / 1e9:9.1f}{tf / 1e12:9.3f}{100 * tf / peak:6.1f}%", flush=True)
    print("\nvs SAELens: SAELens step time / this step time (same kind, dtype, state); >1 is faster.")
    print("GFLOP: matmul FLOPs this implementation executes per step (dense ones: 6 matmuls of 2*B*d_in*d_sae;")
    print("sparse ones: the dense encoder forward plus nnz-sized products); %peak: TFLOP/s / the bf16 peak above.")
    print("path: sparse/dense: sae_step's CPU kernels; autograd: its plain-autograd fallback off the CPU.")
    if any("error" in r for r in results.values()):
        print("Errors above are the implementation failing at this configuration on this device (--debug for tracebacks).")
    return results


if __name__ == "__main__":
    main()
