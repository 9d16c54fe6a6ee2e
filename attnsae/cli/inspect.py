"""Looking at features: every head's top features with dashboards, DFA variance shares, interpretability ratings."""

from __future__ import annotations

import json
from pathlib import Path

from ..evals import interpretability as interp
from ..features.dfa import variance_shares
from ..features.inputs import load_inputs
from ..viz.report import head_report
from . import args as a

STORE_ALL = "read the SAE's activations from this store (fast; its windows are shown)"


def add_parsers(sub) -> None:
    p = sub.add_parser("report", help="every head's top features (weight-based attribution) with dashboards, as JSON + HTML")
    a.add_inputs(p, 2000, multi_sae=True, store_windows="all", store_help=STORE_ALL)
    p.add_argument("--k", type=a.POSITIVE, default=10, help="top features per head (default: %(default)s)")
    p.add_argument("--random", type=a.COUNT, default=0, help="also dashboards for this many random live features")
    p.add_argument("--out", required=True, help="report folder (index.html inside)")
    p.set_defaults(fn=run_report)

    p = sub.add_parser("dfa", help="fraction of a feature's variance explained by each head and by source tokens (DFA)")
    a.add_inputs(p, 500, store_windows="first", store_help=STORE_ALL)
    p.add_argument("--feature", type=a.COUNT, required=True)
    p.add_argument("--threshold", type=a.NONNEG, nargs="+", default=[0.0], help="only tokens with activation above each")
    p.add_argument("--source-token", action="append", default=[], help="a single token (e.g. ' board') whose source "
                   "contributions are pooled; repeatable")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=run_dfa)

    p = sub.add_parser("rate", help="interpretability sampling: rate random live features, score with a 95%% interval")
    rsub = p.add_subparsers(dest="action", required=True)
    q = rsub.add_parser("sample", help="sample N random live features; write dashboards, rate.html and ratings.json")
    a.add_inputs(q, 2000, store_windows="all", store_help=STORE_ALL)
    q.add_argument("--n", type=a.POSITIVE, default=30, help="features to sample (paper: 30 per SAE)")
    q.add_argument("--out", required=True)
    q = rsub.add_parser("ask", help="rate the unrated features in the terminal (saved after every answer)")
    q.add_argument("ratings")
    q = rsub.add_parser("merge", help="merge verdicts exported from rate.html into the ratings file")
    q.add_argument("ratings")
    q.add_argument("exported")
    q = rsub.add_parser("score", help="percent interpretable with a Clopper-Pearson 95%% interval")
    q.add_argument("ratings")
    p.set_defaults(fn=run_rate)


def run_report(args) -> None:
    inputs = load_inputs(a.input_spec(args))
    r = head_report(inputs.source, inputs.saes, args.out, k=args.k, n_random=args.random, seed=args.seed,
                    names=[str(p) for p in args.sae])
    t = r["timing"]
    print(f"{sum(len(l['heads']) for l in r['layers'])} heads, {t['n_dashboards']} dashboards over {r['n_tokens']:,} tokens "
          f"in {t['total_seconds']:.0f} s (statistics pass {t['stats_seconds']:.0f} s = "
          f"{t['feature_tokens_per_second'] / 1e6:.1f}M feature-tokens/s; dashboards {t['dashboards_seconds']:.0f} s)")
    print(f"open {Path(args.out) / 'index.html'}")


def run_dfa(args) -> None:
    a.one_sae(args, "dfa")
    inputs = load_inputs(a.input_spec(args))
    a.report(variance_shares(inputs.model, inputs.saes[0], args.feature, inputs.windows, thresholds=args.threshold,
                             source_tokens=args.source_token), args)


def run_rate(args) -> None:
    if args.action == "sample":
        a.one_sae(args, "rate sample")
        inputs = load_inputs(a.input_spec(args))
        feats, ratings = interp.sample(inputs.source, inputs.saes[0], args.sae[0], args.n, args.out, args.seed)
        print(f"{len(feats)} features sampled. Open {Path(args.out) / 'rate.html'} and export, then `attnsae rate merge "
              f"{ratings} ratings-export.json`; or rate in the terminal: `attnsae rate ask {ratings}`")
        return
    if args.action == "ask":
        interp.ask(args.ratings)
    elif args.action == "merge":
        interp.merge_export(args.ratings, json.loads(Path(args.exported).read_text()))
        print(f"merged into {args.ratings}")
    print(interp.score_summary(interp.score(interp.load_ratings(args.ratings))))
