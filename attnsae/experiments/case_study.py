"""Feature case studies (paper 3.3, appendices E, G, H) and head polysemanticity (appendix J, table 3).

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

Head polysemanticity: each head's top-k live features by weight-based attribution get a family, from a
person's labels or automatically (auto_families: the mechanism of the top DFA source of their top
activating examples; a fine level that splits context features by the token they move and a coarse
level that does not), and the head is classed by classify_head into table 3's four categories.
"""

from __future__ import annotations

import json
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..attribution.heads import head_attribution, layer_of, require_hook_z, top_features_by_head
from .induction_features import activations_at

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
    tok = lambda s: token_id(tokenizer, s, vocab)  # noqa: E731
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

def feature_activations(sae, feature: int, windows: np.ndarray, *, model=None, store=None, store_index=None,
                        batch_size: int = 16, progress: bool = True) -> np.ndarray:
    """[n, ctx] activations of one feature at every position (0 before the SAE's first_pos)."""
    n, ctx = windows.shape
    w, p = np.divmod(np.arange(n * ctx), ctx)
    acts = activations_at(sae, [feature], windows, w, p, model=model, store=store, store_index=store_index,
                          batch_size=batch_size, progress=progress)
    return acts[:, 0].view(n, ctx).numpy()


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


def case_study(sae, feature: int, proxy: Proxy, windows: np.ndarray, *, model=None, store=None, store_index=None, acts=None,
               bins: int = 40, n_show: int = 50, seed: int = 0, batch_size: int = 16, progress: bool = True) -> dict:
    """Specificity, expected value and sensitivity of `feature` against `proxy` over `windows`.
    `acts` [n, ctx] may be given (else computed from the model or the store)."""
    require_hook_z(sae)
    if not 0 <= feature < sae.d_sae:
        raise ValueError(f"feature {feature} out of range: the SAE has {sae.d_sae} features")
    windows = np.asarray(windows)
    if acts is None:
        acts = feature_activations(sae, feature, windows, model=model, store=store, store_index=store_index,
                                   batch_size=batch_size, progress=progress)
    mask = proxy(windows)
    first = sae.cfg.first_pos
    a, m = acts[:, first:], mask[:, first:]  # the tokens the SAE reads
    on = a > 0
    spec = specificity(a, m, bins)
    n_fire, n_proxy = int(on.sum()), int(m.sum())
    tp = int((on & m).sum())
    mass = float(a.sum())
    text = _texts(model)
    fn_w, fn_p = np.nonzero(m & ~on)
    rng = np.random.default_rng(seed)
    show = np.sort(rng.permutation(len(fn_w))[:n_show])
    fp_w, fp_p = np.nonzero(on & ~m)
    top_fp = np.argsort(-a[fp_w, fp_p], kind="stable")[:n_show]
    example = lambda w, p, act=None: {"window": int(w), "pos": int(p) + first,  # noqa: E731
                                      **({"act": float(act)} if act is not None else {}),
                                      "text": context_text(text, windows[w], int(p) + first)}
    return {
        "feature": int(feature), "layer": layer_of(sae), "hook": sae.cfg.hook_name, "proxy": proxy.spec,
        "proxy_description": proxy.description, "n_windows": len(windows), "n_tokens": int(a.size),
        "n_fire": n_fire, "n_proxy": n_proxy, "n_fire_and_proxy": tp, "density": n_fire / max(a.size, 1),
        "max_act": float(a.max()) if n_fire else 0.0, "mean_act": mass / max(a.size, 1),
        "precision": tp / n_fire if n_fire else None,  # P(proxy | fires)
        "precision_by_mass": float(a[m].sum()) / mass if mass > 0 else None,  # share of sum f on proxy tokens
        # specificity in the upper activation ranges (the paper: high above the weakest activations)
        "precision_above": [{"min_act": float(frac * a.max()), "fraction_of_max": frac, "n": int((a > frac * a.max()).sum()),
                             "precision": float(m[a > frac * a.max()].mean())} for frac in (0.1, 0.25, 0.5) if n_fire],
        "sensitivity": tp / n_proxy if n_proxy else None,  # P(fires | proxy)
        "n_false_negatives": n_proxy - tp,
        "false_negatives": [example(fn_w[i], fn_p[i]) for i in show],
        "top_false_positives": [example(fp_w[i], fp_p[i], a[fp_w[i], fp_p[i]]) for i in top_fp],
        "histogram": spec,
    }


