"""Number and token formatting for the pages, and HTML escaping for markup built in Python (the SVG charts).

The fmt_* functions return plain text that needs no escaping, except when given something that is not a
number: then the value itself comes back escaped, as Markup, so templates do not escape it twice."""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape


def esc(s: Any) -> Markup:
    return escape(str(s))


def finite(x: Any) -> bool:
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
    if finite(x) and abs(x) >= 1000:
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
    if not finite(frac):
        return fmt_num(frac)
    if frac == 0:
        return "0%"
    if abs(frac - 1) < 5e-4:  # avoid "100.0%"-style noise
        return "100%"
    return fmt_num(100 * frac, sig) + "%"


def fmt_count(n: Any) -> str:
    """Big counts compactly: 950, 12.3k, 1.02M, 3.4B."""
    if not finite(n):
        return fmt_num(n)
    a = abs(n)
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return fmt_num(n / div) + suffix
    return f"{int(n):,}" if float(n).is_integer() else fmt_num(n)


def fmt_density(d: Any) -> str:
    """A firing density as percentage and 1-in-N ("0.120% · 1 in 833")."""
    if not finite(d):
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


def is_special(tok: str) -> bool:
    return (tok.startswith("<|") and tok.endswith("|>")) or tok in ("<s>", "</s>", "<bos>", "<eos>", "<pad>", "<unk>")


def act_colour(a: float) -> str:
    """White at 0 through orange to red at 1."""
    a = min(1.0, max(0.0, a))
    stops = [(0.0, (255, 255, 255)), (0.35, (254, 215, 170)), (0.7, (251, 146, 60)), (1.0, (220, 38, 38))]
    for (a0, c0), (a1, c1) in zip(stops, stops[1:]):
        if a <= a1:
            t = (a - a0) / (a1 - a0)
            r, g, b = (round(u + t * (v - u)) for u, v in zip(c0, c1))
            return f"#{r:02x}{g:02x}{b:02x}"
    return "#dc2626"


def head_list(values: Sequence[float], n_top: int = 4) -> str:
    """'H3 2.10, H5 0.712, ...' for the largest |values|."""
    order = sorted(range(len(values)), key=lambda h: -abs(values[h]))[:n_top]
    s = ", ".join(f"H{h} {fmt_num(values[h])}" for h in order)
    return s + (", …" if len(values) > n_top else "")
