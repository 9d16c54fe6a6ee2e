"""Static, self-contained HTML for feature dashboards, head pages, the index and rating sheets.

Every page is one file: inline CSS, inline SVG charts, no network, no external fonts or
libraries. Only the rating sheet carries (a little) JavaScript. The input dicts follow the
schemas produced by ``attnsae.features.dashboard`` and ``attnsae.viz.report``.

    format.py      numbers and tokens as text
    svg.py         the charts
    tokens.py      an example's tokens as coloured spans
    templating.py  the Jinja2 environment (autoescaping), inlining of static/ files, write_html
    pages.py       dashboard, head page, index       (templates/*.html)
    rating.py      the rating sheet                  (templates/rating.html, static/rating.js)
"""
from .format import fmt_count, fmt_density, fmt_num, fmt_pct, show_token
from .pages import render_dashboard, render_head_page, render_index, render_study
from .rating import render_rating_sheet
from .templating import write_html

__all__ = ["render_dashboard", "render_head_page", "render_index", "render_study", "render_rating_sheet", "write_html",
           "fmt_num", "fmt_pct", "fmt_density", "fmt_count", "show_token"]
