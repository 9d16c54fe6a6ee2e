"""The inline SVG charts: head attribution bars, the activation histogram and the per-example head bars.

Charts are geometry, so they are built here rather than in templates; every text in them goes through
esc(), and each function returns Markup for the templates to insert as is."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup

from .format import esc, finite, fmt_count, fmt_num, fmt_pct, fmt_tick


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    t = math.ceil(lo / step - 1e-9) * step
    out = []
    while t <= hi + 1e-9 * step:
        out.append(0.0 if abs(t) < 1e-12 * step else t)
        t += step
    return out


def _pct_label(v: float) -> str:
    p = 100 * v
    if abs(p) < 0.05:
        return "0"
    return f"{p:.1f}" if abs(p) < 9.95 else f"{p:.0f}"


def head_bars(attr: Sequence[float], fve: Sequence[float] | None, head_links: dict[int, str]) -> Markup:
    """Bars of weight-based attribution (and DFA FVE when given) per head, with their legend."""
    n = len(attr)
    has_fve = bool(fve) and len(fve) == n
    vals = list(attr) + (list(fve) if has_fve else [])
    vals = [v for v in vals if finite(v)]
    vmax = max(vals + [0.0])
    vmin = min(vals + [0.0])
    vmax = vmax if vmax > 0 else 1.0
    ticks = _nice_ticks(vmin, vmax, 4)
    top, bot = max(vmax, ticks[-1]), min(vmin, ticks[0])
    top += 0.04 * (top - bot)  # room for the value labels
    if vmin < 0:
        bot -= 0.10 * (top - bot)
    rotate = n > 16
    W, H, L, R, T, B = 600, 230 + (14 if rotate else 0), 44, 8, 14, 34 + (14 if rotate else 0)
    pw, ph = W - L - R, H - T - B

    def y(v: float) -> float:
        return T + ph * (top - v) / (top - bot)

    g = [f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="head attribution">']
    for t in ticks:
        g.append(f'<line x1="{L}" x2="{W - R}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="{"#8c959f" if t == 0 else "#eaeef2"}"/>'
                 f'<text x="{L - 5}" y="{y(t) + 3.5:.1f}" text-anchor="end">{fmt_tick(100 * t)}%</text>')
    slot = min(pw / max(1, n), 72.0)
    left = L + (pw - slot * n) / 2  # few heads: narrower bars, centred
    bw = slot * (0.36 if has_fve else 0.62)
    for h in range(n):
        x0 = left + h * slot + (slot - bw * (2 if has_fve else 1)) / 2
        series = [(attr[h], "#3b6fd4", "weight-based attribution")]
        if has_fve:
            series.append((fve[h], "#f59e0b", "fraction of variance explained (DFA)"))
        for j, (v, col, name) in enumerate(series):
            if not finite(v):
                continue
            y0, y1 = sorted((y(0), y(v)))
            g.append(f'<rect class="bar" x="{x0 + j * bw:.1f}" y="{y0:.1f}" width="{bw - 1:.1f}" '
                     f'height="{max(y1 - y0, 0.8):.1f}" fill="{col}"><title>H{h} {name}: {fmt_pct(v)}</title></rect>')
            if n <= 16:
                ty = y(v) - 3 if v >= 0 else y(v) + 11
                g.append(f'<text x="{x0 + j * bw + bw / 2:.1f}" y="{ty:.1f}" text-anchor="middle" '
                         f'style="font-size:{9.5 if has_fve else 10.5}px">{_pct_label(v)}</text>')
        cx = left + h * slot + slot / 2
        if rotate:
            lab = (f'<text transform="translate({cx + 3:.1f} {H - B + 8}) rotate(-90)" text-anchor="end" '
                   f'style="font-size:10px">H{h}</text>')
        else:
            lab = f'<text x="{cx:.1f}" y="{H - B + 15}" text-anchor="middle" class="ttl">H{h}</text>'
        g.append(f'<a href="{esc(head_links[h])}">{lab}</a>' if h in head_links else lab)
    g.append(f'<text x="{L + pw / 2}" y="{H - 4}" text-anchor="middle">head (values in %)</text>')
    g.append("</svg>")
    legend = ('<div class="legend"><span><span class="sw" style="background:#3b6fd4"></span>weight-based head '
              'attribution (decoder norm share)</span>')
    if has_fve:
        legend += ('<span><span class="sw" style="background:#f59e0b"></span>fraction of activation variance '
                   'explained by the head\'s DFA term</span>')
    return Markup("".join(g) + legend + "</div>")


def histogram(hist: dict, mean_act: Any = None) -> Markup:
    """Token counts per activation bin (log x when the dict says so), with a dashed line at the mean."""
    edges = [float(e) for e in hist.get("edges") or []]
    counts = [float(c) for c in hist.get("counts") or []]
    if len(edges) != len(counts) + 1 or not counts:
        return Markup('<p class="empty">no histogram</p>')
    log_x = bool(hist.get("log_x")) and edges[0] > 0
    tx = math.log10 if log_x else (lambda v: v)
    x_lo, x_hi = tx(edges[0]), tx(edges[-1])
    if x_hi <= x_lo:
        x_hi = x_lo + 1
    cmax = max(counts) or 1.0
    W, H, L, R, T, B = 600, 230, 52, 12, 12, 38
    pw, ph = W - L - R, H - T - B

    def X(v: float) -> float:
        return L + pw * (tx(v) - x_lo) / (x_hi - x_lo)

    def Y(c: float) -> float:
        return T + ph * (1 - c / cmax)

    g = [f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="activation histogram">']
    for t in _nice_ticks(0, cmax, 4):
        g.append(f'<line x1="{L}" x2="{W - R}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" stroke="#eaeef2"/>'
                 f'<text x="{L - 5}" y="{Y(t) + 3.5:.1f}" text-anchor="end">{fmt_tick(t)}</text>')
    for i, c in enumerate(counts):
        x0, x1 = X(edges[i]), X(edges[i + 1])
        if c <= 0:
            continue
        g.append(f'<rect x="{x0:.2f}" y="{Y(c):.2f}" width="{max(x1 - x0 - 0.6, 0.6):.2f}" height="{T + ph - Y(c):.2f}" '
                 f'fill="#fb923c"><title>{fmt_num(edges[i])} – {fmt_num(edges[i + 1])}: {fmt_count(c)}</title></rect>')
    g.append(f'<line x1="{L}" x2="{W - R}" y1="{T + ph}" y2="{T + ph}" stroke="#8c959f"/>')
    if log_x:
        ticks = []
        for k in range(math.floor(x_lo), math.ceil(x_hi) + 1):
            for m in (1, 2, 5):
                v = m * 10.0 ** k
                if x_lo - 1e-9 <= math.log10(v) <= x_hi + 1e-9:
                    ticks.append((v, m == 1))
        if sum(major for _, major in ticks) < 3:  # short range: label the 2s and 5s too
            ticks = [(v, True) for v, _ in ticks]
    else:
        ticks = [(v, True) for v in _nice_ticks(edges[0], edges[-1], 6)]
    for v, labelled in ticks:
        xv = X(v)
        g.append(f'<line x1="{xv:.1f}" x2="{xv:.1f}" y1="{T + ph}" y2="{T + ph + (4 if labelled else 2.5)}" stroke="#8c959f"/>')
        if labelled:
            g.append(f'<text x="{xv:.1f}" y="{T + ph + 15}" text-anchor="middle">{fmt_tick(v)}</text>')
    if finite(mean_act) and edges[0] <= mean_act <= edges[-1] and (not log_x or mean_act > 0):
        xm = X(mean_act)
        g.append(f'<line x1="{xm:.1f}" x2="{xm:.1f}" y1="{T}" y2="{T + ph}" stroke="#111" stroke-dasharray="4 3"/>'
                 f'<text x="{xm + 4:.1f}" y="{T + 10}" style="font-size:10.5px">mean {fmt_num(mean_act)}</text>')
    axis = "activation (log scale)" if log_x else "activation"
    g.append(f'<text x="{L + pw / 2}" y="{H - 4}" text-anchor="middle">{axis}</text>')
    g.append(f'<text transform="translate(12 {T + ph / 2}) rotate(-90)" text-anchor="middle">tokens</text>')
    g.append("</svg>")
    return Markup("".join(g))


def mini_heads(values: Sequence[float] | None, bias: Any = None) -> Markup:
    """A tiny bar chart of DFA by head for one example (title gives the numbers)."""
    if not values:
        return Markup("")
    n = len(values)
    m = max(abs(v) for v in values if finite(v)) if any(finite(v) for v in values) else 0
    w, h = min(64, 5 * n + 2), 18
    bw = max(1.0, (w - 2) / n)
    bars = []
    for i, v in enumerate(values):
        if not finite(v) or m == 0:
            continue
        bh = max(0.5, (h / 2 - 1) * abs(v) / m)
        y = h / 2 - bh if v >= 0 else h / 2
        bars.append(f'<rect x="{1 + i * bw:.2f}" y="{y:.2f}" width="{max(0.8, bw - 1):.2f}" height="{bh:.2f}" '
                    f'fill="{"#1d4ed8" if v >= 0 else "#9ca3af"}"/>')
    tip = "DFA by head at the activating token: " + ", ".join(f"H{i} {fmt_num(v)}" for i, v in enumerate(values))
    if finite(bias):
        tip += f"; bias {fmt_num(bias)}"
    return Markup(f'<svg class="mini" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">'
                  f'<title>{esc(tip)}</title><line x1="0" x2="{w}" y1="{h / 2}" y2="{h / 2}" stroke="#d0d7de"/>'
                  + "".join(bars) + "</svg>")
