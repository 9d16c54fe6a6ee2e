"""Whole jobs: `main` (one SAE, evaluated and reported), `sweep` (L1 frontier), `layers` (every layer), `every-head`."""

from __future__ import annotations

from pathlib import Path

from .. import distributed
from ..attribution.heads import RANKINGS
from ..data import WindowSpec
from ..jobs import JobConfig, LayersConfig, main_train_config, run_job, run_layers, run_sweep
from ..jobs.every_head import EveryHeadConfig, run_every_head
from ..jobs.layers import layers_train_config
from ..jobs.sweep import sweep_train_config
from . import args as a


def add_parsers(sub) -> None:
    job = JobConfig()
    p = sub.add_parser("main", help="the whole job on the defaults: harvest, train, evaluate, report (resumable)")
    a.add_data(p)
    a.add_train(p, main_train_config())
    a.add_device(p)
    p.add_argument("--out", default=job.out, help="run folder; re-running resumes (default: %(default)s)")
    p.add_argument("--train-windows", type=a.COUNT, default=job.train_windows,
                   help="windows to harvest for training, 0: all (default: %(default)s)")
    p.set_defaults(fn=run_main)

    p = sub.add_parser("sweep", help="train one SAE per L1 coefficient on a store; tabulate L0 vs CE recovered")
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True)
    a.add_model(p, None, "default: the store's model")
    p.add_argument("--eval-windows", type=a.POSITIVE, default=64, help="held-out windows for CE / KL (default: %(default)s)")
    a.add_train(p, sweep_train_config(), sweep=True)
    a.add_device(p)
    p.set_defaults(fn=run_sweep_cmd)

    p = sub.add_parser("layers", help="an SAE on every layer's attn.hook_z, all trained side by side from one model forward "
                       "per batch (resumable; finished layers are reused)")
    _add_layer_options(p, LayersConfig().out, "train only these layers (default: all)")
    p.set_defaults(fn=run_layers_cmd)

    study = EveryHeadConfig()
    p = sub.add_parser("every-head", help="the every-head study: an SAE on every layer, Table 1 for the model, every "
                       "head's top features (two rankings and their agreement), polysemanticity; one index page (resumable)")
    _add_layer_options(p, study.layers.out, "train and study only these layers (default: all)")
    p.add_argument("--eval-windows", type=a.POSITIVE, default=study.eval_windows,
                   help="held-out windows for CE / KL per layer (default: %(default)s)")
    p.add_argument("--sparsity-windows", type=a.POSITIVE, default=study.sparsity_windows,
                   help="held-out windows for L0, explained variance and dead counts (default: %(default)s)")
    p.add_argument("--report-windows", type=a.POSITIVE, default=study.report_windows,
                   help="store windows for the per-head statistics and dashboards (default: %(default)s)")
    p.add_argument("--top", type=a.POSITIVE, default=study.k, help="top features per head (default: %(default)s)")
    p.add_argument("--rank-by", choices=RANKINGS, default=study.rank_by,
                   help="rank a head's features by DFA variance share or weight-based attribution (default: %(default)s)")
    p.set_defaults(fn=run_every_head_cmd)


def _add_layer_options(p, out: str, layers_help: str) -> None:
    a.add_data(p, hook=False)  # the hooks are every layer's hook_z
    p.add_argument("--out", default=out, help="run folder: L<layer>/sae, and store/ with --store (default: %(default)s)")
    p.add_argument("--train-windows", type=a.COUNT, default=0,
                   help="use the first this many training windows, 0: all (default: %(default)s)")
    p.add_argument("--layers", type=a.COUNT, nargs="+", default=None, help=layers_help)
    p.add_argument("--store", action="store_true",
                   help="harvest every layer into <out>/store first and train from it (default: stream from the model "
                        "through a shuffled in-memory buffer; no disk)")
    p.add_argument("--chunk-windows", type=a.POSITIVE, default=LayersConfig.chunk_windows,
                   help="streaming: windows run through the model per buffer chunk; its rows are shuffled together, "
                        "and the buffer keeps at least 3 chunks (and 65,536 rows) of every layer (default: %(default)s)")
    a.add_model_dtype(p, help="model precision while harvesting (default: %(default)s)")
    a.add_train(p, layers_train_config())
    a.add_device(p)
    a.add_distributed(p, layouts=True)


def _layers_config(args) -> LayersConfig:
    return LayersConfig(model=args.model, out=args.out, windows=_windows(args), train_windows=args.train_windows or None,
                        layers=args.layers, store=args.store, chunk_windows=args.chunk_windows,
                        harvest_dtype=args.model_dtype, device=args.device, distribute=args.distribute,
                        train=a.train_config(args, layers_train_config()))


def _windows(args) -> WindowSpec:
    return WindowSpec(corpus=args.corpus, ctx=args.ctx, max_tokens=args.max_tokens)


def run_main(args) -> None:
    cfg = JobConfig(model=args.model, hook=args.hook, out=args.out, windows=_windows(args), device=args.device,
                    train_windows=args.train_windows or None, train=a.train_config(args, main_train_config()))
    report = run_job(cfg)
    print(f"\nreport: {report / 'report.md'}\n        {report / 'report.json'}")


def run_sweep_cmd(args) -> None:
    print(run_sweep(args.store, args.out, args.l1, a.train_config(args, sweep_train_config()), model_name=args.model,
                    eval_windows=args.eval_windows, device=args.device))


def run_layers_cmd(args) -> None:
    saes = run_layers(_layers_config(args))
    print(f"{len(saes)} SAEs: " + ", ".join(str(saes[l]) for l in sorted(saes)[:3]) + (" ..." if len(saes) > 3 else ""))


def run_every_head_cmd(args) -> None:
    cfg = EveryHeadConfig(layers=_layers_config(args), eval_windows=args.eval_windows,
                          sparsity_windows=args.sparsity_windows, report_windows=args.report_windows, k=args.top,
                          rank_by=args.rank_by)
    index = run_every_head(cfg)
    if distributed.is_main():  # the other ranks only trained
        print((Path(args.out) / "table1.md").read_text() + f"open {index}")
