"""One readable decoder-only transformer for every supported family (config.FAMILY_TRAITS), with hooks.

Every intermediate has a TransformerLens name and passes through `run.hook(name, x)`, which
caches it, lets an intervention replace it, or stops the forward once nothing later is needed.
Weights are stored TransformerLens-style (x @ W), fused over heads for speed; per-head views
are available as properties (`W_O_heads`, ...).

Hook shapes: hook_q [b, p, n_heads, d_head]; hook_k, hook_v [b, p, n_kv_heads, d_head]
(pre-rotary; hook_rot_q / hook_rot_k after); hook_z [b, p, n_heads, d_head];
hook_attn_scores / hook_pattern [b, n_heads, dest, src]; residual hooks [b, p, d_model].
hook_attn_out is what the attention layer adds to the residual stream (for Gemma 3 that is
after its post-attention norm, as in TransformerLens); attn.hook_result [b, p, n_heads, d_model] is each
head's z W_O (no b_O), only computed when asked for. Norm hooks are TransformerLens's: hook_scale is the
rms (or std) the input is divided by, hook_normalized the input divided by it, before the gain. Gemma 3's
hook_q / hook_k come before its q/k norms (attn.q_norm.*, attn.k_norm.*), hook_rot_q / hook_rot_k after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from . import hooks
from .config import ModelConfig, Processing

HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]


class _StopForward(Exception):
    pass


class Run:
    """Per-forward hook state: which names to cache, which to intervene on, when to stop."""

    def __init__(self, cache: Iterable[str] = (), hooks: dict[str, list[HookFn]] | None = None, stop_early=False):
        self.hooks = hooks or {}
        self.wanted = set(cache)
        self.cache: dict[str, torch.Tensor] = {}
        self.active = self.wanted | set(self.hooks)
        self.stop_early = stop_early  # with interventions: the caller wants only what they do to the cached hooks

    def needs(self, name: str) -> bool:
        return name in self.active

    def hook(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name not in self.active:
            return x
        for fn in self.hooks.get(name, ()):
            out = fn(x, name)
            if out is not None:
                if out.shape != x.shape:
                    raise ValueError(f"hook on {name} returned shape {tuple(out.shape)}, expected {tuple(x.shape)}")
                x = out
        if name in self.wanted:
            self.cache[name] = x
            if self.stop_early and len(self.cache) == len(self.wanted):
                raise _StopForward
        return x


def _standardize(x, cfg: ModelConfig):
    """(x / rms, or (x - mean) / std, in fp32; the rms or std): a norm before its gain, and the divisor, the
    quantities TransformerLens's hook_normalized and hook_scale carry."""
    xf = x.float()
    if cfg.norm == "layernorm":
        xf = xf - xf.mean(-1, keepdim=True)
    inv = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + cfg.norm_eps)  # times rsqrt, as HF computes it
    return xf * inv, 1 / inv


def _gain(xn, w, b, cfg: ModelConfig, dtype):
    """A standardized xn (fp32) times the norm's gain (plus LayerNorm's bias), in `dtype`. Gemma's stored gain
    offset (1 + w) is applied in fp32 before the cast, as HF Gemma does; Llama and GPT-2 scale in `dtype`."""
    if cfg.norm_gain_offset:
        return (xn * (cfg.norm_gain_offset + w.float())).to(dtype)
    out = w * xn.to(dtype)
    return out if b is None else out + b


def _norm(x, w, b, cfg: ModelConfig):
    """(normalized x, the rms or std it was divided by): the config's LayerNorm or RMSNorm."""
    xn, scale = _standardize(x, cfg)
    return _gain(xn, w, b, cfg, x.dtype), scale


def _hooked_norm(x, w, b, cfg: ModelConfig, run: Run, prefix: str):
    """A norm with TransformerLens's hooks: hook_scale (the divisor, [..., 1]) and hook_normalized (before the gain)."""
    xn, scale = _standardize(x, cfg)
    run.hook(prefix + "hook_scale", scale)
    return _gain(run.hook(prefix + "hook_normalized", xn), w, b, cfg, x.dtype)


