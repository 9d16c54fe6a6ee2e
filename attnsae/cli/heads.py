"""The head-role experiments: behaviour scores, head ablation, induction by prefix length, IOI."""

from __future__ import annotations

import argparse

from ..data import WindowSpec, load_windows
from ..evals.splice import model_for_saes
from ..experiments.head_ablation import run_head_ablation, tasks_from
from ..experiments.head_scores import run_head_scores
from ..experiments.induction import run_corpus_prefix, run_prefix_curves, strongest_induction_heads
from ..experiments.ioi import parse_sections, run_ioi
from ..models import DEFAULT_MODEL, load_model
from ..models.hooks import parse_heads
from ..sae import load_sae
from . import args as a


def add_parsers(sub) -> None:
    p = sub.add_parser("head-scores",
                       help="induction, previous-token and duplicate-token scores of every head (table + heat map)")
    a.add_model(p)
    p.add_argument("--n", type=a.POSITIVE, default=50, help="random tokens per half of each repeated sequence")
    p.add_argument("--batch", type=a.POSITIVE, default=32)
    a.add_seed(p)
    a.add_device(p)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=run_head_scores_cmd)

    p = sub.add_parser("ablate-heads", help="zero-ablate each head of a layer; mean change in answer loss on templated tasks")
    a.add_model(p)
    p.add_argument("--layer", type=a.COUNT, required=True)
    p.add_argument("--task", action="append", choices=["digits", "url"], default=None,
                   help="built-in task (default: both): digits = '{noun} {digit}, {filler} {noun}| {digit}'; "
                        "url = a repeated video id")
    p.add_argument("--template", action="append", default=[], help='JSON file {"name", "template": "prompt with {slot}|answer", '
                   '"slots": {"slot": [values] or "random:base64:8"}}; repeatable')
    p.add_argument("--n", type=a.POSITIVE, default=64, help="examples per task")
    a.add_seed(p)
    a.add_device(p)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=run_ablate_heads)

    p = sub.add_parser("induction", help="induction heads by prefix length: synthetic repeats (attention, DLA), "
                       "real text (prefix lengths where a head attends, long-prefix examples corrupted to 1-prefix)")
    a.add_model(p)
    p.add_argument("--head", action="append", default=[],
                   help="LAYER.HEAD, repeatable (default: the --top strongest induction heads)")
    p.add_argument("--top", type=a.POSITIVE, default=5)
    p.add_argument("--n", type=a.POSITIVE, default=64,
                   help="sequences per prefix length; real long-prefix examples corrupted per head")
    p.add_argument("--corpus", default="default", help="real text for the prefix-length distribution (default: %(default)s)")
    p.add_argument("--corpus-windows", type=a.COUNT, default=400, help="held-out windows of real text; 0 skips that part")
    p.add_argument("--ctx", type=a.CTX, default=128, help="tokens per real-text window (default: %(default)s)")
    p.add_argument("--threshold", type=a.FRACTION, default=0.3,
                   help="real text: count (dest, src) where a head attends above this")
    a.add_seed(p)
    a.add_device(p)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=run_induction)

    from ..jobs.qk_study import PROMPT, QKStudyConfig, qk_train_config

    d = QKStudyConfig(heads=[])
    p = sub.add_parser(
        "qk-study", help="query/key SAEs of chosen heads (the seed 002 study): train, fidelity, pattern KL, positional "
        "and token features, QK matrices, reconstructed patterns, a key-feature intervention, dashboards",
        formatter_class=argparse.RawDescriptionHelpFormatter, description="""\
For each --head L.H: a query SAE on that query head (hook_q[H], or hook_rot_q[H] with --post-rotary) and
a key SAE on the key/value head it reads (hook_k[G]; with grouped-query attention it serves several
query heads, named everywhere), all trained from one model stream; then
  fidelity      each SAE spliced into its own head only: CE recovered against zero-ablating that head
  pattern       KL(real || reconstructed pattern) from reconstructed q, k, both; the head's induction and
                previous-token scores from them on repeated random tokens
  positional    each feature's top --n-top activations: position histogram, mode; "I am [X]" (token there)
                and "I follow [X]" (token before) features
  matrix        query x key feature scores by modal position; score against relative offset (rotary)
  prompt        real vs reconstructed pattern on --prompt; features whose removal moves one score most
  intervention  an "I follow [X]" key feature scaled by --scale: induction on X vs on the other tokens
  objective     TopK pairs trained with MSE + --pattern-coeff x pattern KL vs MSE only, at equal L0
and out/index.html with every figure and dashboard. Resumable: a stage whose output exists is skipped.""")
    a.add_model(p)
    p.add_argument("--head", action="append", required=True, help="query head LAYER.HEAD, repeatable")
    p.add_argument("--post-rotary", action="store_true", help="SAEs on hook_rot_q / hook_rot_k (after the rotary embedding)")
    p.add_argument("--corpus", default="default", help="(default: %(default)s)")
    p.add_argument("--ctx", type=a.CTX, default=d.windows.ctx, help="tokens per window (default: %(default)s)")
    p.add_argument("--eval-windows", type=a.POSITIVE, default=d.eval_windows, help="held-out windows for CE, KL and "
                   "pattern KL (default: %(default)s)")
    p.add_argument("--top-windows", type=a.POSITIVE, default=d.top_windows, help="windows scanned for each feature's "
                   "top activations (default: %(default)s)")
    p.add_argument("--n-top", type=a.POSITIVE, default=d.n_top, help="top activations per feature (default: %(default)s)")
    p.add_argument("--prompt", default=PROMPT, help="prompt for the reconstructed pattern (default: %(default)r)")
    p.add_argument("--x-token", default=None, help="the intervention's token, one token (default: the token the clearest "
                   "'I follow [X]' key feature follows)")
    p.add_argument("--scale", type=a.NONNEG, default=d.scale, help="scale of the 'I follow [X]' key feature (0 removes it; "
                   "default: %(default)s)")
    p.add_argument("--pattern-coeff", type=a.NONNEG, default=d.pattern_coeff, help="pattern-KL weight of the objective "
                   "comparison, 0 skips it (default: %(default)s)")
    p.add_argument("--objective-steps", type=a.POSITIVE, default=d.objective_steps, help="(default: %(default)s)")
    a.add_train(p, qk_train_config())
    a.add_device(p)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=run_qk_study_cmd)

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
    a.add_model(p, None, "default: the model named in the SAEs' config, else smollm2-135m")
    p.add_argument("--sae", nargs="+", action="extend", default=[], help="SAE folders on attn.hook_z, at most one per layer "
                   "(layers without one are skipped)")
    p.add_argument("--out", required=True)
    p.add_argument("--parts", nargs="+", choices=["heads", "splice", "features", "path", "noise"],
                   default=["heads", "splice", "features", "path", "noise"])
    p.add_argument("--n", type=a.POSITIVE, default=64, help="prompts per order (ABBA and BABA each; default: %(default)s)")
    p.add_argument("--n-abc", type=a.POSITIVE, default=128, help="ABC prompts for the mean ablations (default: %(default)s)")
    p.add_argument("--s-inhibition", action="append", default=[], metavar="L.H",
                   help="use these S-inhibition heads for path patching instead of the found ones; repeatable")
    p.add_argument("--k-s-inhibition", type=a.POSITIVE, default=4, help="found S-inhibition heads used for path patching")
    p.add_argument("--noise-layers", type=a.COUNT, nargs="+", default=None,
                   help="default: the 2 strongest induction heads' layers")
    p.add_argument("--feature-layers", type=a.COUNT, nargs="+", default=None, help="SAE layers for features/path (default: those "
                   "holding the 2 strongest induction or duplicate-token heads, else all)")
    p.add_argument("--cross-section", action="append", default=[], metavar="L1,L2",
                   help="layers spliced together, repeatable (default: the layers of the model's duplicate-token, "
                        "previous-token, induction, S-inhibition and name-mover heads)")
    p.add_argument("--min-attn", type=a.FRACTION, default=0.1, help="attention to S2 or IO a head needs to be a candidate")
    a.add_model_dtype(p, "float32", help="float32 (default): bfloat16 changes single-prompt logit diffs by ~0.1 on SmolLM2")
    p.add_argument("--chunk", type=a.POSITIVE, default=256, help="rows per forward when batching interventions")
    p.add_argument("--threads", type=a.POSITIVE, default=None, help="torch CPU threads (1 is 2x faster on a 2-core machine "
                   "another job is using)")
    a.add_seed(p)
    a.add_device(p)
    p.set_defaults(fn=run_ioi_cmd)


