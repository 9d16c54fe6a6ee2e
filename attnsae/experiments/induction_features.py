"""Automatic detection of "<token> is next by induction" features (paper appendix F, fig. 10).

Selection heuristic: a feature is an induction-feature *candidate* when its weight-based head
attribution (paper eq. 2) to one of the layer's induction heads is >= 0.6 (`pooled=True`: the
attribution summed over those heads is >= 0.6). The heads are given, or are the heads of the SAE's
layer whose induction score on repeated random tokens (experiments.head_scores) is >= 0.3.

Behaviour heuristic, for one feature i:
  t  = the token with the largest positive direct logit effect W_U . (norm gains . W_O d_i)
       (attribution.logit_path.logit_effects), the tokenizer's special and added tokens skipped;
  W  = up to 200 windows of the pool that contain t at a position >= first_pos + 1 (so the token
       before it is one the SAE reads); windows are taken in one shared random order, so features
       share windows and the forward pass is paid once per window, not once per feature;
  instances: every position p >= first_pos of a window in W with tokens[p+1] = t, i.e. every
       bigram "A t" with A = tokens[p]. The instance is the FIRST instance when the bigram (A, t)
       does not occur earlier in the window, and a LATER instance when it does (at some q < p).
  At a later instance t is next by induction, so the feature is expected to fire at p (act > 0);
  at a first instance it is not.

      induction pass rate = #(later instances where f_i(p) > 0) / #(later instances)
      first-instance fire rate = #(first instances where f_i(p) > 0) / #(first instances)

  pooled over all instances in W (a micro-average, every instance counts once). The feature
  passes when its pass rate is > 0.6 (paper). A feature whose sample holds no later instance is
  untestable: it is reported and counted as not passing, so "x/y pass" keeps y = all features.
  Windows are 128-token cuts of the corpus, so "first" means first within the window.

Control group: up to N random live features whose attribution summed over the induction heads
is < 0.1, put through the same behaviour heuristic. Reported as the paper does:
"x/y candidates pass vs a/b controls".

Not in the paper, for an SAE on a middle layer (its features reach the logits through later layers, so the
top direct-logit token can be a stray subword): token="next" tests instead the token most often next where the
feature fires, counted on the repeat_rates sample; controls get the same treatment.

Not in the paper, for short windows where a feature's token rarely recurs after the same token: repeat_half
tests on windows holding their first half twice (repeat_first_half), so nearly every feature is testable.

Not in the paper, for SAEs whose induction features are not one-per-token: repeat_rates gives each
feature's P(duplicate | fires) and P(induction-predictable next token | fires) on a sample of windows,
beside the base rates of those events over all tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..attribution.heads import head_attribution, layer_of
from ..attribution.logit_path import logit_effects
from ..evals.metrics import DEAD_THRESHOLD
from ..features.inputs import InputSpec, load_inputs
from ..features.source import ActivationSource
from ..models.hooks import act_name, head_name, parse_heads
from ..models.text import TokenText
from ..plotting import pyplot, save
from ..results import Result
from ..sae import load_feature_density
from .head_scores import diag_mean, repeated_random_tokens

SELECT_THRESHOLD = 0.6  # paper: attribution >= 0.6 to the induction head
CONTROL_MAX = 0.1  # paper: controls have attribution < 10% to it
PASS_THRESHOLD = 0.6  # paper: the heuristic passes at an induction pass rate > 60%
MIN_HEAD_SCORE = 0.3  # a head counts as an induction head from this induction score up


# ---- selection heuristic ----

@torch.no_grad()
def layer_induction_heads(model, layer: int, min_score: float = MIN_HEAD_SCORE, n: int = 50, batch: int = 16,
                          seed: int = 0) -> list[tuple[int, float]]:
    """[(head, induction score)] of `layer`'s heads scoring >= min_score on repeated random tokens
    (the induction score of experiments.head_scores), strongest first."""
    tokens = repeated_random_tokens(model, n, batch, seed).to(model.device)
    name = act_name("pattern", layer)
    _, cache = model.run_with_cache(tokens, [name], stop_early=True)
    scores = diag_mean(cache[name].cpu(), n - 1, range(n + 1, 2 * n + 1))
    heads = [(h, float(s)) for h, s in enumerate(scores) if s >= min_score]
    if not heads:
        best = int(scores.argmax())
        raise ValueError(f"layer {layer} has no head with induction score >= {min_score} (best: {layer}.{best} "
                         f"{float(scores[best]):.2f}); name the heads explicitly")
    return sorted(heads, key=lambda x: -x[1])


def select_candidates(attribution: torch.Tensor, heads, live: torch.Tensor | None = None,
                      threshold: float = SELECT_THRESHOLD, pooled: bool = False) -> list[int]:
    """Features with attribution >= threshold to one of `heads` (pooled: summed over them), live ones only."""
    a = attribution[:, list(heads)]
    score = a.sum(1) if pooled else a.max(1).values
    keep = score >= threshold
    if live is not None:
        keep &= live
    return keep.nonzero().flatten().tolist()


def select_controls(attribution: torch.Tensor, heads, live: torch.Tensor, n: int, max_attr: float = CONTROL_MAX,
                    seed: int = 0) -> list[int]:
    """Up to n random live features whose attribution summed over `heads` is < max_attr (sorted)."""
    ok = ((attribution[:, list(heads)].sum(1) < max_attr) & live).nonzero().flatten()
    pick = torch.randperm(len(ok), generator=torch.Generator().manual_seed(seed))[:n]
    return sorted(ok[pick].tolist())


# ---- behaviour heuristic ----

def bigram_instances(windows: np.ndarray, target: int, window_ids, first_pos: int = 1):
    """Instances of bigrams "A target" in the given windows: (w, p, is_first) arrays, where p is A's
    position (>= first_pos) and is_first says the bigram (A, target) did not occur earlier in window w."""
    ws, ps, first = [], [], []
    for w in window_ids:
        row = windows[w]
        seen = set()
        for p in (np.flatnonzero(row[first_pos + 1:] == target) + first_pos).tolist():
            a = int(row[p])
            ws.append(int(w))
            ps.append(p)
            first.append(a not in seen)
            seen.add(a)
    return np.asarray(ws, dtype=np.int64), np.asarray(ps, dtype=np.int64), np.asarray(first, dtype=bool)


def choose_windows(windows: np.ndarray, target: int, n: int, rank: np.ndarray, first_pos: int = 1) -> np.ndarray:
    """Up to n windows holding `target` at a position >= first_pos + 1, the first ones in `rank` order
    (rank[w] = the window's place in one random order shared by all features)."""
    has = np.flatnonzero((windows[:, first_pos + 1:] == target).any(1))
    return has[np.argsort(rank[has], kind="stable")[:n]]


def repeat_first_half(windows: np.ndarray, first_pos: int = 1) -> np.ndarray:
    """Windows of the same length holding their first half twice: row[:first_pos] + X + X (+ X[0] when the
    content length is odd), X = the first (ctx - first_pos) // 2 content tokens. Every bigram of X recurs in
    the second copy, so a feature whose token occurs in X has later instances to test; natural windows
    rarely repeat a given bigram within 128 tokens, which leaves most features untestable."""
    w = np.asarray(windows)
    h = (w.shape[1] - first_pos) // 2
    x = w[:, first_pos:first_pos + h]
    return np.concatenate([w[:, :first_pos], x, x, x[:, :(w.shape[1] - first_pos) % 2]], 1)


def pass_rates(fired: np.ndarray, is_first: np.ndarray, pass_threshold: float = PASS_THRESHOLD) -> dict:
    """Counts and rates for one feature from its instances (see the module docstring)."""
    fired, is_first = np.asarray(fired, dtype=bool), np.asarray(is_first, dtype=bool)
    n_first, n_later = int(is_first.sum()), int((~is_first).sum())
    k_first, k_later = int((fired & is_first).sum()), int((fired & ~is_first).sum())
    rate = k_later / n_later if n_later else None
    first_rate = k_first / n_first if n_first else None  # a later instance implies a first one in its window
    passes = rate is not None and rate > pass_threshold
    return {"n_first": n_first, "n_first_fired": k_first, "n_later": n_later, "n_later_fired": k_later,
            "pass_rate": rate, "first_fire_rate": first_rate, "testable": n_later > 0, "passes": passes,
            # ours, not the paper's: also quiet on first instances (a feature firing everywhere passes the paper's rule)
            "passes_strict": passes and first_rate is not None and first_rate <= 1 - pass_threshold}


def behaviour(model, sae, features, source: ActivationSource, *, per_feature: int = 200,
              pass_threshold: float = PASS_THRESHOLD, min_act: float = 0.0, targets: dict | None = None, seed: int = 0,
              batch_size: int = 16, progress: bool = True) -> list[dict]:
    """The induction behaviour heuristic for each feature over the source's windows: one dict per feature (token,
    counts, rates). A feature "fires" at a position when its activation is > min_act (default 0). targets:
    {feature: token id} to test instead of the top direct-logit token (token_source "given"; the logit token is
    still reported)."""
    features = [int(f) for f in features]
    if not features:
        return []
    windows, first = source.windows, sae.cfg.first_pos
    # the top token that text can hold: special tokens (e.g. SmolLM2's <filename>) never follow a bigram
    tok = model.tokenizer
    special = set(getattr(tok, "all_special_ids", None) or []) | set(getattr(tok, "added_tokens_decoder", None) or {})
    _, effects = logit_effects(model, sae, features, k=len(special) + 1)
    tops = [next((int(i), float(v)) for i, v in zip(*e["top"]) if int(i) not in special) for e in effects]
    targets = targets or {}
    tested = [targets.get(f, t) for f, (t, _) in zip(features, tops)]
    rank = np.random.default_rng(seed).permutation(len(windows))
    per = []
    for t in tested:
        wins = choose_windows(windows, t, per_feature, rank, first)
        w, p, is_first = bigram_instances(windows, t, wins, first)
        per.append((wins, w, p, is_first))
    # one pass over the union of queried (window, position) points, all features at once
    qw = np.concatenate([x[1] for x in per])
    qp = np.concatenate([x[2] for x in per])
    ctx = windows.shape[1]
    uniq, inv = np.unique(qw * ctx + qp, return_inverse=True)
    acts = source.at(sae, features, uniq // ctx, uniq % ctx, batch_size=batch_size, progress=progress)
    text = TokenText(model.tokenizer)
    out, offset = [], 0
    for col, (f, t, (t_logit, logit), (wins, w, _, is_first)) in enumerate(zip(features, tested, tops, per)):
        a = acts[inv[offset:offset + len(w)], col].numpy()
        offset += len(w)
        out.append({"feature": f, "token_id": t, "token": text([t])[0], "token_source": "given" if f in targets else "logit",
                    "logit_token_id": t_logit, "logit_token": text([t_logit])[0], "logit_effect": logit,
                    "n_windows": len(wins), **pass_rates(a > min_act, is_first, pass_threshold),
                    "mean_act_later": float(a[~is_first].mean()) if (~is_first).any() else None})
    return out


def repeat_masks(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(duplicate, induction_next) bool [n, ctx]: tokens[p] occurred at some q < p; and some such q also has
    tokens[q+1] = tokens[p+1] (the next token is predictable by copying what followed an earlier copy).
    Position 0 (BOS) is never a source; the last position has no next token (induction_next False)."""
    w = np.asarray(windows)
    dup, nxt = np.zeros(w.shape, dtype=bool), np.zeros(w.shape, dtype=bool)
    for i, row in enumerate(w.tolist()):
        followers: dict[int, set] = {}  # token -> the tokens that followed its earlier copies
        for p in range(1, len(row)):
            f = followers.get(row[p])
            dup[i, p] = f is not None
            nxt[i, p] = f is not None and p + 1 < len(row) and row[p + 1] in f
            if p + 1 < len(row):  # this copy's follower is known only to later positions
                followers.setdefault(row[p], set()).add(row[p + 1])
    return dup, nxt


def repeat_rates(sae, features, source: ActivationSource, *, n_windows: int = 300, seed: int = 0, batch_size: int = 16,
                 progress: bool = True) -> tuple[list[dict], dict]:
    """A token-agnostic view of induction: over n_windows random windows of the source (positions first_pos..ctx-2),
    per feature the fraction of its firing tokens that are duplicates and that are induction-predictable
    (repeat_masks), to compare with the base rates over all those tokens; and the token most often next where
    it fires, with its share. ([per feature], base rates)."""
    windows = source.windows
    first, ctx = sae.cfg.first_pos, windows.shape[1]
    pick = np.sort(np.random.default_rng([seed, 1]).permutation(len(windows))[:n_windows])
    dup, nxt = repeat_masks(windows[pick])
    pos = np.arange(first, ctx - 1)
    w, p = np.repeat(pick, len(pos)), np.tile(pos, len(pick))
    on = source.at(sae, features, w, p, batch_size=batch_size, progress=progress).numpy() > 0  # [n, F]
    d, x = dup[:, first:ctx - 1].ravel(), nxt[:, first:ctx - 1].ravel()
    n_on, n_dup, n_nxt = on.sum(0), d.astype(np.int64) @ on, x.astype(np.int64) @ on  # int: bool @ bool is an OR
    following = windows[w, p + 1]
    rows = []
    for j, n in enumerate(n_on):
        ids, counts = np.unique(following[on[:, j]], return_counts=True)
        top = int(counts.argmax()) if n else None
        rows.append({"n_fire_sample": int(n), "p_duplicate": float(n_dup[j] / n) if n else None,
                     "p_induction_next": float(n_nxt[j] / n) if n else None,
                     "top_next_token_id": int(ids[top]) if n else None,
                     "top_next_share": float(counts[top] / n) if n else None})
    return rows, {"n_windows": int(len(pick)), "n_tokens": int(len(d)), "p_duplicate": float(d.mean()),
                  "p_induction_next": float(x.mean())}


def _median(xs: list) -> float | None:
    return float(np.median(xs)) if xs else None


def summarize(rows: list[dict]) -> dict:
    """Counts over a group of features, and medians over those where the rate is defined."""
    return {"n": len(rows), "n_testable": sum(r["testable"] for r in rows), "n_pass": sum(r["passes"] for r in rows),
            "n_pass_strict": sum(r["passes_strict"] for r in rows),
            "median_pass_rate": _median([r["pass_rate"] for r in rows if r["testable"]]),
            "median_first_fire_rate": _median([r["first_fire_rate"] for r in rows if r["testable"]]),
            "median_first_fire_rate_of_passing": _median([r["first_fire_rate"] for r in rows if r["passes"]]),
            "median_p_duplicate": _median([r["p_duplicate"] for r in rows if r.get("p_duplicate") is not None]),
            "median_p_induction_next": _median([r["p_induction_next"] for r in rows if r.get("p_induction_next") is not None])}


def _rate(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


@dataclass
class InductionFeatures(Result):
    name: ClassVar[str] = "induction_features"
    model: str
    hook: str
    layer: int
    d_sae: int
    n_live: int
    heads: list[str]  # LAYER.HEAD
    head_induction_scores: dict | None  # {head: score} when the heads were found, not given
    n_windows_pool: int
    rules: dict  # each heuristic in words
    candidates: dict  # summarize() of the candidates
    controls: dict
    repeat_base_rates: dict | None
    passing_fraction_of_live: float
    headline: str
    candidate_features: list[dict]
    control_features: list[dict]
    sae: str | None = None
    store: str | None = None
    live: str | None = None  # which features counted as live
    threshold: float = SELECT_THRESHOLD  # the selection rule, for the summary (in `rules` in the JSON)
    pooled: bool = False

    def to_json(self) -> dict:
        return {k: v for k, v in super().to_json().items() if k not in ("threshold", "pooled")}

    def summary(self) -> str:
        heads = ", ".join(f"{h} ({s:.2f})" for h, s in self.head_induction_scores.items()) if self.head_induction_scores \
            else ", ".join(self.heads)
        lines = [f"{self.model} L{self.layer}: induction heads {heads}; {self.candidates['n']} candidates "
                 f"(attribution >= {self.threshold}{', pooled' if self.pooled else ''}), {self.controls['n']} controls, "
                 f"{self.n_windows_pool} windows", self.headline]
        if self.repeat_base_rates:
            b, c, k = self.repeat_base_rates, self.candidates, self.controls
            lines.append(f"where they fire (median over features): P(token repeats an earlier one) candidates "
                         f"{_rate(c['median_p_duplicate'])} vs controls {_rate(k['median_p_duplicate'])} (all tokens "
                         f"{b['p_duplicate']:.2f}); P(next token predicted by induction) {_rate(c['median_p_induction_next'])}"
                         f" vs {_rate(k['median_p_induction_next'])} ({b['p_induction_next']:.2f})")
        passing = sorted((x for x in self.candidate_features if x["passes"]), key=lambda x: -x["pass_rate"])[:10]
        if passing:
            lines.append("e.g. " + ", ".join(f"F{x['feature']} {x['token']!r} {x['pass_rate']:.0%}" for x in passing))
        return "\n".join(lines)

    def plot(self, out: Path) -> list[Path]:
        """Pass-rate histograms of candidates and controls (fig. 10), and where they fire when measured."""
        plt = pyplot()
        base = self.repeat_base_rates
        fig, axes = plt.subplots(2 if base else 1, 2, figsize=(10, 6.6 if base else 3.6), squeeze=False)
        bins = np.linspace(0, 1, 21)
        for col, (rows, s, name, color) in enumerate(((self.candidate_features, self.candidates, "candidates", "#3b6ea8"),
                                                      (self.control_features, self.controls, "controls", "#999"))):
            ax = axes[0, col]
            ax.hist([r["pass_rate"] for r in rows if r["testable"]], bins=bins, color=color)
            ax.axvline(PASS_THRESHOLD, color="#b33", ls="--", lw=1)
            ax.set_title(f"{name}: {s['n_pass']}/{s['n']} pass ({s['n_testable']} testable)", fontsize=10)
            ax.set_xlabel("induction pass rate (paper's heuristic)")
            ax.set_ylabel("features")
            if base:  # the token-agnostic view
                ax = axes[1, col]
                ax.hist([r["p_induction_next"] for r in rows if r.get("p_induction_next") is not None], bins=bins,
                        color=color)
                ax.axvline(base["p_induction_next"], color="#b33", ls="--", lw=1, label="all tokens")
                ax.set_xlabel("P(next token predicted by induction | fires)")
                ax.set_ylabel("features")
                ax.legend(frameon=False, fontsize=8)
        fig.suptitle(f"{self.model} L{self.layer}: induction features (heads {', '.join(self.heads)})")
        path = Path(out) / "induction_features.png"
        save(fig, path)
        return [path]


def find_induction_features(model, sae, source: ActivationSource, heads=None, *, live: torch.Tensor | None = None,
                            threshold: float = SELECT_THRESHOLD, pooled: bool = False, n_control: int = 200,
                            control_max: float = CONTROL_MAX, per_feature: int = 200,
                            pass_threshold: float = PASS_THRESHOLD, min_head_score: float = MIN_HEAD_SCORE,
                            repeat_windows: int = 300, repeat_half: bool = False, token: str = "logit", seed: int = 0,
                            batch_size: int = 16, progress: bool = True) -> InductionFeatures:
    """Selection + behaviour heuristics on the SAE's layer, over the source's windows (the pool).

    heads: head indices of the SAE's layer (default: those with induction score >= min_head_score).
    live: [d_sae] bool (default: every feature; pass the SAE's density >= 1e-5 when known).
    repeat_windows: windows for the token-agnostic repeat_rates of every feature (0: skip).
    repeat_half: test on repeat_first_half(windows) instead, run through the model (a store holds only the
    original windows, so it is not read).
    token: which token t the behaviour heuristic tests: "logit" (paper: the top direct-logit token) or "next" (the
    token most often next where the feature fires in the repeat_rates sample; the logit token for a feature that
    never fires there). "next" suits SAEs on a middle layer, whose features act through later layers rather
    than on the logits directly."""
    if token not in ("logit", "next"):
        raise ValueError(f"token must be 'logit' or 'next', not {token!r}")
    if token == "next" and not repeat_windows:
        raise ValueError("token='next' picks each feature's token on the repeat_rates sample: repeat_windows must be > 0")
    if repeat_half:
        source = ActivationSource(model, repeat_first_half(source.windows, sae.cfg.first_pos))
    layer = layer_of(sae)
    n_heads = model.cfg.n_heads
    if heads is None:
        found = layer_induction_heads(model, layer, min_head_score)
        heads, head_scores = [h for h, _ in found], {head_name(layer, h): s for h, s in found}
    else:
        heads = [int(h) for h in heads]
        bad = [h for h in heads if not 0 <= h < n_heads]
        if bad:
            raise ValueError(f"heads {bad} out of range: layer {layer} has {n_heads} heads")
        head_scores = None
    attribution = head_attribution(sae, n_heads)
    live = torch.ones(sae.d_sae, dtype=torch.bool) if live is None else live.bool()
    cands = select_candidates(attribution, heads, live, threshold, pooled)
    controls = select_controls(attribution, heads, live, n_control, control_max, seed)
    feats = cands + controls
    rep, base = repeat_rates(sae, feats, source, n_windows=repeat_windows, seed=seed, batch_size=batch_size,
                             progress=progress) if repeat_windows and feats else ([{}] * len(feats), None)
    targets = {f: x["top_next_token_id"] for f, x in zip(feats, rep) if x.get("top_next_token_id") is not None} \
        if token == "next" else None
    rows = behaviour(model, sae, feats, source, per_feature=per_feature, pass_threshold=pass_threshold, targets=targets,
                     seed=seed, batch_size=batch_size, progress=progress)
    for r, x in zip(rows, rep):
        r["attribution"] = {head_name(layer, h): round(float(attribution[r["feature"], h]), 4) for h in heads}
        r.update(x)
    cand_rows, ctrl_rows = rows[:len(cands)], rows[len(cands):]
    sc, sk = summarize(cand_rows), summarize(ctrl_rows)
    other_rule = len(select_candidates(attribution, heads, live, threshold, not pooled))
    return InductionFeatures(
        model=model.cfg.name, hook=sae.cfg.hook_name, layer=layer, d_sae=sae.d_sae, n_live=int(live.sum()),
        heads=[head_name(layer, h) for h in heads], head_induction_scores=head_scores, n_windows_pool=len(source),
        rules={
            "selection": f"attribution {'summed over' if pooled else 'to one of'} the heads >= {threshold}",
            "n_candidates_other_rule": other_rule,
            "control": f"random live features with attribution summed over the heads < {control_max} (up to {n_control})",
            "token": "top positive direct logit effect W_U . (norm gains . W_O d_i), special / added tokens skipped"
                     if token == "logit" else "the token most often next where the feature fires in the repeat sample "
                     "(the top direct-logit token for features that never fire there)",
            "windows": f"up to {per_feature} pool windows containing the token"
                       + (", each holding its first half twice (repeat_first_half)" if repeat_half else ""),
            "pass_rate": "#(later instances of a bigram 'A t' in a window where the feature fires at A) / #(later instances)",
            "first_fire_rate": "#(first instances of 'A t' in a window where it fires at A) / #(first instances)",
            "passes": f"pass rate > {pass_threshold}; untestable (no later instance) counts as not passing",
            "passes_strict": f"passes and first-instance fire rate <= {1 - pass_threshold:.2g} (not in the paper)",
            "p_duplicate": "of the tokens where the feature fires, the fraction whose token occurred earlier in the window",
            "p_induction_next": "... whose next token also followed an earlier copy of the current token (induction "
                                "predicts it); compare with repeat_base_rates (not in the paper)",
        },
        candidates=sc, controls=sk, repeat_base_rates=base,
        passing_fraction_of_live=sc["n_pass"] / max(int(live.sum()), 1),  # paper: the family is 5% of live features
        headline=f"{sc['n_pass']}/{sc['n']} candidates pass vs {sk['n_pass']}/{sk['n']} controls "
                 f"(testable: {sc['n_testable']}/{sc['n']} and {sk['n_testable']}/{sk['n']}; also quiet on first "
                 f"instances: {sc['n_pass_strict']} vs {sk['n_pass_strict']})",
        candidate_features=cand_rows, control_features=ctrl_rows, threshold=threshold, pooled=pooled,
    )


def heads_of_layer(specs, layer: int, model) -> list[int]:
    """LAYER.HEAD specs -> the HEAD of each, all of which must be in the SAE's layer."""
    out = []
    for spec, (l, h) in zip(specs, parse_heads(specs, model)):
        if l != layer:
            raise ValueError(f"--head {spec}: the SAE is on layer {layer}; name heads of that layer")
        out.append(h)
    return out


def run_induction_features(spec: InputSpec, heads=(), **kw) -> InductionFeatures:
    """The induction-features command: load one SAE and its windows (spec), its live features from its training
    density when saved, and find_induction_features (kw) on the heads named LAYER.HEAD (default: found)."""
    found = []

    def check(model, saes):
        found.extend(heads_of_layer(heads, layer_of(saes[0]), model))
    inputs = load_inputs(spec, check)
    density = load_feature_density(spec.saes[0])
    r = find_induction_features(inputs.model, inputs.saes[0], inputs.source, found or None,
                                live=None if density is None else density >= DEAD_THRESHOLD, seed=spec.seed, **kw)
    r.sae, r.store = str(spec.saes[0]), spec.store
    r.live = "every feature (the SAE folder has no sparsity.safetensors)" if density is None else \
        f"training density >= {DEAD_THRESHOLD:g} (sparsity.safetensors)"
    return r
