"""Building blocks: list a model's hooks, harvest them into a store, train an SAE, evaluate it."""

from __future__ import annotations

import json
from pathlib import Path

from ..data import WindowSpec, harvest, load_windows
from ..data.store import STORE_DTYPES
from ..evals.splice import model_for_saes
from ..jobs import JobConfig, evaluate, write_report
from ..jobs.train import train_one
from ..models import load_model
from ..sae import load_sae
from . import args as a


def add_parsers(sub) -> None:
    p = sub.add_parser("hooks", help="list a model's hook names and shapes")
    a.add_model(p)
    p.add_argument("--layer", type=a.COUNT, default=0, help="only this layer's hooks (default: %(default)s)")
    a.add_device(p)
    p.set_defaults(fn=run_hooks)

    p = sub.add_parser("harvest", help="stream hook activations into an on-disk store (resumable)")
    a.add_data(p, multi_hook=True)
    p.add_argument("--out", required=True, help="store folder")
    p.add_argument("--windows", type=a.POSITIVE, default=None, help="harvest at most this many training windows")
    p.add_argument("--dtype", choices=list(STORE_DTYPES), default="bfloat16", help="store dtype (default: %(default)s)")
    a.add_model_dtype(p)
    p.add_argument("--keep-bos", action="store_true", help="also store position 0 (BOS)")
    a.add_device(p)
    a.add_distributed(p)
    p.set_defaults(fn=run_harvest)

    p = sub.add_parser("train", help="train an SAE from a store, or streamed from a model (resumes from the last checkpoint)")
    p.add_argument("--store", default=None, help="activation store made by `attnsae harvest`")
    p.add_argument("--hook", default=None, help="which hook of the store (default: its first), or the hook to stream")
    a.add_model(p, None, "stream from this model instead of a store")
    p.add_argument("--corpus", default="default", help="corpus when streaming (default: %(default)s)")
    p.add_argument("--ctx", type=a.CTX, default=WindowSpec().ctx, help="window length when streaming (default: %(default)s)")
    a.add_model_dtype(p, help="model precision when streaming (default: %(default)s)")
    p.add_argument("--out", required=True)
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint or SAE and train again")
    a.add_train(p)
    a.add_device(p)
    a.add_distributed(p)
    p.set_defaults(fn=run_train)

    job = JobConfig()
    p = sub.add_parser("eval", help="L0, CE recovered, KL, dead features of an SAE on held-out text")
    p.add_argument("--sae", required=True, help="SAE folder (ours or SAELens) or reference .pt")
    a.add_model(p, None, "default: the model named in the SAE's config")
    p.add_argument("--corpus", default="default")
    p.add_argument("--max-tokens", type=a.POSITIVE, default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--eval-windows", type=a.POSITIVE, default=job.eval_windows, help="(default: %(default)s)")
    p.add_argument("--zero-ablation-windows", type=a.COUNT, default=0, help="also tabulate zero-ablating every layer")
    a.add_device(p)
    p.set_defaults(fn=run_eval)


def run_hooks(args) -> None:
    model = load_model(args.model, device=args.device)
    c = model.cfg
    if args.layer >= c.n_layers:
        raise ValueError(f"--layer {args.layer} out of range: {c.name} has {c.n_layers} layers")
    print(f"{c.name}: {c.family}, {c.n_layers} layers, d_model {c.d_model}, {c.n_heads} query heads / "
          f"{c.n_kv_heads} kv heads, d_head {c.d_head}, processing {model.processing.to_dict()}")
    for name, shape in model.hook_shapes(args.layer).items():
        print(f"  {name:40s} {shape}")


def run_harvest(args) -> None:
    model = load_model(args.model, dtype=args.model_dtype, device=args.device)
    train_w, _ = load_windows(model, WindowSpec(corpus=args.corpus, ctx=args.ctx, max_tokens=args.max_tokens))
    store = harvest(model, train_w[: args.windows], args.out, args.hook or [JobConfig.hook], dtype=args.dtype,
                    skip_bos=not args.keep_bos, extra_meta={"corpus": args.corpus})
    print(f"{len(store):,} activations per hook in {args.out}")


def run_train(args) -> None:
    path = train_one(a.train_config(args), args.out, store=args.store, hook=args.hook, model=args.model,
                     windows=WindowSpec(corpus=args.corpus, ctx=args.ctx), model_dtype=args.model_dtype, restart=args.restart,
                     device=args.device)
    print(f"SAE saved to {path}")


def run_eval(args) -> None:
    sae = load_sae(args.sae)
    model = model_for_saes([sae], args.model, device=args.device)
    _, held = load_windows(model, WindowSpec(corpus=args.corpus, ctx=sae.cfg.context_size, max_tokens=args.max_tokens))
    cfg = JobConfig(eval_windows=args.eval_windows, zero_ablation_windows=args.zero_ablation_windows)
    report = evaluate(model, sae, held, cfg, Path(args.out))
    write_report(report, Path(args.out))
    print(json.dumps({"sparsity": report["sparsity"], "fidelity": report["fidelity"]}, indent=2))