def _texts(model):
    from ..models.text import TokenText

    return TokenText(getattr(model, "tokenizer", None))


def write_case_study(r: dict, out, model_name: str = "") -> None:
    """out/case_study_F{i}.json and .png (specificity and expected-value plots, proxy true stacked under false)."""
    from ..plotting import pyplot

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"case_study_L{r['layer']}_F{r['feature']}"
    (out / f"{stem}.json").write_text(json.dumps(r, indent=1))
    h = r["histogram"]
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
    fmt = lambda x: "n/a" if x is None else f"{x:.1%}"  # noqa: E731
    axes[0].set_title(f"specificity: P(proxy | fires) = {fmt(r['precision'])}", fontsize=10)
    axes[1].set_title(f"by activation mass: {fmt(r['precision_by_mass'])}; sensitivity {fmt(r['sensitivity'])}", fontsize=10)
    fig.suptitle(f"{model_name} L{r['layer']}.F{r['feature']} vs proxy {r['proxy']!r} ({r['n_tokens']:,} tokens)")
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=110)
    plt.close(fig)


# ---- head polysemanticity (appendix J, table 3) ----

CLASSES = ("monosemantic", "monosemantic (minor exception)", "bisemantic", "polysemantic")
MECHANISMS = ("attention sink (BOS)", "current token", "duplicate token", "induction", "previous token")
CONTEXT = "context (an earlier token)"  # the coarse family of every "source '<token>'" label


def classify_head(families: list[str]) -> str:
    """Table 3's categories from the families of a head's top features:
    monosemantic: one family; minor exception: all but 1-2 features in one family;
    bisemantic: exactly two families (with more than 2 in the smaller); polysemantic: otherwise."""
    if not families:
        raise ValueError("a head needs at least one labelled feature")
    counts = Counter(families).most_common()
    rest = len(families) - counts[0][1]
    if len(counts) == 1:
        return CLASSES[0]
    if rest <= 2:
        return CLASSES[1]
    return CLASSES[2] if len(counts) == 2 else CLASSES[3]


def mechanism(row: np.ndarray, p: int, src: int, bos: int | None, text) -> str:
    """What the top DFA source position src of the activation at dest p says, first match wins:
    attention sink (BOS)  src = 0 (the window's first position, BOS) or tokens[src] is BOS
    current token         src = p
    duplicate token       tokens[src] = tokens[p]                 (an earlier copy of the current token)
    induction             src >= 1 and tokens[src-1] = tokens[p]  (the token after an earlier copy)
    previous token        src = p - 1
    otherwise             "source '<text of tokens[src]>'"        (what the head moves: context features)"""
    if src == 0 or (bos is not None and row[src] == bos):
        return MECHANISMS[0]
    if src == p:
        return MECHANISMS[1]
    if row[src] == row[p]:
        return MECHANISMS[2]
    if src >= 1 and row[src - 1] == row[p]:
        return MECHANISMS[3]
    if src == p - 1:
        return MECHANISMS[4]
    return f"source {text([row[src]])[0]!r}"


