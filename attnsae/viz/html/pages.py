"""The three report pages: a feature's dashboard, an attention head's top features, and the index.

Each function takes the JSON-able dict built by attnsae.features.dashboard / attnsae.viz.report, works out
what a template cannot say simply, and renders templates/<page>.html."""
from __future__ import annotations

from .format import finite
from .templating import render


def _logit_rows(rows) -> list[tuple]:
    """(token, value, bar width in % of the largest |value|) for each well-formed [token, value] row."""
    rows = [r for r in rows or [] if isinstance(r, (list, tuple)) and len(r) == 2]
    m = max((abs(v) for _, v in rows if finite(v)), default=0) or 1.0
    return [(tok, v, 100 * abs(v) / m if finite(v) else 0) for tok, v in rows]


def render_dashboard(d: dict) -> str:
    """One feature's dashboard as a full HTML document (schema: attnsae.features.dashboard)."""
    feat, layer = d.get("feature"), d.get("layer")
    links = d.get("links") or {}
    head_links = {}
    for i, (label, href) in enumerate(links.get("heads") or []):
        try:
            head_links[int(str(label).lstrip("Hh"))] = href
        except ValueError:
            head_links[i] = href
    scale = d.get("max_act")  # the activation shown fully red, on every example
    if not (finite(scale) and scale > 0):
        scale = max([e.get("act") or 0 for e in d.get("top_examples") or []] + [1.0])
    ah = d.get("head_attribution") or []
    le = d.get("logit_effect") or {}
    logits = {"convention": le.get("convention"), "n_top": len(le.get("top") or []),
              "n_bottom": len(le.get("bottom") or []), "top": _logit_rows(le.get("top")),
              "bottom": _logit_rows(le.get("bottom"))} if le else None
    title = f"Feature {feat} · L{layer} · {d.get('model', '')}" if layer is not None else f"Feature {feat}"
    return render("dashboard.html", title=title, d=d, feature=feat, layer=layer, links=links, head_links=head_links,
                  scale=scale, attribution=ah, top_head=max(range(len(ah)), key=lambda h: ah[h]) if ah else None,
                  logits=logits)


def render_head_page(h: dict) -> str:
    """One attention head's top features (by head attribution) as a full HTML document."""
    layer, head = h.get("layer"), h.get("head")
    return render("head.html", title=f"L{layer}H{head} · {h.get('model', '')}", h=h, layer=layer, head=head,
                  links=h.get("links") or {})


def render_index(idx: dict) -> str:
    """Index of layers × heads linking to head pages (and optional dashboards list)."""
    layers = idx.get("layers") or []
    n_heads = max((len(L.get("heads") or []) for L in layers), default=0)
    grid = []  # (layer, its heads by head index, None where missing)
    for L in layers:
        by_head = {hd.get("head"): hd for hd in L.get("heads") or []}
        grid.append((L, [by_head.get(h) for h in range(n_heads)]))
    return render("index.html", title=idx.get("title") or f"Attention SAE features · {idx.get('model', '')}", idx=idx,
                  grid=grid, n_heads=n_heads)


def render_study(s: dict) -> str:
    """The every-head study's index: Table 1, ranking agreement, polysemanticity, links to the head report."""
    return render("study.html", title=f"Every head of {s.get('model', '')}", s=s)


def render_qk_study(s: dict) -> str:
    """The query/key SAE study's index (attnsae.jobs.qk_study)."""
    return render("qk_study.html", title=f"Query/key SAEs of {s.get('model', '')}", s=s)


def render_qk_feature(d: dict) -> str:
    """One query or key SAE feature's dashboard (attnsae.jobs.qk_study)."""
    return render("qk_feature.html", title=f"{d['side']} feature {d['feature']} · {d['head']}", d=d, p=d["profile"])
