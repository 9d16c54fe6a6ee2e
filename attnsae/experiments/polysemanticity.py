"""Head polysemanticity (paper appendix J, table 3).

Each head's top-k live features by weight-based attribution get a family, from a person's labels or
automatically (auto_families: the mechanism of the top DFA source of their top activating examples;
a fine level that splits context features by the token they move and a coarse level that does not),
and the head is classed by classify_head into table 3's four categories.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from ..attribution.dfa import attention_parts_many, dfa_by_source
from ..attribution.heads import head_attribution, layer_of, top_features_by_head
from ..features.inputs import InputSpec, load_inputs
from ..features.source import ActivationSource
from ..features.stats import FeatureStats, cached_stats
from ..models.hooks import head_name
from ..models.text import TokenText
from ..plotting import pyplot, save
from ..results import Result

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


def _majority(labels: list[str], f: int) -> str:
    """The most common label if at least half have it, else a family of the feature's own."""
    counts = Counter(labels).most_common()
    return counts[0][0] if counts and counts[0][1] * 2 >= len(labels) else f"mixed (F{f})"


def auto_families(source: ActivationSource, sae, stats: FeatureStats, features, n_examples: int = 10, batch_size: int = 16,
                  progress: bool = True) -> dict[int, dict]:
    """Each feature's family from the mechanism of its top activating examples (the top windows of
    FeatureStats over `source`, at each window's max position): the mechanism of the top DFA source position
    (summed over heads, pattern frozen) of each example; the family is the most common one if at least half of
    the examples have it, else the feature is "mixed" and gets a family of its own (so it counts against
    monosemanticity). The coarse family does the same after merging every "source '<token>'" label into
    CONTEXT (the head moves some earlier token that is no copy and no neighbour: context features, whatever
    the token). Returns {feature: {family, coarse_family, examples: [mechanism]}}."""
    return auto_families_many(source, [(sae, stats, features)], n_examples, batch_size, progress)[0]


@torch.no_grad()
def auto_families_many(source: ActivationSource, jobs, n_examples: int = 10, batch_size: int = 16,
                       progress: bool = True) -> list[dict[int, dict]]:
    """`auto_families` of each (sae, stats, features) of `jobs`, the windows of all of them run once, in one forward
    that keeps every layer's attention."""
    model, windows = source.model, source.windows
    jobs = [(sae, stats, sorted({int(f) for f in features})) for sae, stats, features in jobs]
    bos = model.cfg.bos_token_id
    text = TokenText(getattr(model, "tokenizer", None))
    wanted: dict[int, list[tuple[int, int, int, int]]] = {}  # window: [(job, feature, rank of the example, pos)]
    for i, (_, stats, features) in enumerate(jobs):
        for f in features:
            ok = stats.top_act[f] > 0
            for r, (w, p) in enumerate(list(zip(stats.top_window[f][ok].tolist(), stats.top_pos[f][ok].tolist()))[:n_examples]):
                wanted.setdefault(w, []).append((i, f, r, p))
    labels = [{f: [None] * n_examples for f in features} for _, _, features in jobs]
    ends = {w: max(p for *_, p in ifrp) + 1 for w, ifrp in wanted.items()}
    order = sorted(wanted, key=ends.get)
    layers = sorted({layer_of(sae) for sae, _, _ in jobs})
    for b in tqdm(range(0, len(order), batch_size), desc="DFA of top examples", disable=not progress):
        ws = order[b:b + batch_size]
        end = max(ends[w] for w in ws)
        tokens = torch.from_numpy(np.asarray(windows[ws, :end], dtype=np.int64)).to(model.device)
        parts = attention_parts_many(model, tokens, layers)
        for j, w in enumerate(ws):
            for i, f, r, p in wanted[w]:
                sae = jobs[i][0]
                layer_parts = parts[layer_of(sae)]
                src = dfa_by_source(sae, layer_parts["pattern"][j, :, p:p + 1, :p + 1].cpu(), layer_parts["v"][j, :p + 1].cpu(),
                                    [f])
                top = int(src[0, 0].sum(0).argmax())  # summed over heads
                labels[i][f][r] = mechanism(tokens[j].cpu().numpy(), p, top, bos, text)
    labels = [{f: [x for x in got if x is not None] for f, got in job_labels.items()} for job_labels in labels]  # in rank order
    return [{f: {"family": _majority(job_labels[f], f),
                 "coarse_family": _majority([CONTEXT if x.startswith("source ") else x for x in job_labels[f]], f),
                 "examples": job_labels[f]} for f in job_labels} for job_labels in labels]


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


