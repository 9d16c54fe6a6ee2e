"""Feature case studies (paper 3.3, appendices E, G, H): one feature against a proxy.

A *proxy* is a predicate on token windows giving a per-token bool mask: where a person's reading of
the feature says it should fire. Built-in proxies, written as strings (TOKEN is a token's text taken
verbatim after the colon, leading space included, or #ID for a token id; it must be ONE token):

  induction:TOKEN     p where some q < p has tokens[q] = tokens[p] and tokens[q+1] = TOKEN
                      (TOKEN is next by induction; the paper's "'board' induction")
  after:TOKEN:N       the N positions after each TOKEN, stopping before the first punctuation token
                      (one whose text, stripped, is all punctuation) or a token with a newline
                      (the paper's "in a question starting with 'Which'": after: Which:10)
  context:T1,T2,...   every position at or after any of these tokens in the window ("text about pets")
  token:TOKEN         the current token is TOKEN
  inside:OPEN:CLOSE   p inside an open bracket: in the text of tokens 0..p, the running count of OPEN
                      minus CLOSE (never below 0) is > 0 (e.g. inside:(:) for "inside parentheses")

Given a feature and a proxy, over the tokens of a corpus sample (positions >= the SAE's first_pos):
  specificity plot   histogram of the feature's nonzero activations (equal-width bins from 0 to the
                     max), each bin split into proxy-true and proxy-false tokens (fig. 2a / 11)
  expected value     per bin, sum of activations / number of tokens, split the same way: the bin's
                     contribution to E[f] over all tokens, so the bins sum to E[f] (fig. 2b)
  sensitivity        #(proxy-true tokens where f > 0) / #(proxy-true tokens); the proxy-true tokens
                     where f = 0 are the false negatives, listed with their context (appendix E)
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..attribution.heads import layer_of, require_hook_z
from ..features.inputs import InputSpec, load_inputs
from ..features.source import ActivationSource
from ..models.text import TokenText
from ..plotting import pyplot, save
from ..results import Result

PROXY_HELP = "induction:TOKEN | after:TOKEN:N | context:T1,T2,... | token:TOKEN | inside:OPEN:CLOSE"


# ---- proxies: pure functions of token windows [n, ctx] -> bool [n, ctx] ----

def induction_mask(windows: np.ndarray, token: int) -> np.ndarray:
    """p where an earlier q < p has tokens[q] = tokens[p] and tokens[q+1] = token."""
    w = np.asarray(windows)
    out = np.zeros(w.shape, dtype=bool)
    for i, row in enumerate(w):
        prefixes = set()  # tokens A seen so far followed by `token`
        for p in range(len(row)):
            if p >= 1 and row[p] == token:
                prefixes.add(int(row[p - 1]))  # tokens[p-1] = A, tokens[p] = token: "A token" seen
            # the bigram ending at p was added first: for q = p - 1, q < p holds
            out[i, p] = int(row[p]) in prefixes
    return out


def token_mask(windows: np.ndarray, token: int) -> np.ndarray:
    return np.asarray(windows) == token


def context_mask(windows: np.ndarray, tokens) -> np.ndarray:
    """Every position at or after the first occurrence of any of `tokens` in its window."""
    hit = np.isin(np.asarray(windows), list(tokens))
    return np.cumsum(hit, axis=1) > 0


def after_mask(windows: np.ndarray, token: int, n: int, is_stop: Callable[[int], bool]) -> np.ndarray:
    """The n positions after each `token`, cut before the first stop token (punctuation) after it."""
    w = np.asarray(windows)
    out = np.zeros(w.shape, dtype=bool)
    for i, j in zip(*np.nonzero(w == token)):
        for p in range(j + 1, min(j + n + 1, w.shape[1])):
            if is_stop(int(w[i, p])):
                break
            out[i, p] = True
    return out


def inside_mask(windows: np.ndarray, text: Callable[[int], str], open_: str, close: str) -> np.ndarray:
    """p where the running count of `open_` minus `close` in the text of tokens 0..p is > 0."""
    w = np.asarray(windows)
    out = np.zeros(w.shape, dtype=bool)
    delta = {}
    for i, row in enumerate(w):
        depth = 0
        for p, t in enumerate(row.tolist()):
            if t not in delta:
                s = text(t)
                delta[t] = (s.count(open_), s.count(close))
            o, c = delta[t]
            depth = max(0, depth + o - c)
            out[i, p] = depth > 0
    return out


def is_punctuation(s: str) -> bool:
    """A token text that is all punctuation once stripped, or holds a newline."""
    return "\n" in s or (bool(s.strip()) and all(ch in string.punctuation for ch in s.strip()))


@dataclass
class Proxy:
    spec: str
    description: str
    fn: Callable[[np.ndarray], np.ndarray]

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        return self.fn(windows)


def token_id(tokenizer, text: str, vocab: int | None = None) -> int:
    """The id of a one-token text ('#123' is id 123); ValueError if it is not exactly one token."""
    if text.startswith("#") and text[1:].isdigit():
        i = int(text[1:])
        if vocab is not None and not 0 <= i < vocab:
            raise ValueError(f"token id {i} out of range (vocabulary of {vocab})")
        return i
    if not text:
        raise ValueError("empty proxy token: give a token's text (e.g. ' board') or #ID")
    if tokenizer is None:
        raise ValueError(f"no tokenizer to encode {text!r}: give the token as #ID")
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise ValueError(f"proxy token {text!r} is {len(ids)} tokens {pieces} in this tokenizer; give a single token "
                         "(mind the leading space: ' board' vs 'board') or #ID")
    return ids[0]


def parse_proxy(spec: str, tokenizer=None, vocab: int | None = None) -> Proxy:
    """A proxy from its string (see the module docstring); ValueError with the reason if it does not parse."""
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in ("induction", "after", "context", "token", "inside"):
        raise ValueError(f"proxy {spec!r} does not parse: write one of {PROXY_HELP}")

    def tok(s):
        return token_id(tokenizer, s, vocab)
    text = (lambda i: tokenizer.decode([i])) if tokenizer is not None else None
    if kind == "induction":
        t = tok(rest)
        return Proxy(spec, f"{rest!r} is next by induction (an earlier '<A>{rest}' and the current token is A)",
                     lambda w: induction_mask(w, t))
    if kind == "token":
        t = tok(rest)
        return Proxy(spec, f"the current token is {rest!r}", lambda w: token_mask(w, t))
    if kind == "context":
        parts = rest.split(",")
        if not all(parts):
            raise ValueError(f"proxy {spec!r}: context needs comma-separated tokens with none empty")
        ts = [tok(s) for s in parts]
        return Proxy(spec, f"at or after any of {parts}", lambda w: context_mask(w, ts))
    if text is None:
        raise ValueError(f"proxy {spec!r} needs token texts (punctuation, brackets): the model has no tokenizer")
    if kind == "after":
        token_s, sep, n_s = rest.rpartition(":")
        if not sep or not n_s.strip().isdigit() or int(n_s) < 1:
            raise ValueError(f"proxy {spec!r} does not parse: write after:TOKEN:N with N a positive integer")
        t, n = tok(token_s), int(n_s)
        stop: dict[int, bool] = {}

        def is_stop(i):
            if i not in stop:
                stop[i] = is_punctuation(text(i))
            return stop[i]
        return Proxy(spec, f"within {n} tokens after {token_s!r}, stopping at punctuation",
                     lambda w: after_mask(w, t, n, is_stop))
    open_, sep, close = rest.partition(":")
    if not sep or not open_ or not close:
        raise ValueError(f"proxy {spec!r} does not parse: write inside:OPEN:CLOSE, e.g. inside:(:)")
    return Proxy(spec, f"inside an open {open_!r} (not yet closed by {close!r})", lambda w: inside_mask(w, text, open_, close))


# ---- one feature against a proxy ----

def feature_activations(sae, feature: int, source: ActivationSource, batch_size: int = 16,
                        progress: bool = True) -> np.ndarray:
    """[n, ctx] activations of one feature at every position of the source's windows (0 before the SAE's first_pos)."""
    n, ctx = source.windows.shape
    w, p = np.divmod(np.arange(n * ctx), ctx)
    return source.at(sae, [feature], w, p, batch_size=batch_size, progress=progress)[:, 0].view(n, ctx).numpy()


def specificity(acts: np.ndarray, mask: np.ndarray, bins: int = 40) -> dict:
    """Equal-width bins over (0, max act]; per bin the count of nonzero activations and their sum / n_tokens
    (expected-value contribution), each split into proxy true / false. Inputs: the analysed tokens only."""
    acts, mask = np.asarray(acts, dtype=np.float64).ravel(), np.asarray(mask, dtype=bool).ravel()
    n_tokens = len(acts)
    on = acts > 0
    hi = float(acts.max()) if on.any() else 1.0
    edges = np.linspace(0.0, hi, bins + 1)
    which = np.clip(np.searchsorted(edges, acts, side="left") - 1, 0, bins - 1)  # (e_k, e_k+1] -> k
    out = {"edges": edges.tolist(), "n_tokens": n_tokens}
    for name, sel in (("true", on & mask), ("false", on & ~mask)):
        out[f"count_{name}"] = np.bincount(which[sel], minlength=bins).tolist()
        out[f"ev_{name}"] = (np.bincount(which[sel], weights=acts[sel], minlength=bins) / max(n_tokens, 1)).tolist()
    return out


def context_text(text, row: np.ndarray, p: int, before: int = 24, after: int = 4) -> str:
    """The window's text around p with the token at p marked as ‹token›."""
    a, b = max(0, p - before), min(len(row), p + after + 1)
    pieces = text(row[a:b])
    pieces[p - a] = f"‹{pieces[p - a]}›"
    return "".join(pieces)


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.1%}"


