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

from ..attribution.logit_path import head_direct_effect
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
    post = cache[f"blocks.{layer}.ln1_post.hook_scale"][:, pos] if model.cfg.family == "gemma3" else None
    return head_direct_effect(model, layer, cache[f"blocks.{layer}.attn.hook_z"][:, pos], model.W_U[:, answer],
                              cache["ln_final.hook_scale"][:, pos], post)


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
    from ..plotting import pyplot

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prefix_length.json").write_text(json.dumps({"model": model_name, **result}, indent=1))
    plt = pyplot()
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


# --- Real text (fig. 19b and fig. 4b) ---------------------------------------------------------

def prefix_length(tokens, dest: int, src: int, cap: int = 9) -> int:
    """How many tokens ending at `dest` repeat the tokens ending just before `src`: the n with
    tokens[dest-i] == tokens[src-1-i] for i < n (0 when attention to src is not induction)."""
    n = 0
    while n < cap and src - 1 - n >= 1 and tokens[dest - n] == tokens[src - 1 - n]:
        n += 1
    return n


@torch.no_grad()
def corpus_prefix_lengths(model, heads: list[tuple[int, int]], windows, threshold: float = 0.3, cap: int = 9,
                          batch: int = 16, progress: bool = True) -> dict:
    """Where each head attends > threshold to a non-BOS source on real text, the prefix length of
    that (dest, src) pair (0: not induction; capped at `cap`). Returns {'L.H': {'counts': [cap+1],
    'examples': [(window, dest, src, attention, prefix)]}}."""
    from tqdm.auto import tqdm

    layers = sorted({l for l, _ in heads})
    names = [f"blocks.{l}.attn.hook_pattern" for l in layers]
    res = {f"{l}.{h}": {"counts": [0] * (cap + 1), "examples": []} for l, h in heads}
    windows = torch.as_tensor(windows, dtype=torch.long)
    for i in tqdm(range(0, len(windows), batch), desc="prefix lengths", disable=not progress, leave=False):
        toks = windows[i:i + batch]
        _, cache = model.run_with_cache(toks, names)
        rows = toks.tolist()  # python ints: the prefix walk is a scalar loop
        for l, h in heads:
            pat = cache[f"blocks.{l}.attn.hook_pattern"][:, h].float()
            pat[:, :, 0] = 0  # BOS is the attention sink, not a token the head moves
            b, d, s = (pat > threshold).nonzero(as_tuple=True)
            r = res[f"{l}.{h}"]
            for bi, di, si in zip(b.tolist(), d.tolist(), s.tolist()):
                n = prefix_length(rows[bi], di, si, cap)
                r["counts"][n] += 1
                r["examples"].append((i + bi, di, si, float(pat[bi, di, si]), n))
    return res


@torch.no_grad()
def corrupt_long_prefix(model, heads: list[tuple[int, int]], windows, found: dict, min_prefix: int = 2,
                        n: int = 100, seed: int = 0) -> dict:
    """Fig. 4b: take up to n real examples where the head attends > threshold with a prefix of at
    least `min_prefix` tokens (and below the cap, so the match's end is known), replace the
    second-to-last repeated token (dest-1: the 'A' of 'A B ... A B -> C') by a random other token
    so that only a 1-token prefix remains, and re-measure the head's attention dest -> src.
    The control replaces instead the first token before the match (dest-prefix), which keeps
    the prefix length: it shows how much attention any nearby edit, and the selection of
    examples above the threshold, costs. {'L.H': {'n', 'clean', 'corrupted', 'control'}} means."""
    lo, hi = random_token_range(model)
    g = torch.Generator().manual_seed(seed)
    windows = torch.as_tensor(windows, dtype=torch.long)
    out = {}
    for l, h in heads:
        r = found[f"{l}.{h}"]
        cap = len(r["counts"]) - 1
        ex = [e for e in r["examples"] if min_prefix <= e[4] < cap and e[1] - e[4] >= 1]
        ex = [ex[j] for j in torch.randperm(len(ex), generator=g)[:n].tolist()]
        if not ex:
            out[f"{l}.{h}"] = {"n": 0, "clean": None, "corrupted": None, "control": None}
            continue
        clean = torch.stack([windows[w] for w, *_ in ex])
        bad, ctrl = clean.clone(), clean.clone()
        for j, (w, d, s, _, k) in enumerate(ex):
            for toks, pos, keep in ((bad, d - 1, s - 2), (ctrl, d - k, s - 1 - k)):
                t = int(torch.randint(lo, hi, (1,), generator=g))
                while t in (int(clean[j, pos]), int(clean[j, keep])):  # corrupted: break the match; control: don't extend it
                    t = lo + (t - lo + 1) % (hi - lo)
                toks[j, pos] = t
        att = {}
        for key, toks in (("clean", clean), ("corrupted", bad), ("control", ctrl)):
            vals = []
            for i in range(0, len(toks), 16):
                _, cache = model.run_with_cache(toks[i:i + 16], [f"blocks.{l}.attn.hook_pattern"])
                pat = cache[f"blocks.{l}.attn.hook_pattern"][:, h].float()
                vals += [float(pat[j, ex[i + j][1], ex[i + j][2]]) for j in range(len(pat))]
            att[key] = sum(vals) / len(vals)
        out[f"{l}.{h}"] = {"n": len(ex), **att}
    return out


def write_corpus_prefix(found: dict, corrupted: dict, out, model_name: str, threshold: float) -> None:
    """JSON (counts, shares, corruption means; no example lists) and the fig. 19b / 4b plots."""
    from ..plotting import pyplot

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {name: {"counts": r["counts"], "share": [c / max(1, sum(r["counts"])) for c in r["counts"]],
                      "corruption": corrupted.get(name)} for name, r in found.items()}
    (out / "corpus_prefix.json").write_text(json.dumps({"model": model_name, "threshold": threshold,
                                                        "heads": summary}, indent=1))
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    width = 0.8 / max(1, len(summary))
    for i, (name, r) in enumerate(summary.items()):
        xs = [x + i * width for x in range(len(r["counts"]))]
        axes[0].bar(xs, r["share"], width, label=f"{name} (n={sum(r['counts'])})")
    cap = len(next(iter(summary.values()))["counts"]) - 1
    axes[0].set_xticks(range(cap + 1), [str(k) for k in range(cap)] + [f"≥{cap}"])
    axes[0].set_xlabel("prefix length (0: not induction)")
    axes[0].set_ylabel(f"share of attention > {threshold} (non-BOS)")
    axes[0].legend(frameon=False, fontsize=8)
    names = [k for k, v in summary.items() if v["corruption"] and v["corruption"]["n"]]
    labels = {"clean": "long prefix (clean)", "corrupted": "corrupted to 1-prefix", "control": "control: edit before the match"}
    for j, key in enumerate(labels):
        axes[1].bar([i + j * 0.27 for i in range(len(names))], [summary[k]["corruption"][key] for k in names], 0.27,
                    label=labels[key])
    axes[1].set_xticks([i + 0.27 for i in range(len(names))], names)
    axes[1].set_ylabel("mean attention to the induction target")
    axes[1].legend(frameon=False, fontsize=8)
    fig.suptitle(f"{model_name}: induction on real text")
    fig.tight_layout()
    fig.savefig(out / "corpus_prefix.png", dpi=110)
    plt.close(fig)
