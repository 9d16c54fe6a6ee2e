"""What the commands share: range-checked number types, argument groups whose defaults come from the config
dataclasses, the SAE/model/windows inputs of feature commands, and how a result is reported."""

from __future__ import annotations

import argparse
import math

from .. import distributed
from ..data import DEFAULT_CORPUS, WindowSpec
from ..jobs import JobConfig
from ..models import DEFAULT_MODEL, MODEL_DTYPES, resolve_device
from ..models.device import DEVICE_HELP
from ..sae import RECIPES, TrainConfig


def _number(kind, lo=None, hi=None, lo_open=False, what=""):
    """An argparse type: `kind` within [lo, hi] (lo excluded when lo_open); the message says the range."""
    def parse(text: str):
        try:
            x = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(x):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if (lo is not None and (x < lo or (lo_open and x == lo))) or (hi is not None and x > hi):
            raise argparse.ArgumentTypeError(f"{text} is out of range: {what}")
        return x
    return parse


POSITIVE = _number(int, 1, what="give a whole number >= 1")
COUNT = _number(int, 0, what="give a whole number >= 0")  # 0 means none / skip, as each option says
SEED = _number(int, 0, 2**63 - 1, what="give a whole number from 0 to 2^63 - 1")
NONNEG = _number(float, 0.0, what="give a number >= 0")
POSITIVE_FLOAT = _number(float, 0.0, lo_open=True, what="give a number > 0")
FRACTION = _number(float, 0.0, 1.0, what="give a number from 0 to 1")
PART = _number(float, 0.0, 1.0, lo_open=True, what="give a number > 0 and <= 1")
CTX = _number(int, 2, 1 << 20, what="give at least 2 tokens per window (BOS and one more)")


def int_range(lo: int, hi: int):
    """An argparse type: a whole number from lo to hi."""
    return _number(int, lo, hi, what=f"give {lo} to {hi}")

DTYPE_CHOICES = list(MODEL_DTYPES)


def _device(text: str) -> str:
    """An argparse type: a device that exists here (models.device.resolve_device says why not)."""
    try:
        resolve_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_device(p) -> None:
    p.add_argument("--device", type=_device, default="auto", help=f"{DEVICE_HELP} (default: %(default)s)")


def add_distributed(p, layouts: bool = False) -> None:
    """The options of a command that runs under torchrun (`distributed`)."""
    g = p.add_argument_group("torchrun", "launched as `torchrun --nproc_per_node N [--nnodes M ...] -m attnsae ...`, the "
                             "ranks share the work (without torchrun these do nothing)")
    g.add_argument("--dist-backend", choices=distributed.BACKENDS, default="auto",
                   help="auto: nccl with GPUs, gloo without (default: %(default)s)")
    g.add_argument("--dist-timeout", type=POSITIVE, default=distributed.DEFAULT_TIMEOUT_S,
                   help="seconds a rank waits for the others before it stops with an error (default: %(default)s)")
    if layouts:
        g.add_argument("--distribute", choices=distributed.LAYOUTS, default="auto",
                       help="data: every rank trains every SAE on its slice of each batch; modules: each rank trains "
                            "some layers' SAEs on whole batches (activations exchanged); auto: modules when there are "
                            "at least as many layers as ranks (default: %(default)s)")


def add_model(p, default: str | None = DEFAULT_MODEL, help: str | None = None) -> None:
    p.add_argument("--model", default=default, help=help or "alias (smollm2-135m, gemma3-270m), .gguf path, local HF dir or "
                   "hub id (default: %(default)s)")


def add_model_dtype(p, default: str = "bfloat16", help: str = "model precision (default: %(default)s)") -> None:
    p.add_argument("--model-dtype", choices=DTYPE_CHOICES, default=default, help=help)


def add_seed(p) -> None:
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default: %(default)s)")