def _table(heads: list[dict], key: str) -> dict:
    """Table 3: {class: {n, fraction}} over the heads that have a class."""
    done = [x[key] for x in heads if x.get(key) is not None]
    return {c: {"n": done.count(c), "fraction": done.count(c) / len(done) if done else None} for c in CLASSES}


def _pct(v: dict) -> str:
    return "n/a" if v["fraction"] is None else f"{100 * v['fraction']:.1f}% ({v['n']})"


@dataclass
class Polysemanticity(Result):
    name: ClassVar[str] = "polysemanticity"
    model: str
    layers: list[int]
    k: int
    labels: str  # where the families come from
    n_heads: int
    n_classified: int
    table: dict  # table 3: {class: {n, fraction}}
    table_coarse: dict | None  # the same from coarse families (automatic families only)
    heads: list[dict]  # per head (in layer order, n_heads per layer): class, families, features
    saes: list[str] | None = None
    n_windows: int | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in super().to_json().items() if k != "table_coarse" or v is not None}

    def summary(self) -> str:
        coarse = self.table_coarse is not None
        lines = [f"{self.model} layers {self.layers}: {self.n_classified} of {self.n_heads} heads classified from their "
                 f"top {self.k} features ({self.labels})",
                 f"  {'':42s} {'families':14s}" + (" coarse (context features one family)" if coarse else "")]
        for c, v in self.table.items():
            lines.append(f"  plausibly {c:32s} {_pct(v):14s}" + (f" {_pct(self.table_coarse[c])}" if coarse else ""))
        return "\n".join(lines)

    def markdown(self) -> str:
        """Table 3 and every head's families."""
        coarse = self.table_coarse is not None
        lines = [f"# Head polysemanticity: {self.model}, layers {', '.join(map(str, self.layers))}", "",
                 f"Top {self.k} live features per head by weight-based attribution; families: {self.labels}."
                 + (" Fine: context features split by their source token; coarse: all context features one family."
                    if coarse else ""), "",
                 "| head type | fraction of heads" + (" (fine) | (coarse) |" if coarse else " |"),
                 "|---|---|" + ("---|" if coarse else "")]
        for c, v in self.table.items():
            cells = [v] + ([self.table_coarse[c]] if coarse else [])
            lines.append(f"| plausibly {c} | " + " | ".join(
                ("n/a" if x["fraction"] is None else f"{100 * x['fraction']:.1f}%") + f" ({x['n']}/{self.n_classified})"
                for x in cells) + " |")
        lines += ["", "| head | class | families (count) |" + (" coarse class | coarse families |" if coarse else ""),
                  "|---|---|---|" + ("---|---|" if coarse else "")]

        def fmt(d):
            return "; ".join(f"{k} ×{v}" for k, v in d.items()).replace("|", "\\|")
        for h in self.heads:
            lines.append(f"| {h['head']} | {h['class'] or 'unlabelled'} | {fmt(h['families'])} |"
                         + (f" {h['class_coarse']} | {fmt(h['families_coarse'])} |" if coarse else ""))
        return "\n".join(lines) + "\n"

    def plot(self, out: Path) -> list[Path]:
        """polysemanticity.md (table 3 and per-head families) and .png (classes per layer)."""
        out = Path(out)
        md = out / "polysemanticity.md"
        md.write_text(self.markdown())
        plt = pyplot()
        layers = self.layers
        per_layer = len(self.heads) // len(layers)
        panels = [("class", self.table, "families")] + ([("class_coarse", self.table_coarse, "coarse families")]
                                                        if self.table_coarse is not None else [])
        fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * max(5, 0.35 * len(layers) + 3.5), 3.8), squeeze=False)
        for ax, (key, table, name) in zip(axes[0], panels):
            bottom = np.zeros(len(layers))
            for c, color in zip(CLASSES, ("#2e7d32", "#8bc34a", "#ffb300", "#c62828")):
                n = np.array([sum(h.get(key) == c for h in self.heads[i * per_layer:(i + 1) * per_layer])
                              for i in range(len(layers))])
                ax.bar([str(l) for l in layers], n, bottom=bottom, color=color, label=f"{c} ({table[c]['n']})")
                bottom += n
            ax.set_xlabel("layer")
            ax.set_ylabel("heads")
            ax.legend(frameon=False, fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.02))
            ax.set_title(name, fontsize=9, loc="right")
        fig.suptitle(f"{self.model}: head classes from top-{self.k} features ({self.labels})", fontsize=10)
        png = out / "polysemanticity.png"
        save(fig, png)
        return [md, png]


