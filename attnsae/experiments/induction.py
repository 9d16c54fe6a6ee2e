"""Long- vs short-prefix induction on synthetic data (paper 4.2, figs. 4a and 19a).

Each sequence is [BOS, f_1..f_m, x_1..x_k, B, g_1..g_m, y, x_1..x_k] with random tokens: at the
last position the correct next token is B, and the repeat matches the first occurrence over
exactly k tokens (y differs from the token before the first x_1). Per head: the attention from
the last position to B (induction score) and the head's direct logit attribution to B, i.e.
its output through the final norm with that position's norm scale frozen.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..attribution.logit_path import through_final_norm
from .head_scores import random_token_range


def prefix_dataset(model, k: int, n: int = 64, filler: int = 20, seed: int = 0) -> tuple[torch.Tensor, int]:
    """(tokens [n, L], position of B); the correct next token at the last position is tokens[:, pos_B]."""
    lo, hi = random_token_range(model)
    g = torch.Generator().manual_seed(seed * 100 + k)
    body = torch.randint(lo, hi, (n, 2 * filler + 2 * k + 2), generator=g)
    f, x, b = body[:, :filler], body[:, filler:filler + k], body[:, filler + k:filler + k + 1]
    rest, y = body[:, filler + k + 1:2 * filler + k + 1], body[:, -1:]
    y = torch.where(y == f[:, -1:], (y - lo + 1) % (hi - lo) + lo, y)  # the match is exactly k long
    bos = torch.full((n, 1), model.cfg.bos_token_id or 0)
    tokens = torch.cat([bos, f, x, b, rest, y, x], 1)
    return tokens, 1 + filler + k


def head_dla(model, cache: dict, layer: int, pos: int, answer: torch.Tensor) -> torch.Tensor:
    """[batch, n_heads]: each head's direct contribution to the answer's logit at `pos`, through the
    final norm (and Gemma's post-attention norm) with their per-token scales frozen."""
    z = cache[f"blocks.{layer}.attn.hook_z"][:, pos].float()  # [b, h, dh]
    out = torch.einsum("bhd,hdm->bhm", z, model.blocks[layer].W_O_heads.float())
    post = cache[f"blocks.{layer}.ln1_post.hook_scale"][:, pos, None] if model.cfg.family == "gemma3" else None
    out = through_final_norm(model, layer, out, post, cache["ln_final.hook_scale"][:, pos, None])
    return torch.einsum("bhm,mb->bh", out, model.W_U.float()[:, answer])


@torch.no_grad()
def prefix_length_curves(model, heads: list[tuple[int, int]], lengths=range(1, 10), n: int = 64, seed: int = 0) -> dict:
    """{'lengths', 'heads': {'L.H': {'induction': [...], 'dla': [...]}}} means over n sequences per length."""
    layers = sorted({l for l, _ in heads})
    names = [f"blocks.{l}.attn.hook_{k}" for l in layers for k in ("pattern", "z")] + ["ln_final.hook_scale"]
    names += [f"blocks.{l}.ln1_post.hook_scale" for l in layers] if model.cfg.family == "gemma3" else []
    res = {f"{l}.{h}": {"induction": [], "dla": []} for l, h in heads}
    for k in lengths:
        tokens, pos_b = prefix_dataset(model, k, n, seed=seed)
        _, cache = model.run_with_cache(tokens, names, stop_early=False)
        last, answer = tokens.shape[1] - 1, tokens[:, pos_b]
        for l in layers:
            att = cache[f"blocks.{l}.attn.hook_pattern"][:, :, last, pos_b].float().mean(0)
            dla = head_dla(model, cache, l, last, answer).mean(0)
            for ll, h in heads:
                if ll == l:
                    res[f"{l}.{h}"]["induction"].append(float(att[h]))
                    res[f"{l}.{h}"]["dla"].append(float(dla[h]))
    return {"lengths": list(lengths), "n": n, "heads": res}


def write_prefix_curves(result: dict, out, model_name: str) -> None:
    from ..evals.plots import _plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prefix_length.json").write_text(json.dumps({"model": model_name, **result}, indent=1))
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, r in result["heads"].items():
        axes[0].plot(result["lengths"], r["induction"], "o-", label=name)
        axes[1].plot(result["lengths"], r["dla"], "o-", label=name)
    axes[0].set_ylabel("attention to the induction target")
    axes[1].set_ylabel("direct logit attribution to the correct token")
    for ax in axes:
        ax.set_xlabel("prefix length (matching tokens)")
        ax.legend(frameon=False, fontsize=8)
    fig.suptitle(f"{model_name}: induction by prefix length (n={result['n']} per length)")
    fig.tight_layout()
    fig.savefig(out / "prefix_length.png", dpi=110)
    plt.close(fig)