def run_head_scores_cmd(args) -> None:
    a.report(run_head_scores(load_model(args.model, device=args.device), n=args.n, batch=args.batch, seed=args.seed), args)


def run_ablate_heads(args) -> None:
    tasks = tasks_from(args.task, args.template)
    a.report(run_head_ablation(load_model(args.model, device=args.device), args.layer, tasks, n=args.n, seed=args.seed), args)


def run_induction(args) -> None:
    model = load_model(args.model, device=args.device)
    heads = parse_heads(args.head, model) if args.head else strongest_induction_heads(model, args.top)
    a.report(run_prefix_curves(model, heads, n=args.n, seed=args.seed), args)
    if args.corpus_windows:
        _, held = load_windows(model, WindowSpec(corpus=args.corpus, ctx=args.ctx))
        a.report(run_corpus_prefix(model, heads, held[: args.corpus_windows], threshold=args.threshold, n=args.n,
                                   seed=args.seed), args)


def run_ioi_cmd(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    saes = [load_sae(p) for p in args.sae]
    model = model_for_saes(saes, args.model or (None if saes else DEFAULT_MODEL), dtype=args.model_dtype, device=args.device)
    a.report(run_ioi(model, saes, n=args.n, n_abc=args.n_abc, seed=args.seed, parts=args.parts,
                     s_inhibition=parse_heads(args.s_inhibition, model) if args.s_inhibition else None,
                     k_s_inhibition=args.k_s_inhibition, noise_layers=args.noise_layers,
                     sections=parse_sections(args.cross_section, model.cfg) if args.cross_section else None,
                     feature_layers=args.feature_layers, min_attn=args.min_attn, chunk=args.chunk), args)


def run_qk_study_cmd(args) -> None:
    from ..jobs.qk_study import QKStudyConfig, qk_train_config, run_qk_study

    cfg = QKStudyConfig(heads=args.head, out=args.out, model=args.model, post_rotary=args.post_rotary,
                        windows=WindowSpec(corpus=args.corpus, ctx=args.ctx), train=a.train_config(args, qk_train_config()),
                        eval_windows=args.eval_windows, top_windows=args.top_windows, n_top=args.n_top, prompt=args.prompt,
                        x_token=args.x_token, scale=args.scale, pattern_coeff=args.pattern_coeff,
                        objective_steps=args.objective_steps, device=args.device, seed=args.seed)
    print(f"report: {run_qk_study(cfg)}")
