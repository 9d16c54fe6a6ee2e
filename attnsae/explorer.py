"""The circuit explorer: a local web app over recursive DFA (attribution.rdfa) for any prompt.

A FastAPI app: the page (GET /) and a JSON API a notebook can call as well. The model and SAEs load once;
each prompt's trace (one float32 forward) is kept for the last few prompts, so expanding a tree only reads it.
Work per request is bounded (prompt length, how many features or sources a reply lists) and a request waits at
most MAX_WAIT_S for the model (then a 503); bad input gets a 4xx with the reason in "detail", never a stack trace.

    GET  /api/info                        model, layers with SAEs, limits
    POST /api/prompt   {prompt, k}        tokens; each position's top k features per layer
    POST /api/feature  {prompt, layer, feature, dest, n_sources}
                                          DFA by head, the strongest sources (steps 1-2)
    POST /api/source   {prompt, layer, feature, dest, src, top}
                                          that source split into components, upstream attention features and
                                          residual-SAE features (steps 3-5; recurse with /api/feature at src)
    POST /api/qk       {prompt, layer, head, dest, src, top, resid}
                                          that head's attention score from dest to src split into query part x
                                          key part pairs (attribution.qk): the top pairs, each side's parts
    POST /api/ablate   {prompt, layer, feature}
                                          next-token loss at every position with the feature zero-ablated
                                          (the error term kept), minus the clean loss
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from .attribution.qk import qk_table
from .attribution.rdfa import PromptTrace, source_parts, traced_dfa
from .data.windows import prompt_tokens
from .evals.splice import sae_hook
from .models.text import TokenText

MAX_TOKENS = 128  # per prompt (BOS included)
MAX_BODY = 16_384  # bytes of a request body
MAX_LIST = 50  # features or sources one reply lists
CACHED_PROMPTS = 8
MAX_WAIT_S = 30.0  # a request that cannot start its model work within this long gets a 503 instead of queueing on


class Busy(Exception):
    """The model is taken by other requests for longer than MAX_WAIT_S."""


def serialized(method):
    """One request's work at a time: torch already spreads one over every core, and two at once oversubscribe
    them (measured with 50 clients: p95 23 s with requests side by side). A request that cannot start within
    MAX_WAIT_S raises Busy (a 503)."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if not self._lock.acquire(timeout=MAX_WAIT_S):
            raise Busy(f"the explorer has been busy with other requests for over {MAX_WAIT_S:g} s; try again")
        try:
            return method(self, *args, **kwargs)
        finally:
            self._lock.release()

    return run


class PromptIn(BaseModel):
    prompt: str = Field(min_length=1, max_length=4000)
    k: int = Field(5, ge=1, le=MAX_LIST)


class FeatureIn(BaseModel):
    prompt: str = Field(min_length=1, max_length=4000)
    layer: int
    feature: int
    dest: int
    n_sources: int = Field(5, ge=1, le=MAX_LIST)


class SourceIn(FeatureIn):
    src: int
    top: int = Field(8, ge=1, le=MAX_LIST)


class QKIn(BaseModel):
    prompt: str = Field(min_length=1, max_length=4000)
    layer: int
    head: int
    dest: int
    src: int
    top: int = Field(10, ge=1, le=MAX_LIST)
    resid: bool = False  # split both streams into the residual SAE's features instead of upstream components


class AblateIn(BaseModel):
    prompt: str = Field(min_length=1, max_length=4000)
    layer: int
    feature: int


