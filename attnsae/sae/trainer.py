"""The training loop shared by every recipe (recipes/: the loss, the decoder constraint, lr
multiplier, resampling), and `train_sae`, which trains an SAE into a run folder unless it is there.

Every recipe runs the SAE through `sparse_step.sae_step` on the CPU: the same gradients as plain autograd
(JumpReLU's threshold: the same straight-through ones), but the decoder and the backward touch only the active
latents (Matryoshka adds its prefixes' dense products).

The loop checkpoints atomically every `checkpoint_every` steps (checkpoint.py), so `kill -9` loses
at most one interval, and `resume=True` continues the same run: batches come from a seeded
permutation indexed by step, so the data order is the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import distributed
from ..evals.metrics import DEAD_THRESHOLD, DEAD_WINDOW
from ..lock import hold
from ..models.device import autocast as device_autocast
from ..models.device import resolve_device
from ..models.hooks import parse
from . import checkpoint
from .io import load_sae, save_sae
from .recipes import RECIPES
from .sae import SAE, SAEConfig

# The data-based initialisation reads this many inputs (whatever the batch size, so SAEs trained side by
# side share the buffer's first chunks): the input scale sqrt(d_in) / E|x| (Anthropic's April 2024
# update; folded back into the saved SAE) from all of them, the geometric median that initialises b_dec
# (Bricken et al. 2023) from the first GEOMETRIC_MEDIAN_SAMPLES. Our choices, not tuned.
INIT_ROWS = 32768
GEOMETRIC_MEDIAN_SAMPLES = 16384


@dataclass
class TrainConfig:
    recipe: str = "l1"  # a name in RECIPES: l1 | l1_decnorm | topk | batchtopk | jumprelu | matryoshka_batchtopk
    d_sae: int | None = None  # default: expansion * d_in
    expansion: int = 8
    k: int = 32  # topk: latents per input; batchtopk, matryoshka_batchtopk: per input on average over the batch
    l1_coeff: float = 1.0  # l1, l1_decnorm
    # jumprelu (thresholds and bandwidth in units of the scaled inputs, E|x| = sqrt(d_in); defaults: SAELens')
    l0_coeff: float = 1.0  # lambda, the weight of the L0 penalty
    bandwidth: float = 0.05  # eps, the width of the rectangle kernel in the threshold's pseudo-derivative
    init_threshold: float = 0.01  # every latent's threshold at the start
    # matryoshka_batchtopk: the nested prefixes as fractions of d_sae (the whole dictionary is always the last)
    prefixes: tuple[float, ...] = (1 / 64, 1 / 16, 1 / 4, 1.0)
    lr: float = 1e-3
    lr_warmup: int = 0  # steps of linear warm-up from 0 (on BatchTopK at lr 1e-3, 100 steps cut dead latents 3.4% -> 1.2%)
    betas: tuple[float, float] = (0.9, 0.99)
    batch_size: int = 4096
    steps: int = 2000
    seed: int = 0
    dtype: str = "bfloat16"  # matmul precision (autocast); parameters and Adam stay fp32
    normalize_input: bool = True  # scale inputs so E|x| = sqrt(d_in); folded into the saved SAE
    init_b_dec_median: bool = True  # geometric median estimate of the data (Bricken et al.)
    # Active subspace initialisation (Wang et al. 2025, "Attention Layers Add Into Low-Dimensional Residual
    # Subspaces"): decoder rows (and the tied encoder) drawn at random inside the span of the top principal
    # directions that hold this fraction of the data's variance, instead of all of R^d_in. Attention outputs are
    # low-rank, so a random direction mostly points where no input goes and its latent never fires. 0: off.
    init_subspace: float = 0.0
    # resampling (l1; topk, batchtopk and matryoshka when resample_every is set)
    resample_every: int | None = None  # l1's default: steps // 5; the others': off
    n_resamples: int = 4  # the paper's training code: 4
    resample_inputs: int = 65536  # inputs scored to pick high-loss examples
    resample_warmup: int = 1000  # steps to cosine-warm lr back from 0.1x (the paper's training code: 1000)
    dead_threshold: float = DEAD_THRESHOLD  # dead: fires on fewer than this fraction of inputs since the last resample
    # topk, batchtopk, matryoshka: tokens a latent must stay silent to count as dead for AuxK (Gao et al. 2024)
    dead_window: int = 10_000_000
    # batchtopk, matryoshka: keep every latent firing on at least this fraction of inputs by lowering its own
    # selection threshold while it is silent (recipes/batchtopk.py); 0: off
    firing_floor: float = 0.0
    # bookkeeping
    checkpoint_every: int = 500
    hist_every: int = 1000
    lr_decay_frac: float = 0.2  # linear lr decay over the last fraction of steps (April 2024 update; 0 disables)

    def to_dict(self):
        return dataclasses.asdict(self)


def sae_config_for(cfg: TrainConfig, d_in: int, hook: str, meta: dict) -> SAEConfig:
    """The SAE config for training on `hook` (a harvest spec, e.g. 'blocks.5.attn.hook_q[2]') of the
    data described by `meta` (a store's meta: model, processing, context_size, first_pos, corpus)."""
    spec, architecture = parse(hook), RECIPES[cfg.recipe].architecture
    return SAEConfig(
        d_in=d_in, d_sae=cfg.d_sae or cfg.expansion * d_in, architecture=architecture,
        k=cfg.k if architecture == "topk" else None, model_name=meta["model"], hook_name=spec.name, hook_head_index=spec.head,
        processing=meta["processing"], context_size=meta["context_size"], first_pos=meta["first_pos"],
        dataset_path=meta.get("corpus"),
    )


def init_seed(seed: int, sae_cfg: SAEConfig) -> int:
    """The seed of an SAE's random initialisation: the run's seed mixed with its hook (if it has one), so that SAEs
    trained side by side on different hooks do not start from the same directions (a query SAE and a key SAE of one
    head would otherwise share decoder rows, and their untrained features would look like matched pairs)."""
    return seed if sae_cfg.hook_spec is None else (seed + zlib.crc32(str(sae_cfg.hook_spec).encode())) % 2**63


def geometric_median(x: torch.Tensor, iters: int = 50) -> torch.Tensor:
    """Weiszfeld's algorithm; a robust b_dec initialisation."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-6)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() < 1e-6 * y.norm().clamp_min(1e-6):
            return y_new
        y = y_new
    return y


def subspace_directions(x: torch.Tensor, frac: float, n: int, seed: int) -> torch.Tensor:
    """[n, d] random unit vectors in the span of the top principal directions of `x` that hold `frac` of its
    variance (the active subspace)."""
    xc = (x - x.mean(0)).float()
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    share = (s**2).cumsum(0) / (s**2).sum().clamp_min(1e-30)
    rank = int((share < frac).sum()) + 1
    g = torch.Generator(device="cpu").manual_seed(seed)
    w = torch.randn(n, min(rank, len(s)), generator=g).to(xc.device) @ vh[:rank]
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-8)


class Trainer:
    """Trains one SAE from an iterator factory `batches_from(start_step) -> iterator of [B, d_in]`.

    `data_parallel` (under torchrun): this rank trains on its slice of each batch and the gradients, firing counts
    and batch-wide selections are reduced across the ranks, so every rank's SAE stays the same; `batches_from` still
    gives the global batches (the initialisation and resampling read them whole, identically on every rank).
    `writer`: whether this rank writes the checkpoints, plots and SAE (one rank per folder)."""

    # what a checkpoint keeps of the trainer besides the SAE, Adam and the recipe
    COUNTERS = ("step", "scale", "history", "fire_counts", "fire_tokens", "recent_counts", "recent_tokens")

    def __init__(self, sae_cfg: SAEConfig, cfg: TrainConfig, out_dir, batches_from, progress: bool = True,
                 device: str | torch.device = "cpu", data_parallel: bool = False, writer: bool = True):
        self.cfg, self.out = cfg, Path(out_dir)
        self.data_parallel, self.writer = data_parallel and distributed.world() > 1, writer
        self.device = resolve_device(device)  # not part of cfg: a run may resume on another device
        self.out.mkdir(parents=True, exist_ok=True)
        self.batches_from = batches_from
        self.progress = progress
        torch.manual_seed(cfg.seed)
        self.sae = SAE(sae_cfg)
        self.sae.reset_parameters(torch.Generator().manual_seed(init_seed(cfg.seed, sae_cfg)))
        self.sae.to(self.device)
        self.recipe = RECIPES[cfg.recipe](self.sae, cfg, self.data_parallel)
        # fused: one kernel for every parameter's update (on the CPU 3x faster than the default loop)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), fused=True)
        self.step = 0
        self.scale = 1.0  # inputs are multiplied by this while training
        self.history: list[dict] = []
        # firing counts stay on the device: no host round trip per step
        self.fire_counts = torch.zeros(sae_cfg.d_sae, dtype=torch.long, device=self.device)  # since the last resample
        self.fire_tokens = 0
        self.recent_counts = torch.zeros(sae_cfg.d_sae, dtype=torch.long, device=self.device)  # since the last histogram
        self.recent_tokens = 0

    def lr_at(self, step: int) -> float:
        lr = self.cfg.lr * self.recipe.lr_scale(step)
        if step < self.cfg.lr_warmup:
            lr *= (step + 1) / self.cfg.lr_warmup
        decay_start = self.cfg.steps * (1 - self.cfg.lr_decay_frac)
        if self.cfg.lr_decay_frac and step > decay_start:
            lr *= max(0.0, (self.cfg.steps - step) / (self.cfg.steps - decay_start))
        return lr

    def resample(self, dead: torch.Tensor) -> int:
        """Let the recipe re-initialise the `dead` latents from fresh inputs (same deterministic order)."""
        inputs = (self.to_device(b) * self.scale for b in self.batches_from(self.step))
        return self.recipe.resample(dead, self.step, inputs, self.opt)

    def save_checkpoint(self):
        if not self.writer:
            return
        counters = {k: getattr(self, k) for k in self.COUNTERS}
        checkpoint.save(self.out, self.sae, self.opt, self.cfg.to_dict(), counters, self.recipe.state_dict())

    def load_checkpoint(self) -> bool:
        loaded = checkpoint.load(self.out, self.sae, self.opt, self.cfg.to_dict())
        if loaded is None:
            return False
        counters, recipe_state = loaded
        if "tokens_seen" not in recipe_state:  # older checkpoints: the trainer counted the inputs (and kept the
            # silence count, or none); every recipe keeps both now
            tokens = counters["tokens"]
            recipe_state["tokens_seen"] = tokens
            recipe_state.setdefault("last_fired", counters.get("last_fired", torch.full_like(self.recipe.last_fired, tokens)))
        for k in self.COUNTERS:
            setattr(self, k, counters[k])
        self.recipe.load_state_dict(recipe_state)
        return True

    def _init_from_data(self):
        if not (self.cfg.normalize_input or self.cfg.init_b_dec_median or self.cfg.init_subspace):
            return
        it, sample, n = self.batches_from(0), [], 0
        while n < INIT_ROWS:
            sample.append(self.to_device(next(it)))
            n += len(sample[-1])
        x = torch.cat(sample)[:INIT_ROWS]
        if self.cfg.normalize_input:
            self.scale = math.sqrt(self.sae.cfg.d_in) / x.norm(dim=-1).mean().item()
        if self.cfg.init_b_dec_median:
            with torch.no_grad():
                self.sae.b_dec.copy_(geometric_median(x[:GEOMETRIC_MEDIAN_SAMPLES] * self.scale))
        if self.cfg.init_subspace:
            w = subspace_directions(x[:GEOMETRIC_MEDIAN_SAMPLES], self.cfg.init_subspace, self.sae.d_sae,
                                    init_seed(self.cfg.seed, self.sae.cfg))
            with torch.no_grad():
                self.sae.W_dec.copy_(w)
                self.sae.W_enc.copy_(w.T)

    def start(self, resume: bool = True) -> None:
        """Continue from the checkpoint (resume=True and there is one), else initialise from the data."""
        if not (resume and self.load_checkpoint()):
            self._init_from_data()
        if self.data_parallel:  # every rank loaded the same checkpoint (or none)
            distributed.same_on_all(self.step, f"the step {self.out} resumes from")
        self._autocast = device_autocast(self.device, enabled=self.cfg.dtype == "bfloat16")
        self._t0 = time.time() - (self.history[-1]["sec"] if self.history else 0.0)

    def train(self, resume: bool = True) -> SAE:
        self.start(resume)
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc=f"train {self.cfg.recipe}", unit="step",
                   disable=not self.progress)
        it = self.batches_from(self.step)
        while self.step < self.cfg.steps:
            batch = next(it)
            rec = self.train_step(distributed.local_rows(batch) if self.data_parallel else batch)
            if rec:
                bar.set_postfix(L0=f"{rec['l0']:.1f}", MSE=f"{rec['mse']:.4g}", EV=f"{rec['explained_var']:.3f}",
                                dead=rec["dead"])
            bar.update(1)
        bar.close()
        return self.finish()

    def train_step(self, batch: torch.Tensor) -> dict | None:
        """One optimizer step on `batch` (raw activations); returns the history record when it writes one."""
        cfg = self.cfg
        x = self.to_device(batch) * self.scale
        lr = self.lr_at(self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        with self._autocast:
            loss, f, recon, fired = self.recipe.loss(x, self.step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.data_parallel:  # the global batch's gradient and loss, on every rank
            loss = distributed.all_mean_grads(self.sae.parameters(), loss)
        if not torch.isfinite(loss):
            saved = checkpoint.folder(self.out) / "state.json"
            kept = (f"the last checkpoint (step {json.loads(saved.read_text())['step']}, in {saved.parent}) is intact"
                    if saved.exists() else "no checkpoint had been written yet")
            raise FloatingPointError(f"loss became {loss.item()} at step {self.step} (hook {self.sae.cfg.hook_spec}); {kept}. "
                                     "Lower lr or l1_coeff, or check the activations for NaN.")
        self.recipe.before_optimizer_step()
        self.opt.step()
        self.recipe.after_optimizer_step()
        with torch.no_grad():
            if fired is None:
                fired = (f > 0).sum(0)
            n_inputs = x.shape[0]
            if self.data_parallel:
                fired, n_inputs = distributed.all_sum(fired.clone()), n_inputs * distributed.world()
            self.recipe.observe(fired, n_inputs, lr / self.cfg.lr)
            self.fire_counts += fired
            self.recent_counts += fired
            self.fire_tokens += n_inputs
            self.recent_tokens += n_inputs
        self.step += 1
        if self.step in self.recipe.resample_steps:
            n = self.resample(self.dead_mask())
            self.fire_counts.zero_()
            self.fire_tokens = 0
            if self.progress:
                tqdm.write(f"step {self.step}: resampled {n} dead features")
        rec = None
        if self.step % 50 == 0 or self.step == cfg.steps:
            with torch.no_grad():  # MSE and EV over this rank's rows
                l0 = fired.sum().item() / n_inputs
                mse = (recon.float() - x).pow(2).sum(-1).mean().item() / self.scale**2
                ev = 1 - (recon.float() - x).pow(2).sum().item() / (x - x.mean(0)).pow(2).sum().item()
                dead = int(self.silent_mask().sum())
            rec = {"step": self.step, "loss": loss.item(), "l0": l0, "mse": mse, "explained_var": ev,
                   "dead": dead, "lr": self.lr_at(self.step), "sec": time.time() - self._t0}
            self.history.append(rec)
        if cfg.hist_every and self.step % cfg.hist_every == 0 and self.writer:
            self.plot_density(self.out / f"density_step{self.step}.png")
            if self.step < cfg.steps:
                self.recent_counts.zero_()
                self.recent_tokens = 0
        if self.step % cfg.checkpoint_every == 0:
            self.save_checkpoint()
        return rec

    def finish(self) -> SAE:
        """The last checkpoint and the training curves; returns the finished SAE."""
        self.save_checkpoint()
        if self.history and self.writer:
            from ..evals.plots import training_curves

            training_curves(self.history, self.out / "curves.png")
        return self.finished_sae()

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch from the store or stream, as float32 on the training device (through pinned memory to a GPU)."""
        if self.device.type == "cuda" and batch.device.type == "cpu":
            batch = batch.pin_memory()
        return batch.to(self.device, non_blocking=True).float()

    def dead_mask(self) -> torch.Tensor:
        """Features firing on fewer than `dead_threshold` of the inputs since the last resample (the
        paper's definition; the reference code's dead_direction_cutoff)."""
        return self.fire_counts.double() < self.cfg.dead_threshold * max(1, self.fire_tokens)

    def silent_mask(self) -> torch.Tensor:
        """Latents that have not fired on the last DEAD_WINDOW inputs: the training curves' "dead" (a count
        since the start would call a latent alive for firing once in the first steps)."""
        return self.recipe.silent_for() >= DEAD_WINDOW

    def feature_density(self) -> torch.Tensor:
        """Firing frequency over the steps since the last histogram (the SAE as it is now,
        not averaged with the dense start of training)."""
        return self.recent_counts.double().cpu() / max(1, self.recent_tokens)

    def finished_sae(self) -> SAE:
        """A copy of the SAE that acts on raw (unscaled) activations with unit-norm decoder rows."""
        sae = SAE(self.sae.cfg)
        sae.load_state_dict({k: v.cpu() for k, v in self.sae.state_dict().items()})
        self.recipe.finalize(sae)
        sae.fold_input_scale_(self.scale)
        sae.cfg.training = self.cfg.to_dict() | {"input_scale": self.scale, "tokens_trained": self.recipe.tokens_seen}
        return sae

    def save(self, path, sae: SAE | None = None) -> Path:
        """Save the finished SAE (`sae` when `train` or `finish` already built it) with its feature density (the
        writer does; every rank returns the path)."""
        if not self.writer:
            return Path(path)
        return save_sae(sae or self.finished_sae(), path, self.feature_density())

    def plot_density(self, path):
        from ..evals.plots import density_histogram

        density_histogram(self.feature_density().numpy(), path,
                          title=f"density over {self.recent_tokens:,} inputs to step {self.step}")


def check_same_training(sae_dir: Path, train_cfg: TrainConfig, sae_cfg: SAEConfig) -> None:
    """Refuse to reuse a finished SAE trained with another config or on other data: its numbers would silently
    stand for this one."""
    checkpoint.check_same_data(load_sae(sae_dir).cfg.to_dict(), sae_cfg, sae_dir)
    saved = json.loads((sae_dir / "cfg.json").read_text()).get("attnsae", {}).get("training", {})
    diff = checkpoint.config_diff(saved, train_cfg.to_dict())
    if diff:
        detail = ", ".join(f"{k}: saved {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{sae_dir} was trained with a different config ({detail}); use a new output folder, or "
                         "--restart to retrain it")


def train_sae(sae_cfg: SAEConfig, train_cfg: TrainConfig, out_dir, batches_from, progress: bool = True,
              resume: bool = True, device: str | torch.device = "cpu") -> Path:
    """Returns out_dir/sae, training it first unless out_dir/sae/cfg.json exists (checkpoints, curves
    and density histograms go to out_dir/train). resume=False starts over: it ignores the checkpoint
    and retrains a finished SAE. Under torchrun the ranks train it data-parallel (`Trainer`); rank 0 writes."""
    out = Path(out_dir)
    lay = distributed.layout([str(sae_cfg.hook_spec)], "data", train_cfg.batch_size)
    if lay.data_parallel:
        distributed.check_shared(out)
    # two runs on one folder would overwrite each other's checkpoints
    with hold(out, "training") if distributed.is_main() else contextlib.nullcontext():
        path = out / "sae"
        if resume and (path / "cfg.json").exists():
            check_same_training(path, train_cfg, sae_cfg)
        else:
            trainer = Trainer(sae_cfg, train_cfg, out / "train", batches_from, progress=progress and distributed.is_main(),
                              device=device, data_parallel=lay.data_parallel, writer=distributed.is_main())
            trainer.save(path, trainer.train(resume=resume))
    distributed.barrier()
    return path
