"""Scale-out under torchrun: throughput with 1 and with N processes (attnsae.distributed).

Launches itself under `torch.distributed.run` once per setting and times, in every run, the three distributed paths
on a GPT-2-small-shaped model with random weights (bench_harvest.build_models) and random token windows:

  harvest   every layer's hook_z into a store, each rank harvesting its share of the windows  (tokens/s)
  modules   an SAE per layer (BatchTopK), streamed: each rank runs the model on its share of each chunk, the
            activations are exchanged (all-to-all) and each rank trains its layers' SAEs         (SAE inputs/s)
  data      one SAE (d_in 768, d_sae 24,576, BatchTopK) from random activations, each rank on its slice of
            every batch, gradients all-reduced                                                      (inputs/s)

On the CPU the settings share the machine's cores: 1 process x all threads, 1 process x 1 thread (the per-rank
baseline) and N processes x (threads / N). Scaling efficiency = throughput(N processes) / (N x throughput(1 process
x 1 thread)): 100% means the processes add up. On a GPU machine the settings are 1 process and one per GPU.

    python benchmarks/bench_distributed.py [--quick] [--device auto|cpu|cuda] [--nproc 2]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(a) -> dict:
    """One setting's three timings (rank 0 returns them)."""
    sys.path.insert(0, str(HERE))
    from bench_harvest import build_models

    from attnsae import distributed
    from attnsae.data import StreamedActivations, harvest
    from attnsae.models import resolve_device
    from attnsae.models.hooks import act_name
    from attnsae.sae import SAEConfig, TrainConfig, sae_config_for
    from attnsae.sae.many import train_saes
    from attnsae.sae.trainer import Trainer

    distributed.init("auto")
    w, device = distributed.world(), resolve_device(a.device)
    model, _ = build_models(a, torch.bfloat16, device, with_tl=False)
    model.cfg.name = "bench-gpt2"
    windows = np.random.default_rng(0).integers(0, a.vocab, size=(a.windows, a.ctx)).astype(np.int32)
    hooks = [act_name("z", l) for l in range(a.layers)]
    out = {}
    tmp = Path(a.tmp)

    distributed.barrier()
    t = time.time()
    harvest(model, windows, tmp / f"store{w}", hooks, progress=False)
    distributed.barrier()
    out["harvest tokens/s"] = a.windows * (a.ctx - 1) / (time.time() - t)

    cfg = TrainConfig(recipe="batchtopk", k=a.k, expansion=a.expansion, batch_size=a.batch, steps=a.steps, lr=1e-3,
                      checkpoint_every=10**6, hist_every=0)
    lay = distributed.layout(hooks, "modules" if w > 1 else "data", a.batch)
    stream = StreamedActivations(model, windows, hooks, chunk_windows=a.chunk_windows, layout=lay)
    meta = stream.meta("random tokens")
    sae_cfgs = {h: sae_config_for(cfg, stream.widths[h], h, meta) for h in hooks}
    distributed.barrier()
    t = time.time()
    train_saes(sae_cfgs, cfg, {h: tmp / f"many{w}" / h for h in hooks}, stream, progress=False, device=device, layout=lay)
    out["modules SAE inputs/s"] = a.steps * a.batch * a.layers / (time.time() - t)

    data = torch.randn(a.dp_batch * 4, a.d_model, generator=torch.Generator().manual_seed(0))

    def batches(start):
        for s in range(start, 10**9):
            yield data[(s % 4) * a.dp_batch:(s % 4 + 1) * a.dp_batch]

    cfg = TrainConfig(recipe="batchtopk", k=a.k, batch_size=a.dp_batch, steps=a.dp_steps + 2, lr=1e-3,
                      checkpoint_every=10**6, hist_every=0, normalize_input=False, init_b_dec_median=False)
    tr = Trainer(SAEConfig(d_in=a.d_model, d_sae=a.dp_expansion * a.d_model), cfg, tmp / f"dp{w}", batches, progress=False,
                 device=device, data_parallel=True, writer=distributed.is_main())
    tr.start(resume=False)
    it = batches(0)
    for _ in range(2):  # warm-up
        tr.train_step(distributed.local_rows(next(it)))
    distributed.barrier()
    t = time.time()
    for _ in range(a.dp_steps):
        tr.train_step(distributed.local_rows(next(it)))
    distributed.barrier()
    out["data inputs/s"] = a.dp_steps * a.dp_batch / (time.time() - t)
    distributed.shutdown()
    return out