class Explorer:
    """The loaded model and SAEs, and the traces of the last few prompts."""

    def __init__(self, model, attn_saes: dict, resid_saes: dict | None = None, dashboards=None):
        self.model, self.attn_saes, self.resid_saes = model, attn_saes, resid_saes or {}
        self.dashboards = Path(dashboards) if dashboards else None  # a report folder: features/L{l}/F{i}.html
        self.text = TokenText(model.tokenizer)
        self._traces: OrderedDict[str, PromptTrace] = OrderedDict()
        self._lock = threading.Lock()

    def trace(self, prompt: str) -> PromptTrace:
        """The prompt's trace, from the cache of the last few or computed now (under `serialized`)."""
        if prompt in self._traces:
            self._traces.move_to_end(prompt)
            return self._traces[prompt]
        t = PromptTrace(self.model, prompt_tokens(self.model, prompt, MAX_TOKENS), self.attn_saes, self.resid_saes)
        self._traces[prompt] = t
        while len(self._traces) > CACHED_PROMPTS:
            self._traces.popitem(last=False)
        return t

    def info(self) -> dict:
        return {"model": self.model.cfg.name, "layers": sorted(self.attn_saes), "resid_layers": sorted(self.resid_saes),
                "n_heads": self.model.cfg.n_heads, "d_sae": {l: s.d_sae for l, s in self.attn_saes.items()},
                "dashboards": self.dashboards is not None,
                "limits": {"tokens": MAX_TOKENS, "list": MAX_LIST, "body_bytes": MAX_BODY}}

    @serialized
    def prompt(self, q: PromptIn) -> dict:
        t = self.trace(q.prompt)
        return {"tokens": self.text(t.tokens),
                "top": {l: [t.top_features(l, p, q.k) for p in range(len(t))] for l in sorted(self.attn_saes)}}

    @serialized
    def feature(self, q: FeatureIn) -> dict:
        t = self.trace(q.prompt)
        d = traced_dfa(t, q.layer, q.feature, q.dest)
        terms = d.by_source.sum(1)
        order = terms.abs().argsort(descending=True)[:q.n_sources].tolist()
        tokens = self.text(t.tokens)
        page = f"features/L{q.layer}/F{q.feature}.html"
        dashboard = f"/dashboards/{page}" if self.dashboards and (self.dashboards / page).exists() else None
        return {"layer": q.layer, "feature": q.feature, "dest": q.dest, "token": tokens[q.dest], "dashboard": dashboard,
                "pre": d.pre, "act": d.act,
                "bias": d.bias, "by_head": d.by_head.tolist(), "n_sources": len(terms),
                "sources": [{"src": s, "token": tokens[s], "value": float(terms[s]), "by_head": d.by_source[s].tolist()}
                            for s in order]}

    @serialized
    def source(self, q: SourceIn) -> dict:
        t = self.trace(q.prompt)
        parts = source_parts(t, q.layer, q.feature, q.dest, q.src, top=q.top)
        return parts | {"token": self.text(t.tokens[q.src : q.src + 1])[0]}

    @serialized
    def qk(self, q: QKIn) -> dict:
        t = self.trace(q.prompt)
        r = qk_table(t, q.layer, q.head, q.dest, q.src, resid_sae=q.resid)
        table, rows, cols = r["table"], r["rows"], r["cols"]
        flat = table.flatten()
        order = flat.abs().argsort(descending=True)[: q.top].tolist()
        by_row, by_col = table.sum(1), table.sum(0)
        side = lambda names, v: [[names[i], float(v[i])] for i in v.abs().argsort(descending=True)[: q.top].tolist()]  # noqa: E731
        tokens = self.text(t.tokens)
        return {"layer": q.layer, "head": q.head, "dest": q.dest, "src": q.src, "dest_token": tokens[q.dest],
                "src_token": tokens[q.src], "score": r["score"], "total": float(flat.sum()), "n_terms": len(flat),
                "top_abs_share": float(flat[order].abs().sum() / flat.abs().sum().clamp_min(1e-30)),
                "pairs": [{"query": rows[i // len(cols)], "key": cols[i % len(cols)], "value": float(flat[i])}
                          for i in order],
                "query_parts": side(rows, by_row), "key_parts": side(cols, by_col)}

    @serialized
    @torch.no_grad()
    def ablate(self, q: AblateIn) -> dict:
        t = self.trace(q.prompt)
        t.check(q.layer, q.feature)
        sae = self.attn_saes[q.layer]

        def without(f):
            f = f.clone()
            f[..., q.feature] = 0
            return f

        tokens = t.tokens[None].to(self.model.device)
        clean = self.model.loss(tokens, per_token=True)[0]
        hook = (sae.cfg.hook_name, sae_hook(sae, keep_error=True, edit=without))
        ablated = self.model.loss(tokens, [hook], per_token=True)[0]
        tokens_text = self.text(t.tokens)
        return {"layer": q.layer, "feature": q.feature, "act": t.acts[q.layer][:, q.feature].tolist(),
                "next_tokens": tokens_text[1:], "clean_loss": clean.tolist(), "delta_loss": (ablated - clean).tolist()}


def create_app(explorer: Explorer) -> FastAPI:
    app = FastAPI(title="attnsae circuit explorer", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    app.state.explorer = explorer

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
            return JSONResponse({"detail": f"request body over {MAX_BODY} bytes"}, status_code=413)
        return await call_next(request)

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, e: ValueError):
        return JSONResponse({"detail": str(e)}, status_code=400)

    @app.exception_handler(Busy)
    async def busy(request: Request, e: Busy):
        return JSONResponse({"detail": str(e)}, status_code=503, headers={"Retry-After": "5"})

    @app.get("/", response_class=HTMLResponse)
    def page():
        from .viz.html.templating import render

        return render("explorer.html", info=explorer.info(), title=f"circuit explorer: {explorer.model.cfg.name}")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(status_code=204)

    if explorer.dashboards is not None:
        app.mount("/dashboards", StaticFiles(directory=explorer.dashboards), name="dashboards")
    app.get("/api/info")(explorer.info)
    app.post("/api/prompt")(explorer.prompt)
    app.post("/api/feature")(explorer.feature)
    app.post("/api/source")(explorer.source)
    app.post("/api/qk")(explorer.qk)
    app.post("/api/ablate")(explorer.ablate)
    return app
