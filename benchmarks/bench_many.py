"""Many SAEs from one stream vs the same SAEs trained one at a time (each with its own stream).

One GPT-2-small-shaped model with random weights (bench_harvest.build_models) and random token windows.
Both sides train the same SAEs (one per layer's hook_z, the same TrainConfig) on the same batches:

  many      attnsae.sae.many.train_saes over one StreamedActivations of every hook: one forward per
            buffer chunk feeds every SAE
  one-by-one  for each hook, train_sae over a StreamedActivations of that hook alone (a forward that stops
            after that hook, per chunk, per SAE): what training layer by layer costs

Reported: wall seconds, SAE-activations/s (steps x batch x SAEs / s) and the ratio; the SAEs come out
identical (checked), so the ratio is pure overhead saved.

    python benchmarks/bench_many.py [--quick] [--device auto|cpu|cuda[:N]] [--layers 12] [--steps 30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import describe, device_from_args

warnings.filterwarnings("ignore")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    ap.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--chunk-windows", type=int, default=64)
    a = ap.parse_args(argv)
    if a.quick:
        a.layers, a.d_model, a.heads, a.ctx, a.vocab = 3, 64, 4, 32, 500
        a.steps, a.batch, a.expansion, a.chunk_windows = 4, 64, 4, 8
    device = device_from_args(a.device, ap.prog)

    from bench_harvest import build_models

    from attnsae.data import StreamedActivations
    from attnsae.models.hooks import act_name
    from attnsae.sae import TrainConfig, load_sae, sae_config_for, train_sae
    from attnsae.sae.many import train_saes

    model, _ = build_models(a, torch.bfloat16, device, with_tl=False)
    model.cfg.name = "bench-gpt2"
    n_windows = max(a.chunk_windows, -(-a.steps * a.batch // (a.ctx - 1)))
    windows = np.random.default_rng(0).integers(0, a.vocab, size=(n_windows, a.ctx)).astype(np.int32)
    hooks = [act_name("z", l) for l in range(a.layers)]
    cfg = TrainConfig(recipe="batchtopk", k=a.k, expansion=a.expansion, batch_size=a.batch, steps=a.steps, lr=3e-3,
                      checkpoint_every=10**6, hist_every=0)
    print(f"{a.layers} SAEs (one per layer's hook_z, d_in {a.d_model}, d_sae {a.expansion * a.d_model}, batchtopk k={a.k}), "
          f"{a.steps} steps x {a.batch}; GPT-2-shaped model, bf16, ctx {a.ctx}; chunk {a.chunk_windows} windows")
    print(describe(device))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stream = StreamedActivations(model, windows, hooks, chunk_windows=a.chunk_windows)
        meta = stream.meta("random tokens")
        sae_cfgs = {h: sae_config_for(cfg, stream.widths[h], h, meta) for h in hooks}
        t = time.time()
        many = train_saes(sae_cfgs, cfg, {h: tmp / "many" / h for h in hooks}, stream, progress=False, device=device)
        t_many = time.time() - t
        t = time.time()
        alone = {}
        for h in hooks:
            own = StreamedActivations(model, windows, h, chunk_windows=a.chunk_windows)
            alone[h] = train_sae(sae_cfgs[h], cfg, tmp / "alone" / h,
                                 lambda s, own=own: own.batches(cfg.batch_size, seed=cfg.seed, start=s),
                                 progress=False, device=device)
        t_alone = time.time() - t
        same = all(torch.equal(load_sae(many[h]).W_enc, load_sae(alone[h]).W_enc) for h in hooks)
    acts = a.steps * a.batch * a.layers
    print(f"{'':<12}{'seconds':>10}{'SAE-acts/s':>12}")
    print(f"{'many':<12}{t_many:10.1f}{acts / t_many:12.0f}")
    print(f"{'one-by-one':<12}{t_alone:10.1f}{acts / t_alone:12.0f}")
    print(f"many / one-by-one speed-up: {t_alone / t_many:.2f}x; identical SAEs: {same}")
    if not same:
        raise SystemExit("the two ways trained different SAEs")


if __name__ == "__main__":
    main()