_ACTIVATIONS = {"silu": F.silu, "gelu_tanh": partial(F.gelu, approximate="tanh"), "gelu": F.gelu}


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (HF's rotate-half layout) of x [..., d_head] with a position's cos and sin; when they are
    narrower than d_head (partial rotary, GPT-NeoX) the first dimensions rotate and the rest pass through."""
    r = cos.shape[-1]
    if r < x.shape[-1]:
        return torch.cat((apply_rope(x[..., :r], cos, sin), x[..., r:]), dim=-1)
    return x * cos + _rotate_half(x) * sin


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        d, h, kv, dh = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        z = lambda *s: nn.Parameter(torch.zeros(*s))  # noqa: E731
        self.W_Q, self.W_K, self.W_V, self.W_O = z(d, h * dh), z(d, kv * dh), z(d, kv * dh), z(h * dh, d)
        self.ln1_w = z(d)
        if cfg.qkv_bias:
            self.b_Q, self.b_K, self.b_V = z(h * dh), z(kv * dh), z(kv * dh)
        if cfg.biases:
            self.b_O = z(d)
        if cfg.norm == "layernorm":
            self.ln1_b = z(d)
        if not cfg.attn_only:
            self.ln2_w, self.W_in, self.W_out = z(d), z(d, cfg.d_mlp), z(cfg.d_mlp, d)
            if cfg.biases:
                self.b_in, self.b_out = z(cfg.d_mlp), z(d)
            if cfg.norm == "layernorm":
                self.ln2_b = z(d)
            if cfg.gated_mlp:
                self.W_gate = z(d, cfg.d_mlp)
            if cfg.act_fn == "solu_ln":  # the LayerNorm after SoLU
                self.mlp_ln_w, self.mlp_ln_b = z(cfg.d_mlp), z(cfg.d_mlp)
        if cfg.qk_norm:
            self.q_norm_w, self.k_norm_w = z(dh), z(dh)
        if cfg.post_norms:
            self.ln1_post_w, self.ln2_post_w = z(d), z(d)
        self.p = f"blocks.{layer}."

    # ---- per-head views (read-only conveniences for analysis code) ----
    @property
    def W_O_heads(self):  # [n_heads, d_head, d_model]
        return self.W_O.view(self.cfg.n_heads, self.cfg.d_head, self.cfg.d_model)

    @property
    def W_V_heads(self):  # [n_kv_heads, d_model, d_head]
        c = self.cfg
        return self.W_V.view(c.d_model, c.n_kv_heads, c.d_head).transpose(0, 1)

    @property
    def W_Q_heads(self):  # [n_heads, d_model, d_head]
        c = self.cfg
        return self.W_Q.view(c.d_model, c.n_heads, c.d_head).transpose(0, 1)

    @property
    def W_K_heads(self):  # [n_kv_heads, d_model, d_head]
        c = self.cfg
        return self.W_K.view(c.d_model, c.n_kv_heads, c.d_head).transpose(0, 1)

    def normalize(self, x, which: str):
        """(normalized x, the rms or std it was divided by) through this block's norm `which` (ln1, ln2, ln1_post,
        ln2_post), without hooks: analysis code that recomputes part of the block calls this."""
        return _norm(x, getattr(self, f"{which}_w"), getattr(self, f"{which}_b", None), self.cfg)

    def norm(self, x, which: str, run: Run):
        return _hooked_norm(x, getattr(self, f"{which}_w"), getattr(self, f"{which}_b", None), self.cfg, run,
                            f"{self.p}{which}.")

    def attention(self, x, run: Run, rope, qk_pos=None):
        """`qk_pos`: shortformer positions [n, d_model], added to the input of the queries and keys only."""
        c, p = self.cfg, self.p + "attn."
        b, n, _ = x.shape
        qk_in = x if qk_pos is None else x + qk_pos
        q = qk_in @ self.W_Q
        k = qk_in @ self.W_K
        v = x @ self.W_V
        if c.qkv_bias:
            q, k, v = q + self.b_Q, k + self.b_K, v + self.b_V
        q = q.view(b, n, c.n_heads, c.d_head)
        k = k.view(b, n, c.n_kv_heads, c.d_head)
        v = v.view(b, n, c.n_kv_heads, c.d_head)
        q, k, v = run.hook(p + "hook_q", q), run.hook(p + "hook_k", k), run.hook(p + "hook_v", v)
        if c.qk_norm:  # Gemma 3: after hook_q / hook_k, as in TransformerLens, with the same norm hooks
            q = _hooked_norm(q, self.q_norm_w, None, c, run, p + "q_norm.")
            k = _hooked_norm(k, self.k_norm_w, None, c, run, p + "k_norm.")
        if rope is not None:
            cos, sin = rope
            q = run.hook(p + "hook_rot_q", apply_rope(q, cos, sin))
            k = run.hook(p + "hook_rot_k", apply_rope(k, cos, sin))
        # [b, heads, pos, d_head]; query head h reads kv head h // group_size
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if run.needs(p + "hook_attn_scores") or run.needs(p + "hook_pattern") or c.attn_softcap:
            kh, vh = kh.repeat_interleave(c.group_size, dim=1), vh.repeat_interleave(c.group_size, dim=1)
            mask = self._mask(n, x.device)
            scores = (qh @ kh.transpose(-1, -2)) * c.attn_scale
            if c.attn_softcap:  # Gemma 2, before the mask and the hook, as TransformerLens
                scores = c.attn_softcap * torch.tanh(scores / c.attn_softcap)
            scores = run.hook(p + "hook_attn_scores", scores.masked_fill(~mask, float("-inf")))
            pattern = run.hook(p + "hook_pattern", torch.softmax(scores.float(), dim=-1).to(x.dtype))
            zh = pattern @ vh
        else:  # causal without a mask and grouped-query without repeating k and v: the same values, 20% faster here
            windowed = self._windowed(n)
            zh = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=self._mask(n, x.device) if windowed else None,
                                                is_causal=not windowed, scale=c.attn_scale, enable_gqa=c.group_size > 1)
        z = run.hook(p + "hook_z", zh.transpose(1, 2))
        if run.needs(p + "hook_result"):  # TransformerLens's: each head's z W_O, [b, p, n_heads, d_model], no b_O
            out = run.hook(p + "hook_result", torch.einsum("bnhd,hdm->bnhm", z, self.W_O_heads)).sum(2)
        else:
            out = z.reshape(b, n, c.d_attn) @ self.W_O
        return out + self.b_O if c.biases else out

    def _windowed(self, n) -> bool:
        """Whether this layer's sliding window is shorter than n positions (then the mask is not plain causal)."""
        return bool(self.cfg.is_sliding(self.layer) and self.cfg.sliding_window and n > self.cfg.sliding_window)

    def _mask(self, n, device):
        mask = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        if self._windowed(n):
            mask = mask.triu(-(self.cfg.sliding_window - 1))
        return mask

    def mlp(self, x, run: Run):
        c, p = self.cfg, self.p + "mlp."
        act = _ACTIVATIONS.get(c.act_fn)
        if c.gated_mlp:  # act(x W_gate) * (x W_in), names as TransformerLens
            pre = run.hook(p + "hook_pre", x @ self.W_gate)
            post = act(pre) * run.hook(p + "hook_pre_linear", x @ self.W_in)
        elif c.act_fn == "solu_ln":  # SoLU, x * softmax(x), then a LayerNorm (Elhage et al. 2022), hooks as TransformerLens
            pre = run.hook(p + "hook_pre", x @ self.W_in + self.b_in)
            mid = run.hook(p + "hook_mid", pre * torch.softmax(pre, dim=-1))
            post = _hooked_norm(mid, self.mlp_ln_w, self.mlp_ln_b, c, run, p + "ln.")
        else:
            post = act(run.hook(p + "hook_pre", x @ self.W_in + self.b_in))
        post = run.hook(p + "hook_post", post)
        out = post @ self.W_out
        return out + self.b_out if c.biases else out

    def forward(self, resid, run: Run, rope, qk_pos=None):
        p, post_norms = self.p, self.cfg.post_norms
        resid = run.hook(p + "hook_resid_pre", resid)
        attn = self.attention(self.norm(resid, "ln1", run), run, rope, qk_pos)
        if post_norms:
            attn = self.norm(attn, "ln1_post", run)
        attn = run.hook(p + "hook_attn_out", attn)
        if self.cfg.attn_only:  # as TransformerLens: no resid_mid and no MLP hooks
            return run.hook(p + "hook_resid_post", resid + attn)
        if self.cfg.parallel_attn_mlp:  # both read resid_pre; there is no resid_mid (as in TransformerLens)
            mlp = run.hook(p + "hook_mlp_out", self.mlp(self.norm(resid, "ln2", run), run))
            return run.hook(p + "hook_resid_post", resid + attn + mlp)
        resid = run.hook(p + "hook_resid_mid", resid + attn)
        mlp = self.mlp(self.norm(resid, "ln2", run), run)
        if post_norms:
            mlp = self.norm(mlp, "ln2_post", run)
        return run.hook(p + "hook_resid_post", resid + run.hook(p + "hook_mlp_out", mlp))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, processing: Processing | None = None):
        super().__init__()
        self.cfg = cfg
        self.processing = processing or Processing()
        self.W_E = nn.Parameter(torch.zeros(cfg.d_vocab, cfg.d_model))
        if cfg.learned_pos:
            self.W_pos = nn.Parameter(torch.zeros(cfg.n_ctx, cfg.d_model))
        if cfg.norm == "layernorm":
            self.ln_final_b = nn.Parameter(torch.zeros(cfg.d_model))
        self.ln_final_w = nn.Parameter(torch.zeros(cfg.d_model))
        if not cfg.tied_embeddings:
            self.W_U_untied = nn.Parameter(torch.zeros(cfg.d_model, cfg.d_vocab))
        if cfg.unembed_bias:
            self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.tokenizer = None  # set by the loader; analysis code asks the model for it

    @property
    def W_U(self) -> torch.Tensor:  # [d_model, d_vocab]
        return self.W_E.T if self.cfg.tied_embeddings else self.W_U_untied

    @property
    def dtype(self):
        return self.W_E.dtype

    @property
    def device(self):
        return self.W_E.device

    def hook_names(self, layer: int | None = None) -> list[str]:
        """All hook names this model emits (only block `layer`'s, if given), in forward order (a full
        forward with pattern hooks on)."""
        seen: list[str] = []

        def rec(x, name):
            seen.append(name)

        names = [n for n in self._probe_names() if layer is None or hooks.layer_of(n) == layer]
        self.run_with_hooks(torch.zeros(1, 2, dtype=torch.long, device=self.device), [(n, rec) for n in names])
        return seen

    def hook_shapes(self, layer: int | None = None, n_pos: int = 4) -> dict[str, list[int]]:
        """{hook name: shape} on a batch of one sequence of n_pos tokens (only block `layer`'s hooks, if given)."""
        tokens = torch.zeros(1, n_pos, dtype=torch.long, device=self.device)
        _, cache = self.run_with_cache(tokens, self.hook_names(layer), stop_early=False)
        return {name: list(x.shape) for name, x in cache.items()}

    def _probe_names(self):
        per_block = [
            "hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k",
            "attn.hook_v", "attn.q_norm.hook_scale", "attn.q_norm.hook_normalized", "attn.k_norm.hook_scale",
            "attn.k_norm.hook_normalized", "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_attn_scores", "attn.hook_pattern",
            "attn.hook_z", "attn.hook_result", "ln1_post.hook_scale", "ln1_post.hook_normalized",
            "hook_attn_out", "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre",
            "mlp.hook_pre_linear", "mlp.hook_mid", "mlp.ln.hook_scale", "mlp.ln.hook_normalized", "mlp.hook_post",
            "ln2_post.hook_scale", "ln2_post.hook_normalized", "hook_mlp_out", "hook_resid_post",
        ]
        names = ["hook_embed", "hook_pos_embed", hooks.FINAL_SCALE, "ln_final.hook_normalized", "unembed.hook_in",
                 "unembed.hook_out"]
        return names + [f"blocks.{i}.{n}" for i in range(self.cfg.n_layers) for n in per_block]

    def check_hook_name(self, name: str) -> None:
        if not hasattr(self, "_valid_names"):
            self._valid_names = set(self.hook_names())
        if name not in self._valid_names:
            import difflib

            close = difflib.get_close_matches(name, self._valid_names, n=3)
            hint = f" Did you mean {close}?" if close else ""
            raise KeyError(
                f"{name!r} is not a hook of this {self.cfg.family} model with {self.cfg.n_layers} layers.{hint} "
                f"Hooks follow TransformerLens names, e.g. 'blocks.0.attn.hook_z'."
            )

    def rope(self, n, layer, dtype, device):
        """(cos, sin) of the rotary embedding at positions 0..n-1 of `layer` ([n, 1, rotary_dim]: broadcast over heads),
        or None for a model without one."""
        c = self.cfg
        if c.rope_theta is None:
            return None
        theta = c.rope_local_theta if (c.is_sliding(layer) and c.rope_local_theta) else c.rope_theta
        key = (n, theta, dtype, device)
        cache = self.__dict__.setdefault("_rope_cache", {})
        if key not in cache:
            d = c.rotary_dim or c.d_head
            inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d))
            freqs = torch.arange(n, dtype=torch.float32, device=device)[:, None] * inv[None]
            emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [pos, 1, d_head] broadcasts over heads
            cache[key] = (emb.cos().to(dtype), emb.sin().to(dtype))
        return cache[key]

    def embed(self, tokens: torch.Tensor, run: Run) -> torch.Tensor:
        """Token ids [b, p] -> the residual stream entering block 0 (hook_embed, hook_pos_embed)."""
        c = self.cfg
        n = tokens.shape[1]
        if tokens.numel() and (int(tokens.max()) >= c.d_vocab or int(tokens.min()) < 0):
            raise ValueError(f"token ids must lie in [0, {c.d_vocab}); got {int(tokens.min())}..{int(tokens.max())}: "
                             "is the tokenizer the model's own?")
        if c.learned_pos and n > c.n_ctx:
            raise ValueError(f"sequence length {n} exceeds the model's context {c.n_ctx}")
        x = self.W_E[tokens]
        if c.embed_scale:
            x = x * torch.tensor(c.d_model**0.5, dtype=x.dtype)
        x = run.hook("hook_embed", x)
        if c.learned_pos:
            pos = run.hook("hook_pos_embed", self.W_pos[:n][None].expand_as(x))
            if not c.shortformer_pos:  # shortformer positions enter each layer's queries and keys instead
                x = x + pos
        return x

    def blocks_from(self, start: int, x: torch.Tensor, run: Run) -> torch.Tensor:
        """Blocks start.. applied to the residual stream x (blocks.{start}.hook_resid_pre)."""
        n = x.shape[1]
        qk_pos = self.W_pos[:n] if self.cfg.shortformer_pos else None
        for i in range(start, self.cfg.n_layers):
            x = self.blocks[i](x, run, self.rope(n, i, x.dtype, x.device), qk_pos)
        return x

    def final_norm(self, x: torch.Tensor):
        """(normalized x, the rms or std it was divided by) through ln_final, without hooks."""
        return _norm(x, self.ln_final_w, getattr(self, "ln_final_b", None), self.cfg)

    def unembed(self, x: torch.Tensor, run: Run) -> torch.Tensor:
        """The final norm (ln_final hooks), W_U and Gemma's logit soft-cap: residual [..., d_model] -> logits."""
        c = self.cfg
        x = _hooked_norm(x, self.ln_final_w, getattr(self, "ln_final_b", None), c, run, "ln_final.")
        logits = run.hook("unembed.hook_in", x) @ self.W_U
        logits = run.hook("unembed.hook_out", (logits + self.b_U if c.unembed_bias else logits).float())
        if c.final_logit_softcap:  # after unembed.hook_out, as in TransformerLens
            logits = torch.tanh(logits / c.final_logit_softcap) * c.final_logit_softcap
        return logits

    def forward_run(self, tokens: torch.Tensor, run: Run) -> torch.Tensor | None:
        if tokens.dim() == 1:
            tokens = tokens[None]
        tokens = tokens.to(self.device)
        try:
            return self.unembed(self.blocks_from(0, self.embed(tokens, run), run), run)
        except _StopForward:
            return None

    @torch.no_grad()
    def forward_from(self, start: int, resid: torch.Tensor, hooks: list[tuple[str, HookFn]] = (), cache: Iterable[str] = (),
                     at: torch.Tensor | None = None, stop_early: bool = False) -> tuple[torch.Tensor | None, dict]:
        """(logits, cache) of a forward that starts at block `start` from its residual stream `resid`
        (blocks.{start}.hook_resid_pre, [b, p, d_model]); only hooks at or after that point apply. With
        `stop_early` it stops after the last hook in `cache` (logits None): what the interventions do to it.

        With `at` ([b] positions) the final norm and unembedding run at those positions only ([b, vocab]
        logits; ln_final hooks then see [b, d_model]): a big batch's full logits need not fit in memory."""
        names = list(cache)
        for name in names + [h for h, _ in hooks]:
            self.check_hook_name(name)
        table: dict[str, list[HookFn]] = {}
        for name, fn in hooks:
            table.setdefault(name, []).append(fn)
        run = Run(cache=names, hooks=table, stop_early=stop_early)
        try:
            x = self.blocks_from(start, resid.to(self.device), run)
        except _StopForward:
            return None, run.cache
        if at is not None:
            x = x[torch.arange(x.shape[0], device=x.device), torch.as_tensor(at).to(x.device)]
        return self.unembed(x, run), run.cache

    # ---- the public entry points, TransformerLens-shaped ----
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_run(tokens, Run())

    @torch.no_grad()
    def run_with_cache(self, tokens, names: Iterable[str], stop_early: bool = True):
        """Returns (logits or None, {name: activation}). With stop_early, the forward stops
        right after the last requested hook and logits are None."""
        names = list(names)
        for name in names:
            self.check_hook_name(name)
        run = Run(cache=names, stop_early=stop_early)
        logits = self.forward_run(tokens, run)
        return logits, run.cache

    def run_with_hooks(self, tokens, hooks: list[tuple[str, HookFn]], cache: Iterable[str] = ()):
        """Forward with interventions: each fn(x, name) may return a replacement for x."""
        table: dict[str, list[HookFn]] = {}
        for name, fn in hooks:
            table.setdefault(name, []).append(fn)
        run = Run(cache=cache, hooks=table)
        logits = self.forward_run(tokens, run)
        return (logits, run.cache) if cache else logits

    def loss(self, tokens, hooks: list[tuple[str, HookFn]] = (), per_token=False):
        """Next-token cross-entropy in nats (mean, or [b, p-1] per token)."""
        tokens = tokens.to(self.device)
        logits = self.run_with_hooks(tokens, list(hooks)) if hooks else self(tokens)
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
        ce = ce.view(tokens.shape[0], -1)
        return ce if per_token else ce.mean()


# ---- interventions, for run_with_hooks ----
def zero_ablate(x: torch.Tensor, name: str) -> torch.Tensor:
    return torch.zeros_like(x)


def replace_with(value: torch.Tensor) -> HookFn:
    return lambda x, name: value.to(x.dtype).expand_as(x).clone()


def add(delta: torch.Tensor) -> HookFn:
    return lambda x, name: x + delta.to(x.dtype)


def init_random(model: Transformer, seed: int = 0) -> Transformer:
    """Small random weights, for tests and benchmarks where real weights don't exist here.
    Norm gains are perturbed too, so tests notice a norm applied the wrong way."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("_w"):  # norm gains, around a gain of 1 (stored as gain - offset)
                p.copy_(0.1 * noise + 1.0 - model.cfg.norm_gain_offset)
            else:
                p.copy_(0.02 * noise if p.dim() >= 2 else 0.01 * noise)
    return model


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


