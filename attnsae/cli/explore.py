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


def _add_saes(p) -> None:
    """The SAEs (and model, device) of a trace."""
    p.add_argument("--sae", action="append", required=True, help="an attention SAE folder (blocks.L.attn.hook_z); repeat")
    p.add_argument("--resid-sae", action="append", default=[], help="a residual-stream SAE folder (blocks.L.hook_resid_pre) "
                   "for step 3; repeat")
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


def _by_layer(saes, option: str) -> dict:
    out = {}
    for sae in saes:
        if sae.cfg.layer is None:
            raise ValueError(f"{option}: {sae.cfg.hook_name} is not in a block")
        if sae.cfg.layer in out:
            raise ValueError(f"{option}: two SAEs for layer {sae.cfg.layer}")
        out[sae.cfg.layer] = sae
    return out