@dataclass
class CaseStudy(Result):
    feature: int
    layer: int
    hook: str
    proxy: str
    proxy_description: str
    n_windows: int
    n_tokens: int  # the tokens the SAE reads (positions >= first_pos)
    n_fire: int
    n_proxy: int
    n_fire_and_proxy: int
    density: float
    max_act: float
    mean_act: float
    precision: float | None  # P(proxy | fires)
    precision_by_mass: float | None  # share of sum f on proxy tokens
    precision_above: list[dict]  # specificity in the upper activation ranges (the paper: high above the weakest)
    sensitivity: float | None  # P(fires | proxy)
    n_false_negatives: int
    false_negatives: list[dict]
    top_false_positives: list[dict]
    histogram: dict  # specificity()
    sae: str | None = None
    store: str | None = None
    model_name: str = ""  # the figure's title; not in the JSON

    @property
    def name(self) -> str:
        return f"case_study_L{self.layer}_F{self.feature}"

    def to_json(self) -> dict:
        return {k: v for k, v in super().to_json().items() if k != "model_name"}

    def summary(self) -> str:
        lines = [f"L{self.layer}.F{self.feature} vs proxy {self.proxy!r} ({self.proxy_description}) "
                 f"over {self.n_tokens:,} tokens:",
                 f"  fires on {self.n_fire:,} (density {self.density:.2e}, max {self.max_act:.2f}); "
                 f"proxy true on {self.n_proxy:,}",
                 f"  specificity P(proxy | fires) = {_pct(self.precision)}, by activation mass {_pct(self.precision_by_mass)}; "
                 f"sensitivity P(fires | proxy) = {_pct(self.sensitivity)} ({self.n_false_negatives:,} false negatives)"]
        if self.precision_above:
            lines.append("  P(proxy | act > x): " + ", ".join(
                f"x = {x['min_act']:.2f} ({x['fraction_of_max']:.0%} of max, {x['n']:,} tokens) {_pct(x['precision'])}"
                for x in self.precision_above))
        lines += ["  false negative: " + x["text"].replace("\n", "↵") for x in self.false_negatives[:3]]
        return "\n".join(lines)

    def plot(self, out: Path) -> list[Path]:
        """The specificity and expected-value plots, proxy true stacked under false (fig. 2)."""
        h = self.histogram
        e = np.asarray(h["edges"])
        mid, width = (e[1:] + e[:-1]) / 2, np.diff(e)
        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for ax, key, ylabel in ((axes[0], "count", "count"), (axes[1], "ev", "expected value (sum f / tokens)")):
            t, f = np.asarray(h[f"{key}_true"]), np.asarray(h[f"{key}_false"])
            ax.bar(mid, t, width=width, color="#3b6ea8", label="proxy true")
            ax.bar(mid, f, width=width, bottom=t, color="#d9534f", label="proxy false")
            ax.set_xlabel("feature activation level")
            ax.set_ylabel(ylabel)
            ax.legend(frameon=False, fontsize=8)
        axes[0].set_title(f"specificity: P(proxy | fires) = {_pct(self.precision)}", fontsize=10)
        axes[1].set_title(f"by activation mass: {_pct(self.precision_by_mass)}; sensitivity {_pct(self.sensitivity)}",
                          fontsize=10)
        fig.suptitle(f"{self.model_name} L{self.layer}.F{self.feature} vs proxy {self.proxy!r} ({self.n_tokens:,} tokens)")
        path = Path(out) / f"{self.name}.png"
        save(fig, path)
        return [path]


