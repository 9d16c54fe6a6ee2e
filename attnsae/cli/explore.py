"""Tracing prompts through features: `trace` (one prompt, top features and a recursive DFA tree, as files) and
`explore` (the same, interactively, in a local web app)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import args as a

MAX_PROMPT_TOKENS = 512  # a trace holds every layer's pattern: [n_heads, n, n] per layer


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "trace", help="one prompt through the SAEs: top features at every position and layer, and a feature's recursive "
        "DFA (RDFA) tree back through sources, components and upstream features",
        description="Runs the prompt (BOS first, as in training) in float32 with an attention SAE per --sae, and writes "
        "trace.json: every position's top --k features per layer. With --feature L F POS it also traces that feature "
        "(layer L, index F, at position POS): DFA by head and by source; each of the --sources strongest sources split "
        "into the residual stream's components (embedding, each earlier attention and MLP output), each earlier "
        "attention output into its SAE's features, and the residual stream into --resid-sae features; then the "
        "--features strongest upstream attention features are traced the same way at their source, --depth levels "
        "down. Attention patterns and norm scales are frozen at the prompt's values, so every split sums exactly; "
        "MLP outputs are not split (not linear).",
        epilog="example: attnsae trace --sae runs/every_head/L9/sae --sae runs/every_head/L15/sae --prompt 'When Mary and "
        "John went to the store, John gave a drink to' --feature 15 1200 -1 --out runs/trace",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_saes(p)
    p.add_argument("--prompt", required=True, help=f"the text (at most {MAX_PROMPT_TOKENS} tokens)")
    p.add_argument("--k", type=a.POSITIVE, default=5, help="top features per position and layer (default: %(default)s)")
    p.add_argument("--feature", nargs=3, type=int, metavar=("LAYER", "FEATURE", "POS"),
                   help="trace this feature; POS counts tokens from 0 = BOS, negative from the end")
    p.add_argument("--depth", type=a.int_range(1, 6), default=2, help="levels of recursion (default: %(default)s)")
    p.add_argument("--sources", type=a.int_range(1, 20), default=3,
                   help="strongest sources split per node (default: %(default)s)")
    p.add_argument("--features", type=a.int_range(1, 20), default=3,
                   help="strongest upstream attention features followed per source (default: %(default)s)")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=run_trace, model_dtype="float32")

    p = sub.add_parser(
        "explore", help="the circuit explorer: a local web app to trace any prompt through features by recursive DFA",
        description="Loads the model (float32) and the SAEs once and serves the explorer page and its JSON API (see "
        "/api/docs) on http://HOST:PORT. Type a prompt, pick a token and a feature, expand its sources into the residual "
        "stream's parts and upstream attention features, and trace those in turn. Listens on 127.0.0.1 only unless "
        "--host says otherwise.",
        epilog="example: attnsae explore --sae runs/every_head/L9/sae --sae runs/every_head/L15/sae --dashboards "
        "runs/every_head/heads",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_saes(p)
    p.add_argument("--dashboards", default=None, help="a report folder (attnsae report / every-head's heads/): features "
                   "link to their dashboards there")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=a.int_range(1, 65535), default=8000, help="(default: %(default)s)")
    p.set_defaults(fn=run_explore)

    p = sub.add_parser(
        "qk-pairs", help="a head's attention score over IOI prompts split into (query feature, key feature) pairs, and "
        "how much of its variance the top pairs explain (the paper's appendix K.3)",
        description="For each of --ioi IOI prompts (half ABBA, half BABA), the score of head --head of layer --layer "
        "from the final position to --to (the indirect object, or the subject's first or second mention) is split into "
        "query part x key part terms: with --resid, both residual streams into the residual SAE's features at that "
        "layer (its error and bias included); else into embeddings, MLP outputs and each earlier layer's attention-SAE "
        "features. Terms are matched across prompts by their pair of names; a pair's share is Cov(term, score) / "
        "Var(score), so all shares sum to 1. Writes qk_pairs.json with the top --top pairs.",
        epilog="example: attnsae qk-pairs --sae runs/every_head/L5/sae --resid-sae runs/resid9/sae --layer 9 --head 6 "
        "--resid --ioi 100 --to s2 --out runs/qk",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_saes(p)
    p.add_argument("--layer", type=a.COUNT, required=True, help="the head's layer")
    p.add_argument("--head", type=a.COUNT, required=True)
    p.add_argument("--ioi", type=a.int_range(2, 1000), default=100, help="IOI prompts (default: %(default)s)")
    p.add_argument("--to", choices=("io", "s1", "s2"), default="io", help="the key position (default: %(default)s)")
    p.add_argument("--resid", action="store_true", help="split the streams into the residual SAE's features at --layer")
    p.add_argument("--top", type=a.int_range(1, 100), default=8, help="pairs to report (default: %(default)s)")
    p.add_argument("--seed", type=a.COUNT, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=run_qk_pairs, model_dtype="float32")


def _add_saes(p) -> None:
    """The SAEs (and model, device) of a trace."""
    p.add_argument("--sae", action="append", required=True, help="an attention SAE folder (blocks.L.attn.hook_z); repeat")
    p.add_argument("--resid-sae", action="append", default=[], help="a residual-stream SAE folder (blocks.L.hook_resid_pre) "
                   "to split the residual stream into features; repeat")
    a.add_model(p, None, "default: the model named in the SAEs' configs")
    a.add_device(p)


def _load(args):
    """(model, {layer: attention SAE}, {layer: residual SAE}) from the command line, checked against each other."""
    from ..evals import check_compatible
    from ..evals.splice import model_for_saes
    from ..sae import load_sae

    saes = [load_sae(p) for p in args.sae]
    resid = [load_sae(p) for p in args.resid_sae]
    model = model_for_saes(saes + resid, args.model, dtype="float32", device=args.device)
    for sae in saes + resid:
        check_compatible(model, sae)
    return model, _by_layer(saes, "--sae"), _by_layer(resid, "--resid-sae")


def run_explore(args) -> None:
    import uvicorn

    from ..explorer import Explorer, create_app

    if args.dashboards and not (Path(args.dashboards) / "features").is_dir():
        raise ValueError(f"--dashboards {args.dashboards}: no features/ folder there (give a report folder)")
    model, attn, resid = _load(args)
    app = create_app(Explorer(model, attn, resid, args.dashboards))
    print(f"circuit explorer on http://{args.host}:{args.port}/ (API docs at /api/docs); Ctrl-C stops it")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def run_trace(args) -> None:
    from ..attribution.trace import trace_prompt
    from ..data.windows import prompt_tokens

    model, attn, resid = _load(args)
    tokens = prompt_tokens(model, args.prompt, MAX_PROMPT_TOKENS)
    feature = None
    if args.feature:
        layer, f, pos = args.feature
        feature = (layer, f, pos + len(tokens) if pos < 0 else pos)
    a.report(trace_prompt(model, attn, tokens, args.prompt, resid, args.k, feature, args.depth,
                          args.sources, args.features), args)


def run_qk_pairs(args) -> None:
    from ..attribution.qk import qk_pairs
    from ..experiments.ioi.prompts import encode, ioi_prompts, ioi_vocab

    model, attn, resid = _load(args)
    if args.layer >= model.cfg.n_layers:
        raise ValueError(f"--layer {args.layer} out of range: {model.cfg.name} has {model.cfg.n_layers} layers")
    if args.resid and args.layer not in resid:
        raise ValueError(f"--resid needs a --resid-sae at layer {args.layer} (given: {sorted(resid) or 'none'})")
    vocab = ioi_vocab(model)
    batch = encode(vocab, ioi_prompts(vocab, (args.ioi + 1) // 2, args.seed))  # ABBA and BABA in turn
    keys = getattr(batch, args.to)
    prompts = [(batch.text[i], batch.tokens[i, : int(batch.length[i])], int(batch.end[i]), int(keys[i]))
               for i in range(len(batch))][: args.ioi]
    a.report(qk_pairs(model, attn, resid, prompts, args.layer, args.head, args.resid, args.top), args)


def _by_layer(saes, option: str) -> dict:
    out = {}
    for sae in saes:
        if sae.cfg.layer is None:
            raise ValueError(f"{option}: {sae.cfg.hook_name} is not in a block")
        if sae.cfg.layer in out:
            raise ValueError(f"{option}: two SAEs for layer {sae.cfg.layer}")
        out[sae.cfg.layer] = sae
    return out
