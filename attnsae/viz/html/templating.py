"""The Jinja2 environment shared by all pages, and writing a page to disk.

Templates and the CSS/JS they inline live in this package's templates/ and static/ folders (package
data). Autoescaping is on for every template, so text from a tokenizer, a report or a ratings file
is always escaped; only Markup (the charts from svg.py, the static files) goes in as is. Undefined
names are errors, so a template reads optional fields with .get() and the same defaults as the code."""
from __future__ import annotations

import os
from functools import cache
from importlib.resources import files
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from . import format as fmt
from . import svg
from .tokens import token_spans


@cache
def static(name: str) -> Markup:
    """A CSS or JS file from static/, to inline: every page must be one self-contained file."""
    return Markup((files(__package__) / "static" / name).read_text(encoding="utf-8"))


env = Environment(loader=PackageLoader(__package__), autoescape=True, undefined=StrictUndefined,
                  trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
env.filters.update(fmt_num=fmt.fmt_num, fmt_pct=fmt.fmt_pct, fmt_count=fmt.fmt_count, fmt_density=fmt.fmt_density,
                   fmt_tick=fmt.fmt_tick, show_token=fmt.show_token, clip01=lambda x: min(1, max(0, x)))
env.tests["finite"] = fmt.finite
env.globals.update(static=static, token_spans=token_spans, head_bars=svg.head_bars, histogram=svg.histogram,
                   mini_heads=svg.mini_heads)
# tojson (the rating sheet's data): non-ASCII text as is, keys in the given order
env.policies["json.dumps_kwargs"] = {"ensure_ascii": False}


def render(template: str, **context) -> str:
    return env.get_template(template).render(**context)


def write_html(path: str | os.PathLike, html: str) -> Path:
    """Write html (utf-8), creating parent folders. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