def case_study(sae, feature: int, proxy: Proxy, source: ActivationSource, *, acts=None, bins: int = 40, n_show: int = 50,
               seed: int = 0, batch_size: int = 16, progress: bool = True) -> CaseStudy:
    """Specificity, expected value and sensitivity of `feature` against `proxy` over the source's windows.
    `acts` [n, ctx] may be given (else read from the source)."""
    require_hook_z(sae)
    if not 0 <= feature < sae.d_sae:
        raise ValueError(f"feature {feature} out of range: the SAE has {sae.d_sae} features")
    windows = source.windows
    if acts is None:
        acts = feature_activations(sae, feature, source, batch_size=batch_size, progress=progress)
    mask = proxy(windows)
    first = sae.cfg.first_pos
    a, m = acts[:, first:], mask[:, first:]  # the tokens the SAE reads
    on = a > 0
    n_fire, n_proxy = int(on.sum()), int(m.sum())
    tp = int((on & m).sum())
    mass = float(a.sum())
    text = TokenText(getattr(source.model, "tokenizer", None))
    fn_w, fn_p = np.nonzero(m & ~on)
    rng = np.random.default_rng(seed)
    show = np.sort(rng.permutation(len(fn_w))[:n_show])
    fp_w, fp_p = np.nonzero(on & ~m)
    top_fp = np.argsort(-a[fp_w, fp_p], kind="stable")[:n_show]

    def example(w, p, act=None) -> dict:
        return {"window": int(w), "pos": int(p) + first, **({"act": float(act)} if act is not None else {}),
                "text": context_text(text, windows[w], int(p) + first)}
    return CaseStudy(
        feature=int(feature), layer=layer_of(sae), hook=sae.cfg.hook_name, proxy=proxy.spec,
        proxy_description=proxy.description, n_windows=len(windows), n_tokens=int(a.size), n_fire=n_fire, n_proxy=n_proxy,
        n_fire_and_proxy=tp, density=n_fire / max(a.size, 1), max_act=float(a.max()) if n_fire else 0.0,
        mean_act=mass / max(a.size, 1), precision=tp / n_fire if n_fire else None,
        precision_by_mass=float(a[m].sum()) / mass if mass > 0 else None,
        precision_above=[{"min_act": float(frac * a.max()), "fraction_of_max": frac, "n": int((a > frac * a.max()).sum()),
                          "precision": float(m[a > frac * a.max()].mean())} for frac in (0.1, 0.25, 0.5) if n_fire],
        sensitivity=tp / n_proxy if n_proxy else None, n_false_negatives=n_proxy - tp,
        false_negatives=[example(fn_w[i], fn_p[i]) for i in show],
        top_false_positives=[example(fp_w[i], fp_p[i], a[fp_w[i], fp_p[i]]) for i in top_fp],
        histogram=specificity(a, m, bins),
    )


def run_case_study(spec: InputSpec, feature: int, proxy: str, bins: int = 40, n_show: int = 50) -> CaseStudy:
    """The case-study command: load one SAE and its windows (spec), parse the proxy, run case_study."""
    parsed = []

    def check(model, saes):
        if not 0 <= feature < saes[0].d_sae:
            raise ValueError(f"--feature {feature} out of range: the SAE has {saes[0].d_sae} features")
        parsed.append(parse_proxy(proxy, model.tokenizer, model.cfg.d_vocab))
    inputs = load_inputs(spec, check)
    r = case_study(inputs.saes[0], feature, parsed[0], inputs.source, bins=bins, n_show=n_show, seed=spec.seed)
    r.sae, r.store, r.model_name = str(spec.saes[0]), spec.store, inputs.model.cfg.name
    return r
