"""An example's tokens as the data for coloured spans (templates/macros.html renders them)."""
from __future__ import annotations

import numbers
from typing import NamedTuple

from .format import act_colour, finite, fmt_num, head_list, is_special, show_token


class Span(NamedTuple):
    text: str  # the token made visible (show_token)
    cls: str  # t, plus sp (special token), max (activating token), src (DFA source)
    colour: str | None  # background for a positive activation
    tip: str  # hover text
    rank: int | None  # rank among the DFA sources


class Spans(NamedTuple):
    spans: list[Span]
    cut_before: bool  # tokens left out before / after the shown window
    cut_after: bool


def token_spans(ex: dict, scale: float, before: int | None = None, after: int | None = None) -> Spans:
    """One example's tokens as spans. scale: the activation shown fully red. before/after: keep only
    that many tokens around the activating token (head pages)."""
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
    scale = scale if finite(scale) and scale > 0 else max([a for a in acts if finite(a)] + [1.0])
    spans = []
    for i in range(lo, hi):
        raw = str(toks[i])
        a = acts[i] if finite(acts[i]) else 0.0
        cls = ["t"]
        if is_special(raw):
            cls.append("sp")
        tip = [f"“{show_token(raw)}”  act {fmt_num(a)}"]
        if i == pos:
            cls.append("max")
            tip.append("activating token")
            dh = ex.get("dfa_head")
            if dh:
                tip.append("DFA by head: " + head_list(dh, 5) + (f"; bias {fmt_num(ex['dfa_bias'])}"
                                                              if finite(ex.get("dfa_bias")) else ""))
        rank = None
        if i in srcs:
            rank, s = srcs[i]
            cls.append("src")
            line = f"DFA source #{rank}: {fmt_num(s.get('value'))}"
            if s.get("by_head"):
                line += " (" + head_list(s["by_head"]) + ")"
            tip.append(line)
        colour = act_colour(max(a / scale, 0.06)) if a > 0 else None
        spans.append(Span(show_token(raw), " ".join(cls), colour, "\n".join(tip), rank))
    return Spans(spans, lo > 0, hi < len(toks))