@torch.no_grad()
def auto_families(model, sae, stats, windows: np.ndarray, features, n_examples: int = 10, batch_size: int = 16,
                  progress: bool = True) -> dict[int, dict]:
    """Each feature's family from the mechanism of its top activating examples (the top windows of
    FeatureStats, at each window's max position): the mechanism of the top DFA source position (summed over
    heads, pattern frozen) of each example; the family is the most common one if at least half of the
    examples have it, else the feature is "mixed" and gets a family of its own (so it counts against
    monosemanticity). The coarse family does the same after merging every "source '<token>'" label into
    CONTEXT (the head moves some earlier token that is no copy and no neighbour: context features, whatever
    the token). Returns {feature: {family, coarse_family, examples: [mechanism]}}."""
    from tqdm.auto import tqdm

    from ..attribution.dfa import attention_parts, dfa_by_source

    features = sorted({int(f) for f in features})
    layer, bos = layer_of(sae), model.cfg.bos_token_id
    text = _texts(model)
    wanted: dict[int, list[tuple[int, int]]] = {}
    for f in features:
        ok = stats.top_act[f] > 0
        for w, p in list(zip(stats.top_window[f][ok].tolist(), stats.top_pos[f][ok].tolist()))[:n_examples]:
            wanted.setdefault(w, []).append((f, p))
    labels: dict[int, list[str]] = {f: [] for f in features}
    ends = {w: max(p for _, p in fp) + 1 for w, fp in wanted.items()}
    order = sorted(wanted, key=ends.get)
    for i in tqdm(range(0, len(order), batch_size), desc="DFA of top examples", disable=not progress):
        ws = order[i:i + batch_size]
        end = max(ends[w] for w in ws)
        tokens = torch.from_numpy(np.asarray(windows[ws, :end], dtype=np.int64)).to(model.device)
        parts = attention_parts(model, tokens, layer)
        for j, w in enumerate(ws):
            for f, p in wanted[w]:
                src = dfa_by_source(sae, parts["pattern"][j, :, p:p + 1, :p + 1].cpu(), parts["v"][j, :p + 1].cpu(), [f])
                top = int(src[0, 0].sum(0).argmax())  # summed over heads
                labels[f].append(mechanism(tokens[j].cpu().numpy(), p, top, bos, text))
    def majority(xs, f):
        counts = Counter(xs).most_common()
        return counts[0][0] if counts and counts[0][1] * 2 >= len(xs) else f"mixed (F{f})"
    return {f: {"family": majority(labels[f], f),
                "coarse_family": majority([CONTEXT if x.startswith("source ") else x for x in labels[f]], f),
                "examples": labels[f]} for f in features}


