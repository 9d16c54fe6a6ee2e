"""The sparse autoencoder: f = act((x - b_dec) W_enc + b_enc), x_hat = f W_dec + b_dec.

`act` is ReLU ("standard", the paper's SAEs), TopK ("topk"), or JumpReLU ("jumprelu",
Rajamanoharan et al. 2024: relu(pre) * (pre > threshold), a threshold per latent; BatchTopK and
Matryoshka SAEs are saved as this). Parameters are named and shaped as in SAELens: W_enc
[d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]; a JumpReLU SAE keeps its
threshold as `log_threshold` (trained in log space, as SAELens' training SAE does) and saves it
as SAELens' `threshold`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..models import hooks
from ..models.hooks import HookSpec
from .sparse_step import csr

ARCHITECTURES = ("standard", "topk", "jumprelu")

# SAE.active's screen: bf16 rounds x and w_j by at most 2^-9 each (relative), the matmul sums in fp32 and rounds its
# output by 2^-9, so |u_bf16 - u| <= (2^-8 + 2^-9 + fp32 sums) * |x| |w_j| (Cauchy-Schwarz); this is 2.6x that.
SCREEN_SLACK = 2**-6


@dataclass
class SAEConfig:
    d_in: int
    d_sae: int
    architecture: str = "standard"
    k: int | None = None  # topk only
    # What the SAE was trained on; splicing checks these against the model.
    model_name: str | None = None
    hook_name: str | None = None  # TransformerLens name, e.g. blocks.15.attn.hook_z
    hook_head_index: int | None = None
    processing: dict = field(default_factory=dict)
    context_size: int = 128
    prepend_bos: bool = True
    first_pos: int = 1  # positions before this (BOS) were not trained on
    apply_b_dec_to_input: bool = True  # False only for some SAELens-trained SAEs
    dataset_path: str | None = None
    training: dict = field(default_factory=dict)  # the TrainConfig used, for the record
    dtype: str = "float32"

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, not {self.architecture!r}")
        if self.architecture == "topk" and not self.k:
            raise ValueError("a topk SAE needs k")

    @property
    def hook_spec(self) -> HookSpec | None:
        """The hook (and head, if one) this SAE reads, parsed once."""
        return None if self.hook_name is None else HookSpec(hooks.parse(self.hook_name).name, self.hook_head_index)

    @property
    def layer(self) -> int | None:
        """The block the SAE's hook is in (None for hooks outside the blocks)."""
        return hooks.layer_of(self.hook_name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SAEConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class SAEOutput(NamedTuple):
    feature_acts: torch.Tensor
    """f(x) >= 0, [..., d_sae]"""
    reconstruction: torch.Tensor
    """x_hat, [..., d_in]"""
    pre_acts: torch.Tensor
    """(x - b_dec) W_enc + b_enc before the activation, [..., d_sae]"""


class SAE(nn.Module):
    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        if cfg.architecture == "jumprelu":
            self.log_threshold = nn.Parameter(torch.zeros(cfg.d_sae))  # threshold 1 until set
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None):
        with torch.no_grad():
            w = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=generator)
            self.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
            self.W_enc.copy_(self.W_dec.T)
            self.b_enc.zero_()
            self.b_dec.zero_()

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def threshold(self) -> torch.Tensor:
        """JumpReLU: the per-latent threshold, [d_sae]."""
        return self.log_threshold.exp()

    @torch.no_grad()
    def set_threshold_(self, threshold) -> None:
        """Make this a JumpReLU SAE with `threshold` (a number or [d_sae]). A threshold <= 0 acts as 0
        (relu already zeroes pre <= 0), so it is stored as log(0) = -inf: the same function."""
        if self.cfg.architecture != "jumprelu":
            self.cfg = dataclasses.replace(self.cfg, architecture="jumprelu", k=None)
            self.log_threshold = nn.Parameter(torch.zeros(self.d_sae, device=self.W_enc.device))
        t = torch.as_tensor(threshold, dtype=torch.float32).clamp_min(0).log()
        self.log_threshold.copy_(t.expand(self.d_sae))

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        if self.cfg.architecture == "topk":
            vals, idx = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, idx, F.relu(vals))
        if self.cfg.architecture == "jumprelu":  # as SAELens' JumpReLUSAE.encode
            return F.relu(pre) * (pre > self.threshold)
        return F.relu(pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.pre_acts(x))

    @torch.no_grad()
    def active(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The nonzero entries of encode(x) for x [B, d_in], as (row, col, value), in the SAE's dtype.

        On the CPU an fp32 ReLU or JumpReLU SAE screens with a bf16 encoder matmul (6x the fp32 FLOP/s here) and
        recomputes in fp32 only the candidates: every entry whose bf16 pre-activation comes within SCREEN_SLACK *
        |x| |w_j| of its threshold, a bound on the bf16 error, so no active entry is missed."""
        x = x.to(self.W_enc.dtype)
        if self.cfg.architecture == "topk" or x.device.type != "cpu" or self.W_enc.dtype != torch.float32:
            f = self.encode(x)
            row, col = f.nonzero(as_tuple=True)
            return row, col, f[row, col]
        xc = x - self.b_dec if self.cfg.apply_b_dec_to_input else x
        floor = self.threshold.clamp_min(0) if self.cfg.architecture == "jumprelu" else torch.zeros_like(self.b_enc)
        # Columns scaled to unit norm make the slack one number per row: u_j = x . w_j / |w_j| must exceed
        # t_j = (floor_j - b_enc_j) / |w_j|, and bf16 misses u_j by less than SCREEN_SLACK * |x|.
        norm = self.W_enc.norm(dim=0).clamp_min(1e-30)
        u = xc.bfloat16() @ (self.W_enc / norm).bfloat16()
        row, col = (torch.sub(u, (floor - self.b_enc) / norm) > -SCREEN_SLACK * xc.norm(dim=1, keepdim=True)).nonzero(
            as_tuple=True)
        crow = torch.zeros(len(x) + 1, dtype=torch.int64)
        crow[1:] = torch.bincount(row, minlength=len(x)).cumsum(0)
        mask = csr(crow, col, torch.zeros(len(col)), (len(x), self.d_sae))
        pre = torch.sparse.sampled_addmm(mask, xc, self.W_enc).values() + self.b_enc[col]
        on = pre > floor[col]
        return row[on], col[on], pre[on]

    def encode_features(self, x: torch.Tensor, features) -> torch.Tensor:
        """f(x) of the chosen `features` only, [..., F]. An elementwise activation needs only those encoder
        columns; TopK needs every pre-activation to know which latents survive, so it encodes all."""
        idx = torch.as_tensor(features, dtype=torch.long, device=self.W_enc.device)
        if self.cfg.architecture == "topk":
            return self.encode(x)[..., idx]
        x = x.to(self.W_enc.dtype)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        pre = x @ self.W_enc[:, idx] + self.b_enc[idx]
        if self.cfg.architecture == "jumprelu":
            return F.relu(pre) * (pre > self.threshold[idx])
        return F.relu(pre)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> SAEOutput:
        pre = self.pre_acts(x)
        f = self.activation(pre)
        return SAEOutput(f, self.decode(f), pre)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Trained on x*scale: make it act on raw x with the same decoder directions.
        Feature activations become f/scale, and so do pre-activations, hence a JumpReLU threshold;
        the function x -> x_hat is exactly preserved:
        pre(x) = (x - b_dec/s) W_enc + b_enc/s = pre_s(s x)/s, f = f_s/s, f W_dec + b_dec/s = x_hat_s/s."""
        self.b_enc.div_(scale)
        self.b_dec.div_(scale)
        if self.cfg.architecture == "jumprelu":
            self.log_threshold.sub_(math.log(scale))

    @torch.no_grad()
    def fold_decoder_norm_(self, topk_ranks_scaled: bool = False) -> None:
        """Move decoder row norms into the encoder (f_i * |d_i|) so rows are unit-norm.
        Exact for ReLU and JumpReLU (whose threshold scales too). For TopK, rescaling pre-activations changes
        which latents it keeps, unless it already ranked pre * |d_i| and decoded f / |d_i| (SAELens'
        rescale_acts_by_decoder_norm): `topk_ranks_scaled` says so, and the fold makes it plain TopK, exactly."""
        if self.cfg.architecture == "topk" and not topk_ranks_scaled:
            raise ValueError("fold_decoder_norm_ is only exact for ReLU and JumpReLU SAEs (and TopK that ranks "
                             "pre-activations scaled by the decoder norms)")
        norms = self.W_dec.norm(dim=1).clamp_min(1e-8)
        self.W_enc.mul_(norms)
        self.b_enc.mul_(norms)
        if self.cfg.architecture == "jumprelu":
            self.log_threshold.add_(norms.log())
        self.W_dec.div_(norms[:, None])