def polysemanticity(source: ActivationSource, saes: list, stats: list, labels: dict | None = None, k: int = 10,
                    n_examples: int = 10, batch_size: int = 16, progress: bool = True) -> Polysemanticity:
    """Each head's top-k live features by weight-based attribution, their families (labels[(layer, feature)]
    from a person, else auto_families), and the head's class; plus table 3's fractions over all heads.
    With person labels, unlabelled features are left out of their head's classification (counted).
    `stats` are the SAEs' over `source`."""
    model = source.model
    n_heads = model.cfg.n_heads
    tops = [top_features_by_head(head_attribution(sae, n_heads), st.live(), k) for sae, st in zip(saes, stats)]
    feats = [sorted({f for h in top for f, _ in h}) for top in tops]
    if labels is None:
        autos = auto_families_many(source, list(zip(saes, stats, feats)), n_examples, batch_size, progress)
    heads = []
    for i, (sae, top) in enumerate(zip(saes, tops)):
        layer = layer_of(sae)
        evidence, coarse = {}, {}
        if labels is None:
            fam = {f: v["family"] for f, v in autos[i].items()}
            coarse = {f: v["coarse_family"] for f, v in autos[i].items()}
            evidence = {f: dict(Counter(v["examples"]).most_common()) for f, v in autos[i].items()}
        else:
            fam = {f: labels[layer, f] for f in feats[i] if (layer, f) in labels}
        for h, fs in enumerate(top):
            got = [(f, s, fam.get(f)) for f, s in fs]
            known = [x for _, _, x in got if x is not None]
            head = {"head": head_name(layer, h), "class": classify_head(known) if known else None, "n_labelled": len(known),
                    "families": dict(Counter(known).most_common())}
            if coarse:
                cs = [coarse[f] for f, _ in fs]
                head.update({"class_coarse": classify_head(cs) if cs else None,
                             "families_coarse": dict(Counter(cs).most_common())})
            head["features"] = [{"feature": f, "attribution": round(s, 4), "family": x,
                                 **({"coarse_family": coarse[f], "example_mechanisms": evidence[f]} if f in evidence else {})}
                                for f, s, x in got]
            heads.append(head)
    return Polysemanticity(
        model=model.cfg.name, layers=[layer_of(s) for s in saes], k=k,
        labels="person" if labels is not None else "automatic (mechanism of top DFA source)", n_heads=len(heads),
        n_classified=sum(x["class"] is not None for x in heads), table=_table(heads, "class"),
        table_coarse=_table(heads, "class_coarse") if labels is None else None, heads=heads)


def run_polysemanticity(spec: InputSpec, labels=None, stats=None, k: int = 10, n_examples: int = 10) -> Polysemanticity:
    """The polysemanticity command: load the SAEs (one per layer) and their windows (spec), a person's labels
    (a JSON file, see read_labels) if given, each SAE's stats from the folder `stats` where saved there."""
    read = []

    def check(model, saes):
        layers = [layer_of(s) for s in saes]
        if len(set(layers)) != len(layers):
            raise ValueError(f"two --sae on the same layer ({layers}); give one SAE per layer")
        if labels:
            read.append(read_labels(labels, layers))
    inputs = load_inputs(spec, check)
    r = polysemanticity(inputs.source, inputs.saes, cached_stats(inputs.source, inputs.saes, stats),
                        labels=read[0] if read else None, k=k, n_examples=n_examples)
    r.saes, r.n_windows = [str(p) for p in spec.saes], len(inputs.windows)
    return r