def read_labels(path, layers: list[int]) -> dict[tuple[int, int], str]:
    """A person's labels: JSON {"feature_id": "label"}; keys "1951" (only with one SAE) or "L15.F1951"."""
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: labels must be a JSON object {{\"feature_id\": \"label\"}}")
    out = {}
    for k, v in raw.items():
        k = str(k).strip()
        if k.isdigit():
            if len(layers) != 1:
                raise ValueError(f"{path}: key {k!r} is ambiguous with several SAEs; write 'L<layer>.F<feature>'")
            out[layers[0], int(k)] = str(v)
        elif k.startswith("L") and ".F" in k and k[1:].replace(".F", "", 1).isdigit():
            l, f = k[1:].split(".F")
            out[int(l), int(f)] = str(v)
        else:
            raise ValueError(f"{path}: key {k!r} is not a feature id ('1951' or 'L15.F1951')")
    return out


def polysemanticity(model, saes: list, stats: list, windows: np.ndarray, labels: dict | None = None, k: int = 10,
                    n_examples: int = 10, batch_size: int = 16, progress: bool = True) -> dict:
    """Each head's top-k live features by weight-based attribution, their families (labels[(layer, feature)]
    from a person, else auto_families), and the head's class; plus table 3's fractions over all heads.
    With person labels, unlabelled features are left out of their head's classification (counted)."""
    n_heads = model.cfg.n_heads
    heads = []
    for sae, st in zip(saes, stats):
        layer = layer_of(sae)
        top = top_features_by_head(head_attribution(sae, n_heads), st.live(), k)
        feats = sorted({f for h in top for f, _ in h})
        evidence, coarse = {}, {}
        if labels is None:
            auto = auto_families(model, sae, st, windows, feats, n_examples, batch_size, progress)
            fam = {f: v["family"] for f, v in auto.items()}
            coarse = {f: v["coarse_family"] for f, v in auto.items()}
            evidence = {f: dict(Counter(v["examples"]).most_common()) for f, v in auto.items()}
        else:
            fam = {f: labels[layer, f] for f in feats if (layer, f) in labels}
        for h, fs in enumerate(top):
            got = [(f, s, fam.get(f)) for f, s in fs]
            known = [x for _, _, x in got if x is not None]
            head = {"head": f"{layer}.{h}", "class": classify_head(known) if known else None, "n_labelled": len(known),
                    "families": dict(Counter(known).most_common())}
            if coarse:
                cs = [coarse[f] for f, _ in fs]
                head.update({"class_coarse": classify_head(cs) if cs else None,
                             "families_coarse": dict(Counter(cs).most_common())})
            head["features"] = [{"feature": f, "attribution": round(s, 4), "family": x,
                                 **({"coarse_family": coarse[f], "example_mechanisms": evidence[f]} if f in evidence else {})}
                                for f, s, x in got]
            heads.append(head)
    r = {"model": model.cfg.name, "layers": [layer_of(s) for s in saes], "k": k,
         "labels": "person" if labels is not None else "automatic (mechanism of top DFA source)",
         "n_heads": len(heads), "n_classified": sum(x["class"] is not None for x in heads), "table": _table(heads, "class")}
    if labels is None:
        r["table_coarse"] = _table(heads, "class_coarse")
    r["heads"] = heads
    return r


def _table(heads: list[dict], key: str) -> dict:
    """Table 3: {class: {n, fraction}} over the heads that have a class."""
    done = [x[key] for x in heads if x.get(key) is not None]
    return {c: {"n": done.count(c), "fraction": done.count(c) / len(done) if done else None} for c in CLASSES}


def polysemanticity_markdown(r: dict) -> str:
    coarse = "table_coarse" in r
    lines = [f"# Head polysemanticity: {r['model']}, layers {', '.join(map(str, r['layers']))}", "",
             f"Top {r['k']} live features per head by weight-based attribution; families: {r['labels']}."
             + (" Fine: context features split by their source token; coarse: all context features one family." if coarse
                else ""), "",
             "| head type | fraction of heads" + (" (fine) | (coarse) |" if coarse else " |"), "|---|---|" + ("---|" if coarse else "")]
    for c, v in r["table"].items():
        cells = [v] + ([r["table_coarse"][c]] if coarse else [])
        lines.append(f"| plausibly {c} | " + " | ".join(
            ("n/a" if x["fraction"] is None else f"{100 * x['fraction']:.1f}%") + f" ({x['n']}/{r['n_classified']})"
            for x in cells) + " |")
    lines += ["", "| head | class | families (count) |" + (" coarse class | coarse families |" if coarse else ""),
              "|---|---|---|" + ("---|---|" if coarse else "")]
    fmt = lambda d: "; ".join(f"{k} ×{v}" for k, v in d.items()).replace("|", "\\|")  # noqa: E731
    for h in r["heads"]:
        lines.append(f"| {h['head']} | {h['class'] or 'unlabelled'} | {fmt(h['families'])} |"
                     + (f" {h['class_coarse']} | {fmt(h['families_coarse'])} |" if coarse else ""))
    return "\n".join(lines) + "\n"


def write_polysemanticity(r: dict, out) -> None:
    """out/polysemanticity.json, .md (table 3 + per-head families) and .png (classes per layer)."""
    from ..plotting import pyplot

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "polysemanticity.json").write_text(json.dumps(r, indent=1))
    (out / "polysemanticity.md").write_text(polysemanticity_markdown(r))
    plt = pyplot()
    layers = r["layers"]
    panels = [("class", "table", "families")] + ([("class_coarse", "table_coarse", "coarse families")]
                                                 if "table_coarse" in r else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * max(5, 0.35 * len(layers) + 3.5), 3.8), squeeze=False)
    for ax, (key, table, name) in zip(axes[0], panels):
        bottom = np.zeros(len(layers))
        for c, color in zip(CLASSES, ("#2e7d32", "#8bc34a", "#ffb300", "#c62828")):
            n = np.array([sum(h.get(key) == c for h in r["heads"] if int(h["head"].split(".")[0]) == l) for l in layers])
            ax.bar([str(l) for l in layers], n, bottom=bottom, color=color, label=f"{c} ({r[table][c]['n']})")
            bottom += n
        ax.set_xlabel("layer")
        ax.set_ylabel("heads")
        ax.legend(frameon=False, fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.02))
        ax.set_title(name, fontsize=9, loc="right")
    fig.suptitle(f"{r['model']}: head classes from top-{r['k']} features ({r['labels']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "polysemanticity.png", dpi=110)
    plt.close(fig)