def add_data(p, multi_hook: bool = False, hook: bool = True) -> None:
    """--model, --corpus, --ctx, --max-tokens and --hook (one, or repeatable for a harvest; none with hook=False)."""
    windows = WindowSpec()
    add_model(p)
    p.add_argument("--corpus", default=DEFAULT_CORPUS, help="'default' (offline State of the Union + Moby-Dick), a "
                   "file/folder of .txt/.jsonl, or a hub dataset (default: %(default)s)")
    p.add_argument("--ctx", type=CTX, default=windows.ctx, help="tokens per window, BOS at position 0 (default: %(default)s)")
    p.add_argument("--max-tokens", type=POSITIVE, default=None, help="tokenize at most this many corpus tokens")
    if not hook:
        return
    if multi_hook:
        p.add_argument("--hook", action="append", default=None, help="hook to harvest, repeatable; "
                       f"'blocks.L.attn.hook_q[H]' selects one head (default: {JobConfig.hook})")
    else:
        p.add_argument("--hook", default=JobConfig.hook, help="TransformerLens hook name (default: %(default)s)")


# The options that set a TrainConfig field only some recipes read (Recipe.options): given explicitly with a
# recipe that does not read it, the command refuses it rather than silently ignoring it.
RECIPE_OPTIONS = {"l1_coeff": "--l1", "k": "--k", "l0_coeff": "--l0-coeff", "bandwidth": "--bandwidth",
                  "init_threshold": "--init-threshold", "prefixes": "--prefixes", "resample_every": "--resample-every",
                  "firing_floor": "--firing-floor"}


