"""Static, self-contained HTML for feature dashboards, head pages, the index and rating sheets.

Every page is one file: inline CSS, inline SVG charts, no network, no external fonts or
libraries. Only the rating sheet carries (a little) JavaScript. The input dicts follow the
schemas produced by ``attnsae.viz.dashboard`` (see ``render_dashboard`` and friends).
"""
from __future__ import annotations

import html as _html
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["render_dashboard", "render_head_page", "render_index", "render_rating_sheet", "write_html",
           "fmt_num", "fmt_pct", "fmt_density", "fmt_count", "show_token"]


# ----------------------------------------------------------------------------------------------
# formatting
# ----------------------------------------------------------------------------------------------

def esc(s: Any) -> str:
    return _html.escape(str(s), quote=True)


def _finite(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def fmt_num(x: Any, sig: int = 3) -> str:
    """3 significant figures, plain decimals for 1e-3 <= |x| < 1e6, else scientific ("3.00e-4")."""
    if x is None:
        return "—"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        try:
            x = float(x)
        except (TypeError, ValueError):
            return esc(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if x == 0:
        return "0"
    xr = float(f"{x:.{sig}g}")
    e = math.floor(math.log10(abs(xr)))
    if -3 <= e < 6:
        return f"{xr:,.{max(0, sig - 1 - e)}f}"
    m, ex = f"{xr:.{sig - 1}e}".split("e")
    return f"{m}e{int(ex)}"


def fmt_tick(x: float) -> str:
    """Axis labels: 3 significant figures without trailing zeros ("0.01", "40", "1.5k")."""
    if _finite(x) and abs(x) >= 1000:
        c = fmt_count(x)
        num, suf = (c[:-1], c[-1]) if c[-1] in "kMB" else (c, "")
        if "." in num:
            num = num.rstrip("0").rstrip(".")
        return num + suf
    s = fmt_num(x)
    if "." in s and "e" not in s:
        s = s.rstrip("0").rstrip(".")
    return s


def fmt_pct(frac: Any, sig: int = 3) -> str:
    """A fraction as a percentage with 3 significant figures ("0.120%", "45.2%", "100%")."""
    if not _finite(frac):
        return fmt_num(frac)
    if frac == 0:
        return "0%"
    if abs(frac - 1) < 5e-4:  # avoid "100.0%"-style noise
        return "100%"
    return fmt_num(100 * frac, sig) + "%"


def fmt_count(n: Any) -> str:
    """Big counts compactly: 950, 12.3k, 1.02M, 3.4B."""
    if not _finite(n):
        return fmt_num(n)
    a = abs(n)
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return fmt_num(n / div) + suffix
    return f"{int(n):,}" if float(n).is_integer() else fmt_num(n)


def fmt_density(d: Any) -> str:
    """A firing density as percentage and 1-in-N ("0.120% · 1 in 833")."""
    if not _finite(d):
        return fmt_num(d)
    if d <= 0:
        return "0% (never fires)"
    inv = 1.0 / d
    return fmt_pct(d) + (f" · 1 in {fmt_num(inv)}" if inv >= 1.5 else "")


_CONTROL = {"\n": "↵", "\t": "⇥", "\r": "␍"}


def show_token(tok: Any) -> str:
    """Token text made visible (newline ↵, tab ⇥, other control characters as control pictures),
    NOT yet HTML-escaped. Spaces are kept (pages render token spans with white-space: pre-wrap)."""
    s = str(tok)
    if s == "":
        return "∅"
    out = []
    for ch in s:
        o = ord(ch)
        if ch in _CONTROL:
            out.append(_CONTROL[ch])
        elif o < 32:
            out.append(chr(0x2400 + o))
        elif o == 127:
            out.append("␡")
        else:
            out.append(ch)
    return "".join(out)


def _is_special(tok: str) -> bool:
    return (tok.startswith("<|") and tok.endswith("|>")) or tok in ("<s>", "</s>", "<bos>", "<eos>", "<pad>", "<unk>")


def _act_colour(a: float) -> str:
    """White at 0 through orange to red at 1."""
    a = min(1.0, max(0.0, a))
    stops = [(0.0, (255, 255, 255)), (0.35, (254, 215, 170)), (0.7, (251, 146, 60)), (1.0, (220, 38, 38))]
    for (a0, c0), (a1, c1) in zip(stops, stops[1:]):
        if a <= a1:
            t = (a - a0) / (a1 - a0)
            return "#%02x%02x%02x" % tuple(round(u + t * (v - u)) for u, v in zip(c0, c1))
    return "#dc2626"


def _head_list(values: Sequence[float], n_top: int = 4) -> str:
    """'H3 2.10, H5 0.712, ...' for the largest |values|."""
    order = sorted(range(len(values)), key=lambda h: -abs(values[h]))[:n_top]
    s = ", ".join(f"H{h} {fmt_num(values[h])}" for h in order)
    return s + (", …" if len(values) > n_top else "")


# ----------------------------------------------------------------------------------------------
# page shell
# ----------------------------------------------------------------------------------------------

_CSS = """
*{box-sizing:border-box}
:root{--fg:#1f2328;--muted:#656d76;--line:#d0d7de;--soft:#f6f8fa;--blue:#1d4ed8;--accent:#0969da;
 --mono:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono","Liberation Mono",monospace}
html{-webkit-text-size-adjust:100%}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Helvetica Neue",Arial,sans-serif;
 color:var(--fg);background:#fff}
main{max-width:1200px;margin:0 auto;padding:16px 20px 48px}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
h1{font-size:22px;margin:4px 0 2px;font-weight:650}
h2{font-size:16px;margin:28px 0 8px;font-weight:650;border-bottom:1px solid var(--line);padding-bottom:4px}
h3{font-size:14px;margin:0 0 6px;font-weight:600}
.sub{color:var(--muted);font-size:13px;overflow-wrap:anywhere}
.muted{color:var(--muted)}
.small{font-size:12px}
code,.mono{font-family:var(--mono);font-size:12.5px}
nav.top{display:flex;flex-wrap:wrap;gap:4px 6px;align-items:center;font-size:13px;margin-bottom:8px}
nav.top .sep{color:var(--line)}
nav.top a.chip{border:1px solid var(--line);border-radius:4px;padding:0 6px;background:var(--soft)}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0 4px}
.card{border:1px solid var(--line);border-radius:6px;padding:6px 12px;min-width:120px;background:var(--soft)}
.card .k{font-size:11.5px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:17px;font-weight:600;font-variant-numeric:tabular-nums}
.card .v small{font-size:12px;font-weight:400;color:var(--muted)}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:16px 28px}
.panel{min-width:0}
.logit-grid{grid-template-columns:repeat(auto-fit,minmax(320px,1fr))}
.panel p.cap{margin:4px 0 0;font-size:12px;color:var(--muted)}
svg.chart{display:block;width:100%;height:auto;max-width:620px;font-family:inherit}
svg.chart text{font-size:11px;fill:#444}
svg.chart .ttl{font-size:12px;fill:#222}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;font-size:12px;color:var(--muted);margin:6px 0 10px;align-items:center}
.legend .sw{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-2px;margin-right:4px;border:1px solid #0002}
.scale{display:inline-block;width:120px;height:12px;vertical-align:-2px;border:1px solid #0002;border-radius:2px;
 background:linear-gradient(90deg,#fff,#fed7aa 35%,#fb923c 70%,#dc2626)}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
table.logits{width:100%;font-size:13px}
table.logits td{padding:1px 6px;border-bottom:1px solid #eaeef2}
table.logits td.val{text-align:right;white-space:nowrap;width:1%}
table.logits td.tokcell{width:42%}
table.logits td.bar{width:auto}
table.logits .b{height:9px;border-radius:2px}
.tokcell{font-family:var(--mono);font-size:12.5px;white-space:pre-wrap;overflow-wrap:anywhere}
.logits .tokcell span{background:#eef1f4;border-radius:3px;padding:0 2px}
/* token sequences */
.ex{display:grid;grid-template-columns:74px minmax(0,1fr);gap:10px;padding:5px 0;border-bottom:1px solid #eaeef2}
.ex .meta{font-variant-numeric:tabular-nums;text-align:right;font-size:12px;color:var(--muted);line-height:1.35}
.ex .meta b{display:block;font-size:14px;color:var(--fg);font-weight:600}
.toks{font-family:var(--mono);font-size:12.5px;line-height:1.9;white-space:pre-wrap;overflow-wrap:anywhere;word-break:break-word;min-width:0}
.t{display:inline-block;white-space:pre-wrap;max-width:100%;overflow-wrap:anywhere;line-height:1.45;
 border-radius:2px;padding:0;box-shadow:inset -1px 0 0 #0000000d}
.t:hover{box-shadow:inset 0 0 0 1px #0006}
.t.sp{color:#8a8f98;font-size:11px}
.t.max{outline:2px solid #111;outline-offset:0;border-radius:1px;position:relative;z-index:1}
.t.src{border-bottom:3px solid var(--blue);background-image:linear-gradient(#1d4ed81f,#1d4ed81f)}
.t sup.rk{font-family:system-ui,sans-serif;font-size:9px;font-weight:700;color:var(--blue);vertical-align:super;line-height:0;margin-left:1px}
.ell{color:var(--muted)}
.mini{vertical-align:middle;margin-top:2px}
details.q{border:1px solid var(--line);border-radius:6px;margin:8px 0;padding:0 10px}
details.q>summary{cursor:pointer;padding:6px 0;font-weight:600;list-style-position:outside}
details.q>summary .rng{font-weight:400;color:var(--muted);margin-left:8px;font-variant-numeric:tabular-nums}
details.q[open]>summary{border-bottom:1px solid #eaeef2}
details.q .ex:last-child{border-bottom:0}
/* tables of features / heads */
table.list{width:100%;font-size:13px}
table.list th{text-align:left;font-weight:600;color:var(--muted);font-size:12px;border-bottom:1px solid var(--line);padding:4px 6px;white-space:nowrap}
table.list td{border-bottom:1px solid #eaeef2;padding:4px 6px;vertical-align:top}
table.list td.num{text-align:right;white-space:nowrap}
table.list td.ctx{width:60%}
table.list .toks{line-height:1.8}
.sbar{display:inline-block;height:8px;background:#6b8fd6;border-radius:2px;vertical-align:middle;margin-right:6px}
table.matrix{font-size:12.5px;margin:6px 0}
table.matrix th,table.matrix td{border:1px solid var(--line);padding:3px 6px;text-align:center;white-space:nowrap}
table.matrix th{background:var(--soft);font-weight:600}
table.matrix td a{display:block}
.empty{color:var(--muted);font-style:italic}
"""


def _page(title: str, body: str, *, css: str = "", script: str = "") -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<style>{_CSS}{css}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n"
            + (f"<script>\n{script}\n</script>\n" if script else "") + "</body>\n</html>\n")


def write_html(path: str | os.PathLike, html: str) -> Path:
    """Write html (utf-8), creating parent folders. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path


def _link(href: Any, text: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<a href="{esc(href)}"{c}>{text}</a>' if href else ""


# ----------------------------------------------------------------------------------------------
# token sequences
# ----------------------------------------------------------------------------------------------

def render_tokens(ex: dict, scale: float, *, before: int | None = None, after: int | None = None) -> str:
    """One example's tokens as coloured spans. scale: the activation shown fully red.
    before/after: show only that many tokens around the activating token (head pages)."""
    toks = list(ex.get("tokens") or [])
    acts = list(ex.get("acts") or [])
    acts += [0.0] * (len(toks) - len(acts))
    pos = ex.get("pos")
    pos = int(pos) if isinstance(pos, numbers.Integral) else None
    srcs = {}
    for rank, s in enumerate(ex.get("dfa_source") or [], 1):
        p = s.get("pos")
        if isinstance(p, numbers.Integral) and 0 <= p < len(toks) and int(p) not in srcs:
            srcs[int(p)] = (rank, s)
    lo, hi = 0, len(toks)
    if pos is not None and before is not None:
        lo = max(0, pos - before)
    if pos is not None and after is not None:
        hi = min(len(toks), pos + after + 1)
    scale = scale if _finite(scale) and scale > 0 else max([a for a in acts if _finite(a)] + [1.0])
    parts = ['<span class="ell">…</span>'] if lo > 0 else []
    for i in range(lo, hi):
        raw = str(toks[i])
        a = acts[i] if _finite(acts[i]) else 0.0
        cls = ["t"]
        if _is_special(raw):
            cls.append("sp")
        frac = a / scale if a > 0 else 0.0
        style = f' style="background-color:{_act_colour(max(frac, 0.06))}"' if a > 0 else ""
        tip = [f"“{show_token(raw)}”  act {fmt_num(a)}"]
        if i == pos:
            cls.append("max")
            tip.append("activating token")
            dh = ex.get("dfa_head")
            if dh:
                tip.append("DFA by head: " + _head_list(dh, 5) + (f"; bias {fmt_num(ex['dfa_bias'])}"
                                                               if _finite(ex.get("dfa_bias")) else ""))
        sup = ""
        if i in srcs:
            rank, s = srcs[i]
            cls.append("src")
            line = f"DFA source #{rank}: {fmt_num(s.get('value'))}"
            if s.get("by_head"):
                line += " (" + _head_list(s["by_head"]) + ")"
            tip.append(line)
            sup = f'<sup class="rk">{rank}</sup>'
        parts.append(f'<span class="{" ".join(cls)}"{style} title="{esc(chr(10).join(tip))}">'
                     f"{esc(show_token(raw))}{sup}</span>")
    if hi < len(toks):
        parts.append('<span class="ell">…</span>')
    return "".join(parts)


def _mini_heads(values: Sequence[float] | None, bias: Any = None) -> str:
    """A tiny bar chart of DFA by head for one example (title gives the numbers)."""
    if not values:
        return ""
    n = len(values)
    m = max(abs(v) for v in values if _finite(v)) if any(_finite(v) for v in values) else 0
    w, h = min(64, 5 * n + 2), 18
    bw = max(1.0, (w - 2) / n)
    bars = []
    for i, v in enumerate(values):
        if not _finite(v) or m == 0:
            continue
        bh = max(0.5, (h / 2 - 1) * abs(v) / m)
        y = h / 2 - bh if v >= 0 else h / 2
        bars.append(f'<rect x="{1 + i * bw:.2f}" y="{y:.2f}" width="{max(0.8, bw - 1):.2f}" height="{bh:.2f}" '
                    f'fill="{"#1d4ed8" if v >= 0 else "#9ca3af"}"/>')
    tip = "DFA by head at the activating token: " + ", ".join(f"H{i} {fmt_num(v)}" for i, v in enumerate(values))
    if _finite(bias):
        tip += f"; bias {fmt_num(bias)}"
    return (f'<svg class="mini" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">'
            f'<title>{esc(tip)}</title><line x1="0" x2="{w}" y1="{h / 2}" y2="{h / 2}" stroke="#d0d7de"/>'
            + "".join(bars) + "</svg>")


def _example_row(ex: dict, scale: float) -> str:
    meta = f'<b>{fmt_num(ex.get("act"))}</b>'
    loc = []
    if ex.get("window") is not None:
        loc.append(f'w{esc(ex["window"])}')
    if ex.get("pos") is not None:
        loc.append(f'p{esc(ex["pos"])}')
    if loc:
        meta += f'<span title="window {esc(ex.get("window"))}, position {esc(ex.get("pos"))}">{":".join(loc)}</span>'
    meta += _mini_heads(ex.get("dfa_head"), ex.get("dfa_bias"))
    return f'<div class="ex"><div class="meta">{meta}</div><div class="toks">{render_tokens(ex, scale)}</div></div>'


_TOKEN_LEGEND = ('<div class="legend"><span><span class="scale"></span> activation (0 → max)</span>'
                 '<span><span class="t max" style="padding:0 3px">tok</span> activating token</span>'
                 '<span><span class="t src" style="padding:0 3px">src<sup class="rk">1</sup></span> '
                 'top DFA source positions (rank; hover for value and per-head split)</span>'
                 '<span>↵ newline · ⇥ tab · hover any token for its activation</span></div>')


# ----------------------------------------------------------------------------------------------
# SVG charts
# ----------------------------------------------------------------------------------------------

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


def _svg_head_bars(attr: Sequence[float], fve: Sequence[float] | None, head_links: dict[int, str]) -> str:
    n = len(attr)
    has_fve = bool(fve) and len(fve) == n
    vals = list(attr) + (list(fve) if has_fve else [])
    vals = [v for v in vals if _finite(v)]
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
            if not _finite(v):
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
    return "".join(g) + legend + "</div>"


def _svg_histogram(hist: dict, mean_act: Any = None) -> str:
    edges = [float(e) for e in hist.get("edges") or []]
    counts = [float(c) for c in hist.get("counts") or []]
    if len(edges) != len(counts) + 1 or not counts:
        return '<p class="empty">no histogram</p>'
    log_x = bool(hist.get("log_x")) and edges[0] > 0
    tx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
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
    if _finite(mean_act) and edges[0] <= mean_act <= edges[-1] and (not log_x or mean_act > 0):
        xm = X(mean_act)
        g.append(f'<line x1="{xm:.1f}" x2="{xm:.1f}" y1="{T}" y2="{T + ph}" stroke="#111" stroke-dasharray="4 3"/>'
                 f'<text x="{xm + 4:.1f}" y="{T + 10}" style="font-size:10.5px">mean {fmt_num(mean_act)}</text>')
    axis = "activation (log scale)" if log_x else "activation"
    g.append(f'<text x="{L + pw / 2}" y="{H - 4}" text-anchor="middle">{axis}</text>')
    g.append(f'<text transform="translate(12 {T + ph / 2}) rotate(-90)" text-anchor="middle">tokens</text>')
    g.append("</svg>")
    return "".join(g)


def _logit_table(rows: Sequence, positive: bool) -> str:
    rows = [r for r in rows or [] if isinstance(r, (list, tuple)) and len(r) == 2]
    if not rows:
        return '<p class="empty">none</p>'
    m = max((abs(v) for _, v in rows if _finite(v)), default=0) or 1.0
    col = "#3b6fd4" if positive else "#d9534f"
    out = ['<table class="logits"><tbody>']
    for tok, v in rows:
        w = 100 * abs(v) / m if _finite(v) else 0
        out.append(f'<tr><td class="tokcell"><span>{esc(show_token(tok))}</span></td>'
                   f'<td class="bar"><div class="b" style="width:{w:.1f}%;background:{col}"></div></td>'
                   f'<td class="val">{fmt_num(v)}</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


# ----------------------------------------------------------------------------------------------
# pages
# ----------------------------------------------------------------------------------------------

def _card(k: str, v: str) -> str:
    return f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{v}</div></div>'


def render_dashboard(d: dict) -> str:
    """One feature's dashboard as a full HTML document (schema: attnsae.viz.dashboard)."""
    feat = d.get("feature")
    links = d.get("links") or {}
    head_links = {}
    for i, item in enumerate(links.get("heads") or []):
        label, href = item
        try:
            head_links[int(str(label).lstrip("Hh"))] = href
        except ValueError:
            head_links[i] = href
    scale = d.get("max_act")
    if not (_finite(scale) and scale > 0):
        scale = max([e.get("act") or 0 for e in d.get("top_examples") or []] + [1.0])

    nav = []
    if links.get("index"):
        nav.append(_link(links["index"], "↑ index"))
    if head_links:
        nav.append('<span class="sep">|</span><span class="muted">heads of this layer:</span>')
        nav += [_link(head_links[h], f"H{h}", "chip") for h in sorted(head_links)]
    parts = [f'<nav class="top">{" ".join(nav)}</nav>' if nav else ""]
    layer = d.get("layer")
    parts.append(f"<h1>Feature {esc(feat)}"
                 + (f' <span class="muted" style="font-weight:400">· layer {esc(layer)}</span>' if layer is not None else "")
                 + "</h1>")
    parts.append(f'<div class="sub">{esc(d.get("model", ""))} · <code>{esc(d.get("hook", ""))}</code>'
                 + (f" · d_sae {fmt_count(d['d_sae'])}" if d.get("d_sae") else "") + "</div>")

    dens = d.get("density")
    dens_v = fmt_pct(dens) if _finite(dens) else "—"
    if _finite(dens) and dens > 0:
        dens_v += f" <small>1 in {fmt_num(1 / dens)}</small>"
    ah = d.get("head_attribution") or []
    top_head = max(range(len(ah)), key=lambda h: ah[h]) if ah else None
    cards = [_card("density", dens_v),
             _card("max activation", fmt_num(d.get("max_act"))),
             _card("mean when active", fmt_num(d.get("mean_act")))]
    if top_head is not None:
        cards.append(_card("top head", f"H{top_head} <small>{fmt_pct(ah[top_head])} of attribution</small>"))
    cards.append(_card("tokens measured", fmt_count(d.get("n_tokens"))))
    parts.append(f'<div class="cards">{"".join(cards)}</div>')

    charts = ['<div class="grid2">']
    charts.append('<div class="panel"><h2>Head attribution</h2>'
                  + (_svg_head_bars(ah, d.get("head_fve"), head_links) if ah else '<p class="empty">not available</p>')
                  + "</div>")
    charts.append('<div class="panel"><h2>Activation histogram</h2>'
                  + _svg_histogram(d.get("histogram") or {}, d.get("mean_act"))
                  + '<p class="cap">Tokens where the feature fires'
                  + (f', over {fmt_count(d.get("n_tokens"))} tokens' if d.get("n_tokens") else "")
                  + "; dashed line: mean when active.</p></div>")
    charts.append("</div>")
    parts.append("".join(charts))

    le = d.get("logit_effect") or {}
    if le:
        parts.append("<h2>Direct logit effect</h2>")
        if le.get("convention"):
            parts.append(f'<p class="sub" style="margin:0 0 8px">Convention: <code>{esc(le["convention"])}</code></p>')
        parts.append('<div class="grid2 logit-grid">'
                     f'<div class="panel"><h3>Top {len(le.get("top") or [])} promoted tokens</h3>{_logit_table(le.get("top"), True)}</div>'
                     f'<div class="panel"><h3>Bottom {len(le.get("bottom") or [])} (suppressed) tokens</h3>{_logit_table(le.get("bottom"), False)}</div>'
                     "</div>")

    tops = d.get("top_examples") or []
    parts.append(f'<h2 id="top">Top {len(tops)} activating examples</h2>')
    parts.append(_TOKEN_LEGEND.replace("hover any token for its activation", "hover any token for its activation · "
                                        "small bars under each activation: DFA by head at the activating token"))
    parts.append('<div class="examples" id="top-examples">'
                 + ("".join(_example_row(e, scale) for e in tops) or '<p class="empty">no activations recorded</p>')
                 + "</div>")

    groups = d.get("quantile_groups") or []
    if groups:
        parts.append('<h2 id="quantiles">Examples by activation quantile</h2>'
                     '<p class="sub" style="margin:0">Colours use the same scale as above (full red = max activation '
                     f'{fmt_num(scale)}), so weak groups look pale.</p>')
        for g in groups:
            exs = g.get("examples") or []
            parts.append(f'<details class="q" open><summary>{esc(g.get("label", ""))}'
                         f'<span class="rng">activation {fmt_num(g.get("lo"))} – {fmt_num(g.get("hi"))} · '
                         f'{len(exs)} example{"s" if len(exs) != 1 else ""}</span></summary>'
                         + ("".join(_example_row(e, scale) for e in exs) or '<p class="empty">empty</p>')
                         + "</details>")
    title = f"Feature {feat} · L{layer} · {d.get('model', '')}" if layer is not None else f"Feature {feat}"
    return _page(title, "\n".join(parts))


def render_head_page(h: dict) -> str:
    """One attention head's top features (by head attribution) as a full HTML document."""
    links = h.get("links") or {}
    layer, head = h.get("layer"), h.get("head")
    nav = [_link(links.get("index"), "↑ index")]
    if links.get("prev"):
        nav.append(_link(links["prev"], "← previous head"))
    if links.get("next"):
        nav.append(_link(links["next"], "next head →"))
    body = [f'<nav class="top">{" <span class=sep>|</span> ".join(n for n in nav if n)}</nav>']
    body.append(f"<h1>Layer {esc(layer)} · head {esc(head)}</h1>")
    info = [esc(h.get("model", "")), f"<code>{esc(h.get('hook', ''))}</code>"]
    if h.get("n_heads"):
        info.append(f"{esc(h['n_heads'])} heads")
    if h.get("n_tokens"):
        info.append(f"statistics over {fmt_count(h['n_tokens'])} tokens")
    body.append(f'<div class="sub">{" · ".join(info)}</div>')
    feats = h.get("features") or []
    thr = h.get("dead_threshold")
    body.append(f'<h2>Top {len(feats)} features by attribution to H{esc(head)}</h2>'
                '<p class="sub" style="margin:0 0 8px">Attribution: share of the feature\'s decoder norm in this '
                'head (weight-based). FVE: fraction of the activation\'s variance explained by this head\'s DFA term.'
                + (f" Features firing on fewer than {fmt_tick(100 * thr)}% of tokens are treated as dead." if _finite(thr) else "")
                + "</p>")
    if not feats:
        body.append('<p class="empty">no live features attributed to this head</p>')
    else:
        body.append(_TOKEN_LEGEND)
        rows = ['<table class="list"><thead><tr><th>#</th><th>feature</th><th>attribution</th><th>FVE</th>'
                '<th>density</th><th>max act</th><th>top activating example</th></tr></thead><tbody>']
        for i, f in enumerate(feats, 1):
            sc = f.get("score")
            bar = f'<span class="sbar" style="width:{60 * min(1, max(0, sc)):.0f}px"></span>' if _finite(sc) else ""
            ex = f.get("top_example")
            ctx = (f'<div class="toks">{render_tokens(ex, f.get("max_act") or ex.get("act"), before=24, after=4)}</div>'
                   if ex else '<span class="empty">—</span>')
            name = _link(f.get("dashboard"), f"#{esc(f.get('feature'))}") or f"#{esc(f.get('feature'))}"
            rows.append(f'<tr><td class="num muted">{i}</td><td>{name}</td>'
                        f'<td class="num">{bar}{fmt_pct(sc)}</td><td class="num">{fmt_pct(f.get("head_fve"))}</td>'
                        f'<td class="num">{fmt_density(f.get("density"))}</td><td class="num">{fmt_num(f.get("max_act"))}</td>'
                        f'<td class="ctx">{ctx}</td></tr>')
        rows.append("</tbody></table>")
        body.append("".join(rows))
    return _page(f"L{layer}H{head} · {h.get('model', '')}", "\n".join(body))


def render_index(idx: dict) -> str:
    """Index of layers × heads linking to head pages (and optional dashboards list)."""
    title = idx.get("title") or f"Attention SAE features · {idx.get('model', '')}"
    layers = idx.get("layers") or []
    body = [f"<h1>{esc(title)}</h1>"]
    sub = [esc(idx.get("model", ""))]
    if idx.get("n_tokens"):
        sub.append(f"statistics over {fmt_count(idx['n_tokens'])} tokens")
    body.append(f'<div class="sub">{" · ".join(s for s in sub if s)}</div>')

    n_heads = max((len(L.get("heads") or []) for L in layers), default=0)
    if layers and n_heads:
        body.append('<h2>Layers × heads</h2><p class="sub" style="margin:0">Each cell links to the head\'s page; '
                    'the number is the head attribution of its top feature.</p>')
        m = ['<div style="overflow-x:auto"><table class="matrix"><thead><tr><th>layer</th>']
        m += [f"<th>H{h}</th>" for h in range(n_heads)]
        m.append("<th>live / d_sae</th></tr></thead><tbody>")
        for L in layers:
            heads = {hd.get("head"): hd for hd in L.get("heads") or []}
            m.append(f'<tr><th><a href="#layer-{esc(L.get("layer"))}">L{esc(L.get("layer"))}</a></th>')
            for h in range(n_heads):
                hd = heads.get(h)
                if not hd:
                    m.append("<td></td>")
                    continue
                top = (hd.get("top") or [None])[0]
                sc = top.get("score") if top else None
                shade = f' style="background:rgba(59,111,212,{0.08 + 0.4 * min(1, max(0, sc)):.2f})"' if _finite(sc) else ""
                m.append(f'<td{shade}>{_link(hd.get("page"), fmt_pct(sc) if _finite(sc) else f"H{h}")}</td>')
            m.append(f'<td class="muted">{fmt_count(L.get("n_live"))} / {fmt_count(L.get("d_sae"))}</td></tr>')
        m.append("</tbody></table></div>")
        body.append("".join(m))

    for L in layers:
        lay = L.get("layer")
        body.append(f'<h2 id="layer-{esc(lay)}">Layer {esc(lay)} <span class="muted" style="font-weight:400;font-size:13px">'
                    f'<code>{esc(L.get("hook", ""))}</code> · {fmt_count(L.get("n_live"))} live of '
                    f'{fmt_count(L.get("d_sae"))} features · SAE <code>{esc(L.get("sae", ""))}</code></span></h2>')
        rows = ['<table class="list"><thead><tr><th>head</th><th>top features (attribution · density · summary)</th>'
                "</tr></thead><tbody>"]
        for hd in L.get("heads") or []:
            items = []
            for t in hd.get("top") or []:
                items.append(f'<div><b>#{esc(t.get("feature"))}</b> <span class="muted">{fmt_pct(t.get("score"))} · '
                             f'{fmt_density(t.get("density"))}</span> <span class="tokcell">{esc(show_token(t.get("summary", "")))}</span></div>')
            hlabel = f"H{esc(hd.get('head'))}"
            rows.append(f'<tr><td style="white-space:nowrap"><b>{_link(hd.get("page"), hlabel) or hlabel}</b></td>'
                        f'<td>{"".join(items) or "<span class=empty>none</span>"}</td></tr>')
        rows.append("</tbody></table>")
        body.append("".join(rows))

    dash = idx.get("dashboards") or []
    if dash:
        body.append("<h2>Feature dashboards</h2><div class=\"legend\" style=\"color:inherit\">"
                    + "".join(f"<span>{_link(href, esc(label))}</span>" for label, href in dash) + "</div>")
    return _page(title, "\n".join(body))


# ----------------------------------------------------------------------------------------------
# rating sheet
# ----------------------------------------------------------------------------------------------

_SHEET_CSS = """
main{max-width:none;padding:12px 16px 16px;display:flex;flex-direction:column;height:100vh}
.bar{display:flex;flex-wrap:wrap;gap:8px 16px;align-items:center;margin:8px 0}
#count{font-weight:600;font-variant-numeric:tabular-nums}
.prog{width:220px;height:8px;background:#eaeef2;border-radius:4px;overflow:hidden;display:flex}
.prog i{display:block;height:100%}
button{font:inherit;font-size:13px;padding:4px 10px;border:1px solid var(--line);border-radius:6px;background:#fff;cursor:pointer}
button:hover{background:var(--soft)}
button.primary{background:#1f883d;color:#fff;border-color:#1a7f37}
button.primary:hover{background:#1a7f37}
.wrap{display:grid;grid-template-columns:minmax(340px,400px) minmax(0,1fr);gap:14px;flex:1;min-height:480px}
#list{overflow-y:auto;border:1px solid var(--line);border-radius:6px}
.item{padding:8px 10px;border-bottom:1px solid #eaeef2;cursor:pointer}
.item.cur{background:#ddf4ff;box-shadow:inset 3px 0 0 var(--accent)}
.item .hd{display:flex;justify-content:space-between;align-items:baseline;gap:8px}
.item .hd b{font-variant-numeric:tabular-nums}
.item .st{font-size:12px;color:var(--muted)}
.item .st.yes{color:#1a7f37;font-weight:600}.item .st.no{color:#cf222e;font-weight:600}
.item .btns{display:flex;gap:6px;margin:6px 0 4px;flex-wrap:wrap}
.item button.v.on[data-v="yes"]{background:#1f883d;color:#fff;border-color:#1a7f37}
.item button.v.on[data-v="no"]{background:#cf222e;color:#fff;border-color:#a40e26}
.item input.note{width:100%;font:inherit;font-size:12.5px;padding:3px 6px;border:1px solid var(--line);border-radius:4px}
#view{display:flex;flex-direction:column;border:1px solid var(--line);border-radius:6px;overflow:hidden;min-width:0}
#view .vh{padding:6px 10px;background:var(--soft);border-bottom:1px solid var(--line);font-size:13px;display:flex;gap:12px;align-items:center}
#view iframe{flex:1;border:0;width:100%;background:#fff}
kbd{font-family:var(--mono);font-size:11px;border:1px solid var(--line);border-bottom-width:2px;border-radius:3px;padding:0 4px;background:#fff}
"""

_SHEET_JS = r"""
(function(){
var D=JSON.parse(document.getElementById('sheet-data').textContent);
var KEY='attnsae-ratings:'+D.sae+':'+D.seed+':'+D.title;
var R={};try{R=JSON.parse(localStorage.getItem(KEY)||'{}')||{};}catch(e){R={};}
var items=[].slice.call(document.querySelectorAll('.item'));var cur=0;
function save(){try{localStorage.setItem(KEY,JSON.stringify(R));}catch(e){}}
function get(f){return R[f]||{verdict:null,note:''};}
function paint(){
  var k=0,m=0;
  items.forEach(function(it){var f=it.dataset.feature,r=get(f),st=it.querySelector('.st');
    it.querySelectorAll('button.v').forEach(function(b){b.classList.toggle('on',(b.dataset.v==='yes'&&r.verdict===true)||(b.dataset.v==='no'&&r.verdict===false));});
    st.className='st'+(r.verdict===true?' yes':r.verdict===false?' no':'');
    st.textContent=r.verdict===true?'interpretable':r.verdict===false?'not interpretable':'unrated';
    var inp=it.querySelector('input.note');if(document.activeElement!==inp)inp.value=r.note||'';
    if(r.verdict!==null&&r.verdict!==undefined){k++;if(r.verdict)m++;}});
  var n=items.length;
  document.getElementById('count').textContent='Rated '+k+' of '+n+' · interpretable '+m+(k?' ('+(100*m/k).toFixed(1)+'%)':'');
  document.getElementById('p-yes').style.width=(n?100*m/n:0)+'%';
  document.getElementById('p-no').style.width=(n?100*(k-m)/n:0)+'%';
}
function select(i,scroll){if(!items.length)return;cur=Math.max(0,Math.min(items.length-1,i));
  items.forEach(function(it,j){it.classList.toggle('cur',j===cur);});var it=items[cur];
  var fr=document.getElementById('frame'),href=it.dataset.href;
  if(fr.getAttribute('src')!==href)fr.setAttribute('src',href);
  document.getElementById('vh-title').textContent='Feature '+it.dataset.feature+' ('+(cur+1)+' of '+items.length+')';
  var a=document.getElementById('vh-open');a.setAttribute('href',href);
  if(scroll)it.scrollIntoView({block:'nearest'});}
function setVerdict(i,v){var it=items[i],f=it.dataset.feature,r=get(f);
  r.verdict=(r.verdict===v)?null:v;R[f]=r;save();paint();}
function nextUnrated(){for(var j=1;j<=items.length;j++){var i=(cur+j)%items.length;var r=get(items[i].dataset.feature);if(r.verdict===null||r.verdict===undefined)return i;}return Math.min(cur+1,items.length-1);}
items.forEach(function(it,i){
  it.addEventListener('click',function(e){if(e.target.tagName!=='INPUT')select(i,false);});
  it.querySelectorAll('button.v').forEach(function(b){b.addEventListener('click',function(e){e.stopPropagation();select(i,false);setVerdict(i,b.dataset.v==='yes');});});
  var inp=it.querySelector('input.note');
  inp.addEventListener('input',function(){var f=it.dataset.feature,r=get(f);r.note=inp.value;R[f]=r;save();});
  inp.addEventListener('focus',function(){select(i,false);});
});
document.addEventListener('keydown',function(e){
  if(e.target.tagName==='INPUT'||e.ctrlKey||e.metaKey||e.altKey)return;
  var k=e.key;
  if(k==='y'||k==='n'){var was=get(items[cur].dataset.feature).verdict;setVerdict(cur,k==='y');
    if(get(items[cur].dataset.feature).verdict!==null&&was!==get(items[cur].dataset.feature).verdict)select(nextUnrated(),true);e.preventDefault();}
  else if(k==='j'||k==='ArrowDown'){select(cur+1,true);e.preventDefault();}
  else if(k==='k'||k==='ArrowUp'){select(cur-1,true);e.preventDefault();}
  else if(k==='o'){window.open(items[cur].dataset.href,'_blank');}
});
function exportObj(){return {sae:D.sae,layer:D.layer,seed:D.seed,features:D.features.map(function(f){var r=get(String(f.feature));
  return {feature:f.feature,dashboard:f.dashboard,verdict:(r.verdict===true||r.verdict===false)?r.verdict:null,note:r.note||''};})};}
window.attnsaeExport=exportObj;
document.getElementById('export').addEventListener('click',function(){
  var blob=new Blob([JSON.stringify(exportObj(),null,1)+'\n'],{type:'application/json'});
  var a=document.createElement('a');a.href=URL.createObjectURL(blob);a.download=D.ratings_file;
  document.body.appendChild(a);a.click();setTimeout(function(){URL.revokeObjectURL(a.href);a.remove();},1000);});
document.getElementById('clear').addEventListener('click',function(){
  if(confirm('Clear all ratings and notes on this sheet?')){R={};save();paint();}});
paint();select(0,false);
})();
"""


def render_rating_sheet(sheet: dict) -> str:
    """Interpretability rating sheet: sampled features, their dashboards in a side frame, and
    interpretable / not interpretable buttons with notes. Choices persist in localStorage;
    "Export ratings" downloads the ratings-file JSON (merge with
    attnsae.evals.interpretability.merge_export)."""
    feats = sheet.get("features") or []
    title = sheet.get("title") or f"Interpretability ratings · {sheet.get('sae', '')}"
    data = {"title": title, "sae": str(sheet.get("sae", "")), "layer": sheet.get("layer"),
            "seed": sheet.get("seed", 0),
            "ratings_file": os.path.basename(str(sheet.get("ratings_file") or "ratings.json")) or "ratings.json",
            "features": [{"feature": f["feature"], "dashboard": str(f.get("dashboard", ""))} for f in feats]}
    blob = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    body = [f"<h1>{esc(title)}</h1>",
            f'<div class="sub">SAE <code>{esc(data["sae"])}</code>'
            + (f" · layer {esc(data['layer'])}" if data["layer"] is not None else "")
            + f" · sample seed {esc(data['seed'])} · {len(feats)} features</div>",
            f'<div class="bar"><span id="count">Rated 0 of {len(feats)} · interpretable 0</span>'
            '<span class="prog" title="green: interpretable, red: not interpretable"><i id="p-yes" style="background:#1f883d;width:0"></i>'
            '<i id="p-no" style="background:#cf222e;width:0"></i></span>'
            '<button id="export" class="primary">Export ratings</button><button id="clear">Clear all</button>'
            '<span class="small muted">Keys: <kbd>y</kbd> interpretable, <kbd>n</kbd> not (moves to the next unrated), '
            '<kbd>j</kbd>/<kbd>k</kbd> move, <kbd>o</kbd> open in a new tab. Ratings are kept in this browser; '
            f'export <code>{esc(data["ratings_file"])}</code> and merge it with '
            '<code>attnsae.evals.interpretability.merge_export</code>.</span></div>',
            '<p class="sub" style="margin:0 0 8px">A feature is <b>interpretable</b> if a single, specific explanation '
            'accounts for most of its top activations and for what the lower quantiles show; otherwise it is '
            '<b>not interpretable</b>. The optional note records the explanation.</p>']
    items = []
    for i, f in enumerate(feats, 1):
        fid, href = esc(f["feature"]), esc(f.get("dashboard", ""))
        items.append(f'<div class="item" data-feature="{fid}" data-href="{href}">'
                     f'<div class="hd"><b>{i}. feature {fid}</b><span class="st">unrated</span></div>'
                     '<div class="btns"><button class="v" data-v="yes">Interpretable</button>'
                     '<button class="v" data-v="no">Not interpretable</button>'
                     f'<a href="{href}" target="_blank" class="small" style="align-self:center">open ↗</a></div>'
                     f'<input class="note" type="text" placeholder="note (optional)" aria-label="note for feature {fid}">'
                     "</div>")
    body.append('<div class="wrap"><div id="list">' + ("".join(items) or '<p class="empty" style="padding:8px">no features</p>')
                + '</div><div id="view"><div class="vh"><b id="vh-title">—</b><a id="vh-open" target="_blank" href="#">'
                'open in a new tab ↗</a></div><iframe id="frame" title="feature dashboard"></iframe></div></div>')
    body.append(f'<script type="application/json" id="sheet-data">{blob}</script>')
    return _page(title, "\n".join(body), css=_SHEET_CSS, script=_SHEET_JS)