def launch(a, nproc: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(_free_port()), str(Path(__file__).resolve()), "--worker", "--tmp", tmp, "--result", str(result),
               *a.passthrough]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{nproc} process(es) failed:\n{r.stderr[-3000:]}")
        return json.loads(result.read_text())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    ap.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one, else the CPU), cpu or cuda")
    ap.add_argument("--nproc", type=int, default=None, help="processes of the scaled-out setting (default: 2 on the CPU, "
                    "the number of GPUs on CUDA)")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--windows", type=int, default=128, help="windows harvested and streamed")
    ap.add_argument("--steps", type=int, default=8, help="many-SAE steps")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--chunk-windows", type=int, default=32)
    ap.add_argument("--dp-batch", type=int, default=4096)
    ap.add_argument("--dp-expansion", type=int, default=32)
    ap.add_argument("--dp-steps", type=int, default=5)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.layers, a.d_model, a.heads, a.ctx, a.vocab, a.windows = 4, 64, 4, 32, 500, 16
        a.steps, a.batch, a.expansion, a.chunk_windows, a.dp_batch, a.dp_expansion, a.dp_steps = 2, 64, 4, 4, 256, 4, 2
    if a.worker:
        out = worker(a)
        if int(os.environ.get("RANK", "0")) == 0:
            Path(a.result).write_text(json.dumps(out))
        return
    a.passthrough = [x for x in (argv if argv is not None else sys.argv[1:]) if x != "--quick"]
    if a.quick:
        a.passthrough.append("--quick")
    gpus = torch.cuda.device_count() if a.device != "cpu" and torch.cuda.is_available() else 0
    cores = os.cpu_count() or 1
    n = a.nproc or (gpus or 2)
    print(f"GPT-2-small-shaped model (random weights, bf16), {a.layers} layers; harvest {a.windows} windows x {a.ctx}; "
          f"modules: {a.layers} SAEs x {a.expansion}x, {a.steps} steps x {a.batch}; data: 1 SAE {a.d_model} -> "
          f"{a.dp_expansion * a.d_model}, {a.dp_steps} steps x {a.dp_batch}; BatchTopK k={a.k}")
    if gpus:
        settings = [("1 process", 1, cores), (f"{n} processes", n, max(1, cores // n))]
    else:
        settings = [(f"1 process x {cores} threads", 1, cores), ("1 process x 1 thread", 1, 1),
                    (f"{n} processes x {max(1, cores // n)} thread(s)", n, max(1, cores // n))]
    rows = {}
    for label, nproc, threads in settings:
        if nproc > 1 and gpus and nproc > gpus:
            print(f"{label}: skipped ({gpus} GPU(s); NCCL needs one GPU per process)")
            continue
        rows[label] = launch(a, nproc, threads)
    keys = list(next(iter(rows.values())))
    print(f"\n| setting | {' | '.join(keys)} |\n|---|" + "---|" * len(keys))
    for label, r in rows.items():
        print(f"| {label} | " + " | ".join(f"{r[k]:,.0f}" for k in keys) + " |")
    base = rows.get("1 process x 1 thread") or rows.get("1 process")
    scaled = [r for label, r in rows.items() if label.startswith(f"{n} processes")]
    if scaled and n > 1:
        print(f"\nscaling efficiency, {n} processes vs {n} x one process" + (" x 1 thread" if not gpus else "") + ": "
              + ", ".join(f"{k} {100 * scaled[0][k] / (n * base[k]):.0f}%" for k in keys))
        if not gpus:
            one = rows[f"1 process x {cores} threads"]
            print(f"{n} processes vs 1 process with all {cores} threads: "
                  + ", ".join(f"{k} {scaled[0][k] / one[k]:.2f}x" for k in keys))


if __name__ == "__main__":
    main()
