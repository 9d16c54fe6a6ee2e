"""Long- vs short-prefix induction (paper 4.2): on synthetic data (figs. 4a and 19a), and on real text (figs. 4b, 19b).

Each sequence is [BOS, f_1..f_m, x_1..x_k, B, g_1..g_m, y, x_1..x_k] with random tokens: at the
last position the correct next token is B, and the repeat matches the first occurrence over
exactly k tokens (y differs from the token before the first x_1). Per head: the attention from
the last position to B (induction score) and the head's direct logit attribution to B, i.e.
its output through the final norm with that position's norm scale frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from ..attribution.logit_path import head_direct_effect
from ..models.hooks import FINAL_SCALE, act_name, head_name
from ..plotting import pyplot, save
from ..results import Result
from .head_scores import head_scores, random_token_range, top_heads


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
    post = cache[act_name("scale", layer, "ln1_post")][:, pos] if model.cfg.post_norms else None
    return head_direct_effect(model, layer, cache[act_name("z", layer)][:, pos], model.W_U[:, answer],
                              cache[FINAL_SCALE][:, pos], post)


@torch.no_grad()
def prefix_length_curves(model, heads: list[tuple[int, int]], lengths=range(1, 10), n: int = 64, seed: int = 0) -> dict:
    """{'lengths', 'heads': {'L.H': {'induction': [...], 'dla': [...]}}} means over n sequences per length."""
    layers = sorted({l for l, _ in heads})
    names = [act_name(k, l) for l in layers for k in ("pattern", "z")] + [FINAL_SCALE]
    names += [act_name("scale", l, "ln1_post") for l in layers] if model.cfg.post_norms else []
    res = {head_name(l, h): {"induction": [], "dla": []} for l, h in heads}
    for k in lengths:
        tokens, pos_b = prefix_dataset(model, k, n, seed=seed)
        _, cache = model.run_with_cache(tokens, names, stop_early=False)
        last, answer = tokens.shape[1] - 1, tokens[:, pos_b]
        for l in layers:
            att = cache[act_name("pattern", l)][:, :, last, pos_b].float().mean(0)
            dla = head_dla(model, cache, l, last, answer).mean(0)
            for ll, h in heads:
                if ll == l:
                    res[head_name(l, h)]["induction"].append(float(att[h]))
                    res[head_name(l, h)]["dla"].append(float(dla[h]))
    return {"lengths": list(lengths), "n": n, "heads": res}


@dataclass
class PrefixCurves(Result):
    """prefix_length.json: per head, mean attention to the induction target and DLA to it, by prefix length."""

    name: ClassVar[str] = "prefix_length"
    model: str
    lengths: list[int]
    n: int
    heads: dict[str, dict[str, list[float]]]

    def summary(self) -> str:
        lines = [f"{name}: induction " + " ".join(f"{v:.2f}" for v in c["induction"]) + " | DLA "
                 + " ".join(f"{v:.2f}" for v in c["dla"]) for name, c in self.heads.items()]
        return "\n".join(lines + [f"(prefix lengths {self.lengths[0]}..{self.lengths[-1]})"])

    def plot(self, out: Path) -> list[Path]:
        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for name, r in self.heads.items():
            axes[0].plot(self.lengths, r["induction"], "o-", label=name)
            axes[1].plot(self.lengths, r["dla"], "o-", label=name)
        axes[0].set_ylabel("attention to the induction target")
        axes[1].set_ylabel("direct logit attribution to the correct token")
        for ax in axes:
            ax.set_xlabel("prefix length (matching tokens)")
            ax.legend(frameon=False, fontsize=8)
        fig.suptitle(f"{self.model}: induction by prefix length (n={self.n} per length)")
        path = out / "prefix_length.png"
        save(fig, path)
        return [path]


def strongest_induction_heads(model, k: int) -> list[tuple[int, int]]:
    """The k heads with the highest induction scores on repeated random tokens."""
    return [(l, h) for l, h, _ in top_heads(head_scores(model)["induction"], k)]


def run_prefix_curves(model, heads: list[tuple[int, int]], n: int = 64, seed: int = 0) -> PrefixCurves:
    """Fig. 4a / 19a: prefix_length_curves of `heads` as a result."""
    return PrefixCurves(model.cfg.name, **prefix_length_curves(model, heads, n=n, seed=seed))


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
    names = [act_name("pattern", l) for l in layers]
    res = {head_name(l, h): {"counts": [0] * (cap + 1), "examples": []} for l, h in heads}
    windows = torch.as_tensor(windows, dtype=torch.long)
    for i in tqdm(range(0, len(windows), batch), desc="prefix lengths", disable=not progress, leave=False):
        toks = windows[i:i + batch]
        _, cache = model.run_with_cache(toks, names)
        rows = toks.tolist()  # python ints: the prefix walk is a scalar loop
        for l, h in heads:
            pat = cache[act_name("pattern", l)][:, h].float()
            pat[:, :, 0] = 0  # BOS is the attention sink, not a token the head moves
            b, d, s = (pat > threshold).nonzero(as_tuple=True)
            r = res[head_name(l, h)]
            for bi, di, si in zip(b.tolist(), d.tolist(), s.tolist(), strict=True):
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
        r = found[head_name(l, h)]
        cap = len(r["counts"]) - 1
        ex = [e for e in r["examples"] if min_prefix <= e[4] < cap and e[1] - e[4] >= 1]
        ex = [ex[j] for j in torch.randperm(len(ex), generator=g)[:n].tolist()]
        if not ex:
            out[head_name(l, h)] = {"n": 0, "clean": None, "corrupted": None, "control": None}
            continue
        clean = torch.stack([windows[w] for w, *_ in ex])
        bad, ctrl = clean.clone(), clean.clone()
        for j, (_, d, s, _, k) in enumerate(ex):
            for toks, pos, keep in ((bad, d - 1, s - 2), (ctrl, d - k, s - 1 - k)):
                t = int(torch.randint(lo, hi, (1,), generator=g))
                while t in (int(clean[j, pos]), int(clean[j, keep])):  # corrupted: break the match; control: don't extend it
                    t = lo + (t - lo + 1) % (hi - lo)
                toks[j, pos] = t
        att = {}
        for key, toks in (("clean", clean), ("corrupted", bad), ("control", ctrl)):
            vals = []
            for i in range(0, len(toks), 16):
                _, cache = model.run_with_cache(toks[i:i + 16], [act_name("pattern", l)])
                pat = cache[act_name("pattern", l)][:, h].float()
                vals += [float(pat[j, ex[i + j][1], ex[i + j][2]]) for j in range(len(pat))]
            att[key] = sum(vals) / len(vals)
        out[head_name(l, h)] = {"n": len(ex), **att}
    return out


@dataclass
class CorpusPrefix(Result):
    """corpus_prefix.json: per head, how often it attends above `threshold` at each prefix length on real text
    (shares too), and the long-prefix corruption's attention means; the examples stay out of the file."""

    name: ClassVar[str] = "corpus_prefix"
    model: str
    threshold: float
    found: dict  # corpus_prefix_lengths
    corrupted: dict  # corrupt_long_prefix
    n_windows: int

    def per_head(self) -> dict:
        """{head: counts, shares and corruption means}: the JSON's 'heads'."""
        return {name: {"counts": r["counts"], "share": [c / max(1, sum(r["counts"])) for c in r["counts"]],
                       "corruption": self.corrupted.get(name)} for name, r in self.found.items()}

    def to_json(self) -> dict:
        return {"model": self.model, "threshold": self.threshold, "heads": self.per_head()}

    def summary(self) -> str:
        lines = []
        for name, f in self.found.items():
            c, total = self.corrupted[name], max(1, sum(f["counts"]))
            lines.append(f"{name} real text: {sum(f['counts'])} attentions > {self.threshold}, prefix 0/1/>=2: "
                         f"{f['counts'][0] / total:.2f}/{f['counts'][1] / total:.2f}/{sum(f['counts'][2:]) / total:.2f}"
                         + (f" | long prefix {c['clean']:.2f} -> 1-prefix {c['corrupted']:.2f}, control {c['control']:.2f} "
                            f"(n={c['n']})" if c["n"] else ""))
        return "\n".join(lines + [f"({self.n_windows} held-out windows)"])

    def plot(self, out: Path) -> list[Path]:
        """Fig. 19b (shares by prefix length) and fig. 4b (attention before and after the corruption)."""
        summary = self.per_head()
        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
        width = 0.8 / max(1, len(summary))
        for i, (name, r) in enumerate(summary.items()):
            xs = [x + i * width for x in range(len(r["counts"]))]
            axes[0].bar(xs, r["share"], width, label=f"{name} (n={sum(r['counts'])})")
        cap = len(next(iter(summary.values()))["counts"]) - 1
        axes[0].set_xticks(range(cap + 1), [str(k) for k in range(cap)] + [f"≥{cap}"])
        axes[0].set_xlabel("prefix length (0: not induction)")
        axes[0].set_ylabel(f"share of attention > {self.threshold} (non-BOS)")
        axes[0].legend(frameon=False, fontsize=8)
        names = [k for k, v in summary.items() if v["corruption"] and v["corruption"]["n"]]
        labels = {"clean": "long prefix (clean)", "corrupted": "corrupted to 1-prefix",
                  "control": "control: edit before the match"}
        for j, key in enumerate(labels):
            axes[1].bar([i + j * 0.27 for i in range(len(names))], [summary[k]["corruption"][key] for k in names], 0.27,
                        label=labels[key])
        axes[1].set_xticks([i + 0.27 for i in range(len(names))], names)
        axes[1].set_ylabel("mean attention to the induction target")
        axes[1].legend(frameon=False, fontsize=8)
        fig.suptitle(f"{self.model}: induction on real text")
        path = out / "corpus_prefix.png"
        save(fig, path)
        return [path]


def run_corpus_prefix(model, heads: list[tuple[int, int]], windows, threshold: float = 0.3, n: int = 100,
                      seed: int = 0) -> CorpusPrefix:
    """Figs. 19b and 4b on real text `windows`: corpus_prefix_lengths, then corrupt_long_prefix on n examples per head."""
    found = corpus_prefix_lengths(model, heads, windows, threshold=threshold)
    return CorpusPrefix(model.cfg.name, threshold, found, corrupt_long_prefix(model, heads, windows, found, n=n, seed=seed),
                        len(windows))
