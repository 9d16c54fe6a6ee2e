"""Training recipes on one shared loop: each recipe is a small class (loss + what happens after a step).

- `L1Recipe`: the paper's (Bricken et al.) recipe, appendix B: ReLU SAE, unit-norm decoder rows
  with the gradient component parallel to each row removed, loss = |x - x_hat|^2 + l1 * sum f,
  Adam(0.9, 0.99), Anthropic-style resampling of dead features with lr warm-back.
- `L1DecoderNormRecipe`: the April-2024 update the paper used for Gemma-2B: penalty
  l1 * sum f_i |d_i|, decoder unconstrained, l1 warmed up over the first 5% of steps;
  decoder norms are folded into the encoder when saving.
- `TopKRecipe`: f = TopK(pre), MSE only, unit-norm decoder, plus the AuxK loss on dead latents.

All recipes run the SAE through `sparse_step.sae_step`: the same gradients as plain autograd, but
the decoder and the backward touch only the active latents (the encoder matmul is the only dense
work once the SAE is sparse).

The loop checkpoints atomically every `checkpoint_every` steps (SAE, Adam state, step, firing
counts, resample state), so `kill -9` loses at most one interval, and `resume=True` continues the
same run: batches come from a seeded permutation indexed by step, so the data order is the same.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .io import save_sae
from .sae import SAE, SAEConfig
from .sparse_step import sae_step


@dataclass
class TrainConfig:
    recipe: str = "l1"  # l1 | l1_decnorm | topk
    d_sae: int | None = None  # default: expansion * d_in
    expansion: int = 8
    k: int = 32  # topk
    l1_coeff: float = 1.0
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    batch_size: int = 4096
    steps: int = 2000
    seed: int = 0
    dtype: str = "bfloat16"  # matmul precision (autocast); parameters and Adam stay fp32
    normalize_input: bool = True  # scale inputs so E|x| = sqrt(d_in); folded into the saved SAE
    init_b_dec_median: bool = True  # geometric median estimate of the data (Bricken et al.)
    # resampling (l1 recipe)
    resample_every: int | None = None  # default: steps // 5
    n_resamples: int = 4
    resample_inputs: int = 65536  # inputs scored to pick high-loss examples
    resample_warmup: int = 1000  # steps to cosine-warm lr back from 0.1x
    dead_threshold: float = 1e-5  # dead: fires on fewer than this fraction of inputs since the last resample
    dead_window: int = 10_000_000  # topk: tokens a latent must stay silent to count as dead for AuxK
    # bookkeeping
    checkpoint_every: int = 500
    hist_every: int = 1000
    lr_decay_frac: float = 0.2  # linear lr decay over the last fraction of steps (0 disables)

    def to_dict(self):
        return dataclasses.asdict(self)


def sae_config_for(cfg: "TrainConfig", d_in: int, hook: str, meta: dict) -> SAEConfig:
    """The SAE config for training on `hook` (a harvest spec, e.g. 'blocks.5.attn.hook_q[2]') of the
    data described by `meta` (a store's meta: model, processing, context_size, first_pos, corpus)."""
    from ..data.harvest import parse_hook

    name, head = parse_hook(hook)
    topk = cfg.recipe == "topk"
    return SAEConfig(
        d_in=d_in, d_sae=cfg.d_sae or cfg.expansion * d_in, architecture="topk" if topk else "standard",
        k=cfg.k if topk else None, model_name=meta["model"], hook_name=name, hook_head_index=head,
        processing=meta["processing"], context_size=meta["context_size"], first_pos=meta["first_pos"],
        dataset_path=meta.get("corpus"),
    )


class Recipe:
    """Shared base: Adam on all parameters, unit-norm decoder after each step."""

    unit_norm_decoder = True

    def __init__(self, sae: SAE, cfg: TrainConfig):
        self.sae, self.cfg = sae, cfg

    def loss(self, x: torch.Tensor, step: int):
        """Returns (loss, feature_acts, reconstruction) for a batch."""
        raise NotImplementedError

    def before_step(self):
        if self.unit_norm_decoder:
            _remove_parallel_grad(self.sae)

    def after_step(self):
        if self.unit_norm_decoder:
            self.sae.normalize_decoder_()

    def finalize(self, sae: SAE):
        pass


def _remove_parallel_grad(sae: SAE):
    g, w = sae.W_dec.grad, sae.W_dec.data
    if g is not None:
        g.sub_((g * w).sum(dim=1, keepdim=True) * w)


class L1Recipe(Recipe):
    def loss(self, x, step):
        f, recon = sae_step(self.sae, x)  # sparse-aware backward, same gradients as autograd
        l2 = (recon - x).pow(2).sum(-1).mean()
        return l2 + self.cfg.l1_coeff * f.sum(-1).mean(), f, recon


class L1DecoderNormRecipe(Recipe):
    unit_norm_decoder = False

    def __init__(self, sae, cfg):
        super().__init__(sae, cfg)
        with torch.no_grad():  # decoder rows start small; the encoder is their transpose
            sae.W_dec.mul_(0.1)
            sae.W_enc.copy_(sae.W_dec.T)

    def loss(self, x, step):
        f, recon = sae_step(self.sae, x)
        warm = min(1.0, step / max(1, 0.05 * self.cfg.steps))
        l2 = (recon - x).pow(2).sum(-1).mean()
        l1 = (f * self.sae.W_dec.norm(dim=1)).sum(-1).mean()
        return l2 + warm * self.cfg.l1_coeff * l1, f, recon

    def finalize(self, sae):
        sae.fold_decoder_norm_()


class TopKRecipe(Recipe):
    aux_coeff = 1 / 32

    def __init__(self, sae, cfg):
        super().__init__(sae, cfg)
        self.last_fired = torch.zeros(sae.d_sae, dtype=torch.long)
        self.tokens_seen = 0
        # a latent silent this long counts as dead for AuxK (short runs: a tenth of the run)
        self.dead_after = min(cfg.dead_window, cfg.steps * cfg.batch_size // 10)

    def loss(self, x, step):
        sae = self.sae
        f, recon = sae_step(sae, x)  # the decoder touches only the k active latents
        err = x - recon
        loss = err.pow(2).sum(-1).mean()
        with torch.no_grad():
            self.tokens_seen += x.shape[0]
            self.last_fired[(f > 0).any(0)] = self.tokens_seen
            dead = ((self.tokens_seen - self.last_fired) > self.dead_after).nonzero().flatten()
        if len(dead):  # AuxK: the top dead latents explain the residual error (only their columns computed)
            xc = x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x
            pre = xc @ sae.W_enc[:, dead] + sae.b_enc[dead]
            a_vals, a_idx = pre.topk(min(x.shape[1] // 2, len(dead)), dim=-1)
            a_rec = F.embedding_bag(dead[a_idx], sae.W_dec, per_sample_weights=F.relu(a_vals).float(), mode="sum")
            e = err.detach()
            aux = (a_rec.float() - e).pow(2).sum(-1).mean() / e.pow(2).sum(-1).mean().clamp_min(1e-8)
            loss = loss + self.aux_coeff * aux
        return loss, f, recon


RECIPES = {"l1": L1Recipe, "l1_decnorm": L1DecoderNormRecipe, "topk": TopKRecipe}


def estimate_norm_scale(batches, d_in: int, n: int = 20) -> float:
    norms = [b.float().norm(dim=-1).mean().item() for _, b in zip(range(n), batches)]
    return math.sqrt(d_in) / float(np.mean(norms))


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


class Trainer:
    """Trains one SAE from an iterator factory `batches(start_step) -> iterator of [B, d_in]`."""

    def __init__(self, sae_cfg: SAEConfig, cfg: TrainConfig, out_dir, batches_from, progress: bool = True):
        self.cfg, self.out = cfg, Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.batches_from = batches_from
        self.progress = progress
        torch.manual_seed(cfg.seed)
        self.sae = SAE(sae_cfg)
        self.sae.reset_parameters(torch.Generator().manual_seed(cfg.seed))
        self.recipe = RECIPES[cfg.recipe](self.sae, cfg)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        self.step = 0
        self.scale = 1.0
        self.fire_counts = torch.zeros(sae_cfg.d_sae, dtype=torch.long)  # since the last resample
        self.fire_tokens = 0
        self.recent_counts = torch.zeros(sae_cfg.d_sae, dtype=torch.long)  # since the last histogram
        self.recent_tokens = 0
        self.tokens = 0
        self.last_resample = 0  # step of the last resample (lr warm-back starts there)
        self.n_resampled = 0
        self.history: list[dict] = []
        every = cfg.resample_every or max(1, cfg.steps // 5)
        self.resample_steps = set() if cfg.recipe != "l1" else {every * i for i in range(1, cfg.n_resamples + 1) if every * i < cfg.steps}

    # ---- schedule ----
    def lr_at(self, step: int) -> float:
        lr = self.cfg.lr
        if self.n_resampled and step - self.last_resample < self.cfg.resample_warmup:
            t = (step - self.last_resample) / self.cfg.resample_warmup  # cosine from 0.1x back to 1x
            lr *= 0.1 + 0.9 * 0.5 * (1 - math.cos(math.pi * t))
        decay_start = self.cfg.steps * (1 - self.cfg.lr_decay_frac)
        if self.cfg.lr_decay_frac and step > decay_start:
            lr *= max(0.0, (self.cfg.steps - step) / (self.cfg.steps - decay_start))
        return lr

    # ---- checkpoints ----
    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoint"

    def save_checkpoint(self):
        tmp = self.out / "checkpoint.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        tensors = {f"sae.{k}": v.detach().clone() for k, v in self.sae.state_dict().items()}
        for i, p in enumerate(self.sae.parameters()):
            st = self.opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    tensors[f"adam.{i}.{key}"] = st[key].clone()
            if "step" in st:
                tensors[f"adam.{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
        tensors["fire_counts"] = self.fire_counts.clone()
        tensors["fire_tokens"] = torch.tensor([self.fire_tokens])
        tensors["recent_counts"] = self.recent_counts.clone()
        if isinstance(self.recipe, TopKRecipe):
            tensors["topk_last_fired"] = self.recipe.last_fired.clone()
        save_file(tensors, str(tmp / "state.safetensors"))
        meta = {
            "step": self.step, "tokens": self.tokens, "recent_tokens": self.recent_tokens, "scale": self.scale, "last_resample": self.last_resample,
            "n_resampled": self.n_resampled, "train_config": self.cfg.to_dict(), "history": self.history,
            "topk_tokens_seen": getattr(self.recipe, "tokens_seen", 0),
        }
        (tmp / "state.json").write_text(json.dumps(meta))
        old = self.out / "checkpoint.old"
        if self.ckpt_dir.exists():
            os.replace(self.ckpt_dir, old)
        os.replace(tmp, self.ckpt_dir)
        if old.exists():
            shutil.rmtree(old)

    def load_checkpoint(self) -> bool:
        d = self.ckpt_dir
        if not d.exists() and (self.out / "checkpoint.old").exists():
            d = self.out / "checkpoint.old"  # killed between the two renames
        if not (d / "state.json").exists():
            return False
        meta = json.loads((d / "state.json").read_text())
        saved = meta["train_config"]
        saved["betas"] = tuple(saved["betas"])
        if saved != self.cfg.to_dict() | {"betas": tuple(self.cfg.betas)}:
            diff = {k: (saved.get(k), v) for k, v in self.cfg.to_dict().items() if saved.get(k) != v and k != "betas"}
            raise ValueError(f"checkpoint in {d} was made with a different training config {diff}; use a new out_dir")
        t = load_file(str(d / "state.safetensors"))
        self.sae.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("sae.")})
        for i, p in enumerate(self.sae.parameters()):
            if f"adam.{i}.exp_avg" in t:
                self.opt.state[p] = {
                    "step": torch.tensor(float(t[f"adam.{i}.step"][0])),
                    "exp_avg": t[f"adam.{i}.exp_avg"], "exp_avg_sq": t[f"adam.{i}.exp_avg_sq"],
                }
        self.fire_counts, self.recent_counts = t["fire_counts"], t["recent_counts"]
        self.fire_tokens = int(t["fire_tokens"][0])
        self.recent_tokens = meta["recent_tokens"]
        if isinstance(self.recipe, TopKRecipe):
            self.recipe.last_fired = t["topk_last_fired"]
            self.recipe.tokens_seen = meta["topk_tokens_seen"]
        self.step, self.tokens, self.scale = meta["step"], meta["tokens"], meta["scale"]
        self.last_resample, self.n_resampled, self.history = meta["last_resample"], meta["n_resampled"], meta["history"]
        return True

    # ---- resampling (Bricken et al., 'Neuron Resampling'; lr warm-back per the paper, app. B) ----
    @torch.no_grad()
    def resample(self, dead: torch.Tensor):
        idx = dead.nonzero().flatten()
        if len(idx) == 0:
            return 0
        sae = self.sae
        xs, losses = [], []
        it = self.batches_from(self.step)  # fresh inputs, same deterministic order
        n = 0
        while n < self.cfg.resample_inputs:
            x = next(it).float() * self.scale
            xs.append(x)
            losses.append((sae(x).reconstruction - x).pow(2).sum(-1))
            n += len(x)
        x, loss = torch.cat(xs), torch.cat(losses)
        g = torch.Generator().manual_seed(self.cfg.seed + self.step)
        probs = loss.pow(2)
        pick = torch.multinomial(probs / probs.sum(), len(idx), replacement=len(idx) > len(x), generator=g)
        v = x[pick] - sae.b_dec
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-8)
        alive = ~dead
        enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
        sae.W_dec[idx] = v
        sae.W_enc[:, idx] = v.T * enc_norm * 0.2
        sae.b_enc[idx] = 0.0
        for p in (sae.W_enc, sae.b_enc, sae.W_dec):  # reset their Adam moments
            st = self.opt.state.get(p)
            if st:
                for key in ("exp_avg", "exp_avg_sq"):
                    if p is sae.W_enc:
                        st[key][:, idx] = 0
                    else:
                        st[key][idx] = 0
        self.last_resample, self.n_resampled = self.step, self.n_resampled + 1
        return len(idx)

    # ---- the loop ----
    def _init_from_data(self):
        it = self.batches_from(0)
        if self.cfg.normalize_input:
            self.scale = estimate_norm_scale(it, self.sae.cfg.d_in)
        if self.cfg.init_b_dec_median:
            sample = torch.cat([next(it).float() for _ in range(max(1, 16384 // self.cfg.batch_size))])[:16384]
            with torch.no_grad():
                self.sae.b_dec.copy_(geometric_median(sample * self.scale))

    def train(self, resume: bool = True) -> SAE:
        cfg = self.cfg
        resumed = resume and self.load_checkpoint()
        if not resumed:
            self._init_from_data()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")
        if torch.cuda.is_available() and next(self.sae.parameters()).is_cuda:
            autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.recipe}", unit="step", disable=not self.progress)
        it = self.batches_from(self.step)
        t0 = time.time()
        while self.step < cfg.steps:
            x = next(it).float() * self.scale
            for g in self.opt.param_groups:
                g["lr"] = self.lr_at(self.step)
            with autocast:
                loss, f, recon = self.recipe.loss(x, self.step)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at step {self.step}; the last checkpoint in {self.ckpt_dir} is intact. "
                    "Lower lr or l1_coeff, or check the activations for NaN."
                )
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.recipe.before_step()
            self.opt.step()
            self.recipe.after_step()
            with torch.no_grad():
                active = f > 0
                fired = active.sum(0).cpu()
                self.fire_counts += fired
                self.recent_counts += fired
                self.fire_tokens += x.shape[0]
                self.tokens += x.shape[0]
                self.recent_tokens += x.shape[0]
            self.step += 1
            if self.step in self.resample_steps:
                n = self.resample(self.dead_mask())
                self.fire_counts.zero_()
                self.fire_tokens = 0
                if self.progress:
                    bar.write(f"step {self.step}: resampled {n} dead features")
            if self.step % 50 == 0 or self.step == cfg.steps:
                with torch.no_grad():
                    l0 = active.sum(-1).float().mean().item()
                    mse = (recon.float() - x).pow(2).sum(-1).mean().item() / self.scale**2
                    ev = 1 - (recon.float() - x).pow(2).sum().item() / (x - x.mean(0)).pow(2).sum().item()
                    dead = int(self.dead_mask().sum())
                rec = {"step": self.step, "loss": loss.item(), "l0": l0, "mse": mse, "explained_var": ev,
                       "dead": dead, "lr": self.lr_at(self.step), "sec": time.time() - t0}
                self.history.append(rec)
                bar.set_postfix(L0=f"{l0:.1f}", MSE=f"{mse:.4g}", EV=f"{ev:.3f}", dead=dead)
            if cfg.hist_every and self.step % cfg.hist_every == 0:
                self.plot_density(self.out / f"density_step{self.step}.png")
                if self.step < cfg.steps:
                    self.recent_counts.zero_()
                    self.recent_tokens = 0
            if self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            bar.update(1)
        bar.close()
        self.save_checkpoint()
        if self.history:
            from ..evals.plots import training_curves

            training_curves(self.history, self.out / "curves.png")
        return self.finished_sae()

    def dead_mask(self) -> torch.Tensor:
        """Features firing on fewer than `dead_threshold` of the inputs since the last resample (the
        paper's definition; the reference code's dead_direction_cutoff)."""
        return self.fire_counts.double() < self.cfg.dead_threshold * max(1, self.fire_tokens)

    def feature_density(self) -> torch.Tensor:
        """Firing frequency over the steps since the last histogram (the SAE as it is now,
        not averaged with the dense start of training)."""
        return self.recent_counts.double() / max(1, self.recent_tokens)

    def finished_sae(self) -> SAE:
        """A copy of the SAE that acts on raw (unscaled) activations with unit-norm decoder rows."""
        sae = SAE(self.sae.cfg)
        sae.load_state_dict(self.sae.state_dict())
        self.recipe.finalize(sae)
        sae.fold_input_scale_(self.scale)
        sae.cfg.training = self.cfg.to_dict() | {"input_scale": self.scale, "tokens_trained": self.tokens}
        return sae

    def save(self, path) -> Path:
        return save_sae(self.finished_sae(), path, self.feature_density())

    def plot_density(self, path):
        from ..evals.plots import density_histogram

        density_histogram(self.feature_density().numpy(), path,
                          title=f"density over {self.recent_tokens:,} inputs to step {self.step}")