def add_train(p, base: TrainConfig | None = None, sweep: bool = False) -> None:
    """The recipe and its options; defaults are `base`'s (a job's recipe), else TrainConfig's. The recipe-specific
    options (RECIPE_OPTIONS) default to None, so that `train_config` can tell which were given."""
    base = base or TrainConfig()
    p.add_argument("--recipe", choices=list(RECIPES), default=base.recipe,
                   help="%(choices)s (l1: the paper's recipe, unit-norm decoder and resampling; l1_decnorm: L1 x |W_dec|, "
                        "their Gemma-2B SAE; topk: k active latents, AuxK; batchtopk: k on average over the batch; "
                        "jumprelu: learned thresholds, L0 penalty; matryoshka_batchtopk: batchtopk whose nested prefixes "
                        "each reconstruct) (default: %(default)s)")
    if sweep:
        p.add_argument("--l1", type=NONNEG, nargs="+", required=True, help="L1 coefficients, one SAE each")
    else:
        p.add_argument("--l1", type=NONNEG, default=None,
                       help=f"l1, l1_decnorm: L1 coefficient on unit-scaled inputs, E|x| = sqrt(d_in) (default: {base.l1_coeff})")
    p.add_argument("--k", type=POSITIVE, default=None, help="topk: active latents per input; batchtopk, "
                   f"matryoshka_batchtopk: per input on average over a batch (default: {base.k})")
    p.add_argument("--l0-coeff", type=NONNEG, default=None, help=f"jumprelu: weight of the L0 penalty (default: {base.l0_coeff})")
    p.add_argument("--bandwidth", type=POSITIVE_FLOAT, default=None, help="jumprelu: kernel width of the threshold's "
                   f"straight-through gradient, on unit-scaled inputs (default: {base.bandwidth})")
    p.add_argument("--init-threshold", type=POSITIVE_FLOAT, default=None, help="jumprelu: every latent's threshold at "
                   f"the start, on unit-scaled inputs (default: {base.init_threshold})")
    p.add_argument("--prefixes", type=PART, nargs="+", default=None, help="matryoshka_batchtopk: nested prefix sizes as "
                   f"rising fractions of d_sae; the whole dictionary is always the last (default: {list(base.prefixes)})")
    p.add_argument("--resample-every", type=POSITIVE, default=None, help="l1, topk, batchtopk, matryoshka_batchtopk: "
                   "re-initialise dead latents towards high-loss inputs every this many steps, at most "
                   f"{base.n_resamples} times (default: {base.resample_every or 'l1: steps / 5; the others: never'})")
    p.add_argument("--firing-floor", type=FRACTION, default=None, help="batchtopk, matryoshka_batchtopk: keep every "
                   "latent firing on at least this fraction of inputs, by lowering the threshold of a latent while it is "
                   f"silent; the saved SAE has a threshold per latent; 0: off (default: {base.firing_floor})")
    p.add_argument("--expansion", type=POSITIVE, default=base.expansion, help="d_sae = expansion * d_in (default: %(default)s)")
    p.add_argument("--steps", type=POSITIVE, default=base.steps, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=POSITIVE, default=base.batch_size, help="(default: %(default)s)")
    p.add_argument("--lr", type=POSITIVE_FLOAT, default=base.lr, help="(default: %(default)s)")
    p.add_argument("--lr-warmup", type=COUNT, default=base.lr_warmup, help="steps of linear lr warm-up from 0; fewer "
                   "latents die under the first large Adam steps (default: %(default)s)")
    p.add_argument("--lr-decay", type=FRACTION, default=base.lr_decay_frac, help="decay the lr linearly to 0 over this "
                   "final fraction of the steps (default: %(default)s)")
    p.add_argument("--init-subspace", type=FRACTION, default=base.init_subspace, help="draw the initial decoder (and "
                   "encoder) directions inside the span of the top principal directions holding this fraction of the "
                   "data's variance: attention outputs are low-rank, so random directions leave latents dead; 0: "
                   "uniformly random (default: %(default)s)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=base.dtype, help="matmul precision while training (default: "
                   "%(default)s)")
    p.add_argument("--seed", type=SEED, default=base.seed, help="(default: %(default)s)")


def train_config(args, base: TrainConfig | None = None) -> TrainConfig:
    """`base` (or TrainConfig()) with the recipe options given on the command line; an option the recipe does not
    read (its Recipe.options) is an error."""
    from dataclasses import replace

    recipe = RECIPES[args.recipe]
    given = {}
    for field, flag in RECIPE_OPTIONS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        if field not in recipe.options:
            raise ValueError(f"{flag} does not apply to --recipe {args.recipe}")
        given[field] = tuple(value) if isinstance(value, list) else value
    if isinstance(args.l1, list):  # a sweep sets l1_coeff per SAE
        del given["l1_coeff"]
    cfg = replace(base or TrainConfig(), recipe=args.recipe, expansion=args.expansion, steps=args.steps,
                  batch_size=args.batch_size, lr=args.lr, lr_warmup=args.lr_warmup, lr_decay_frac=args.lr_decay,
                  dtype=args.dtype, seed=args.seed,
                  init_subspace=args.init_subspace, **given)
    recipe.check(cfg)
    return cfg


def add_inputs(p, windows: int, multi_sae: bool = False, store_windows: str = "random",
               store_help: str = "read the SAE's hook_z from this activation store instead of running the model (fast); "
                                 "the windows are the store's") -> None:
    """--sae, --model, --store, --corpus, --windows, --model-dtype, --seed of a command reading SAE features.
    `store_windows` says which of a store's windows it reads (features.inputs.STORE_WINDOWS); a store's shards are
    always checked against their checksums."""
    p.add_argument("--sae", action="append", required=True,
                   help="SAE folder on a layer's attn.hook_z" + ("; repeat for more layers" if multi_sae else ""))
    add_model(p, None, "default: the model named in the SAE's config")
    p.add_argument("--store", default=None, help=store_help)
    p.add_argument("--corpus", default=DEFAULT_CORPUS, help="without --store: corpus to sample windows from (default: "
                   "%(default)s)")
    which = {"random": "random windows of the corpus, or of the store", "first": "random windows of the corpus, or the "
             "store's first", "all": "without --store: random windows of the corpus; with it, all its windows"}[store_windows]
    p.add_argument("--windows", type=POSITIVE, default=windows, help=which + " (default: %(default)s)")
    add_model_dtype(p, "float32", help="model precision (default: %(default)s; bfloat16 is ~2x faster here but moves DFA "
                    "by up to 14%% on SmolLM2 and flips rarely firing features between live and dead)")
    add_device(p)
    add_seed(p)
    p.set_defaults(store_windows=store_windows)


def input_spec(args):
    """The features.inputs.InputSpec that add_inputs' options describe."""
    from ..features.inputs import InputSpec

    return InputSpec(saes=list(args.sae), model=args.model, store=args.store, corpus=args.corpus, windows=args.windows,
                     seed=args.seed, model_dtype=args.model_dtype, device=args.device, store_windows=args.store_windows)


def one_sae(args, command: str) -> None:
    if len(args.sae) != 1:
        raise ValueError(f"{command} takes one --sae")


def report(result, args) -> None:
    """Write a Result into args.out, with the precision the model ran in, and print its summary and what was written."""
    from ..results import write

    paths = write(result, args.out, {"model_dtype": getattr(args, "model_dtype", "float32")})
    print(result.summary() + "\nwrote " + ", ".join([str(paths[0])] + [p.name for p in paths[1:]]))
