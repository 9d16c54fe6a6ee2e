"""The circuit explorer's API: the splits it serves sum exactly, bad requests get a 4xx with the reason."""

import json

import pytest
import torch
from fastapi.testclient import TestClient

from attnsae.explorer import MAX_BODY, Explorer, create_app
from attnsae.models import gpt2_tokenizer
from attnsae.models.loading import from_hf

from .conftest import hf_tiny
from .test_attribution import random_sae

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def client():
    model = from_hf(hf_tiny("gpt2", vocab=50257), weights="random")
    model.cfg.name = "tiny-gpt2"
    model.tokenizer = gpt2_tokenizer()
    saes = {l: random_sae(model, layer=l, d_sae=40, seed=l + 1) for l in (0, 1)}
    for sae in saes.values():
        with torch.no_grad():
            sae.W_dec.normal_(generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        saes[1].b_enc[39] = -100.0  # never fires
    return TestClient(create_app(Explorer(model, saes)), raise_server_exceptions=False)


def post(client, path, **body):
    r = client.post(path, json=body)
    assert "Traceback" not in r.text
    return r


def test_page_and_info(client):
    r = client.get("/")
    assert r.status_code == 200 and "Circuit explorer" in r.text and "tiny-gpt2" in r.text
    info = client.get("/api/info").json()
    assert info["layers"] == [0, 1] and info["limits"]["tokens"] == 128


def test_prompt_feature_source_and_recursion_sum_exactly(client):
    p = post(client, "/api/prompt", prompt=PROMPT, k=3).json()
    n = len(p["tokens"])
    assert p["tokens"][1] == "When" and len(p["top"]["1"]) == n and all(len(x) <= 3 for x in p["top"]["1"])
    f, _ = p["top"]["1"][n - 1][0]
    d = post(client, "/api/feature", prompt=PROMPT, layer=1, feature=f, dest=n - 1, n_sources=4).json()
    assert d["pre"] == pytest.approx(d["bias"] + sum(d["by_head"]), abs=1e-4) and d["n_sources"] == n
    assert [abs(s["value"]) for s in d["sources"]] == sorted((abs(s["value"]) for s in d["sources"]), reverse=True)
    src = d["sources"][0]["src"]
    s = post(client, "/api/source", prompt=PROMPT, layer=1, feature=f, dest=n - 1, src=src, top=50).json()
    assert s["total"] == pytest.approx(d["sources"][0]["value"], rel=1e-4, abs=1e-5)
    assert sum(s["components"].values()) + s["value_bias"] == pytest.approx(s["total"], rel=1e-4, abs=1e-5)
    up = s["upstream"]["0"]
    assert up["total"] == pytest.approx(s["components"]["attn_out.0"], rel=1e-4, abs=1e-5)
    assert sum(v for *_, v in up["features"]) + up["error"] + up["bias"] == pytest.approx(up["total"], rel=1e-4, abs=1e-5)
    j, act, _ = up["features"][0]  # recurse: the upstream feature is a feature at the source
    child = post(client, "/api/feature", prompt=PROMPT, layer=0, feature=j, dest=src).json()
    assert child["act"] == pytest.approx(act, rel=1e-5)


def test_the_qk_pairs_of_a_head_sum_to_its_attention_score(client):
    n = len(post(client, "/api/prompt", prompt=PROMPT, k=1).json()["tokens"])
    r = post(client, "/api/qk", prompt=PROMPT, layer=1, head=1, dest=n - 1, src=3, top=5).json()
    assert r["total"] == pytest.approx(r["score"], rel=1e-4, abs=1e-4)
    assert len(r["pairs"]) == 5 and [abs(p["value"]) for p in r["pairs"]] == sorted((abs(p["value"]) for p in r["pairs"]),
                                                                                  reverse=True)
    assert 0 < r["top_abs_share"] <= 1 and r["n_terms"] > 5
    assert any(q.startswith("L0.F") for q, _ in r["query_parts"]) or any(p["query"].startswith("L0") for p in r["pairs"])


def test_ablating_a_feature_moves_the_loss_only_where_it_fires(client):
    """The loss of predicting token p+1 moves only once the feature has fired at some position <= p (causal);
    a feature that never fires moves nothing."""
    p = post(client, "/api/prompt", prompt=PROMPT, k=3).json()
    n = len(p["tokens"])
    f = p["top"]["1"][n - 1][0][0]
    r = post(client, "/api/ablate", prompt=PROMPT, layer=1, feature=f).json()
    assert len(r["delta_loss"]) == n - 1 == len(r["next_tokens"]) and len(r["act"]) == n
    first = next(i for i, a in enumerate(r["act"]) if a > 0)
    assert r["delta_loss"][:first] == pytest.approx([0.0] * first, abs=1e-6)
    assert any(abs(x) > 1e-6 for x in r["delta_loss"][first:])
    silent = post(client, "/api/ablate", prompt=PROMPT, layer=1, feature=39).json()
    assert max(silent["act"]) == 0 and silent["delta_loss"] == pytest.approx([0.0] * (n - 1), abs=1e-6)


@pytest.mark.parametrize("path,body,status,message", [
    ("/api/prompt", {"prompt": ""}, 422, "at least 1 character"),
    ("/api/prompt", {"prompt": "hi", "k": 0}, 422, "greater than or equal to 1"),
    ("/api/prompt", {"prompt": "word " * 200}, 400, "more than the 128 allowed"),
    ("/api/feature", {"prompt": PROMPT, "layer": 5, "feature": 0, "dest": 1}, 400, "no attention SAE at layer 5"),
    ("/api/feature", {"prompt": PROMPT, "layer": 1, "feature": 40, "dest": 1}, 400, "feature 40 out of range"),
    ("/api/feature", {"prompt": PROMPT, "layer": 1, "feature": 0, "dest": 99}, 400, "position 99 out of range"),
    ("/api/feature", {"prompt": PROMPT, "layer": "one", "feature": 0, "dest": 1}, 422, "valid integer"),
    ("/api/source", {"prompt": PROMPT, "layer": 1, "feature": 0, "dest": 3, "src": 4}, 400, "source 4 out of range"),
    ("/api/source", {"prompt": PROMPT, "layer": 1, "feature": 0, "dest": 3, "src": 1, "top": 10**6}, 422, "less than"),
    ("/api/ablate", {"prompt": PROMPT, "layer": 1, "feature": -1}, 400, "feature -1 out of range"),
    ("/api/qk", {"prompt": PROMPT, "layer": 1, "head": 9, "dest": 5, "src": 2}, 400, "head 9 out of range"),
    ("/api/qk", {"prompt": PROMPT, "layer": 1, "head": 0, "dest": 5, "src": 6}, 400, "source 6 out of range"),
    ("/api/qk", {"prompt": PROMPT, "layer": 1, "head": 0, "dest": 5, "src": 2, "resid": True}, 400, "no residual SAE"),
])
def test_bad_requests_get_a_4xx_with_the_reason(client, path, body, status, message):
    r = post(client, path, **body)
    assert r.status_code == status and message in r.text, r.text


def test_malformed_and_oversized_bodies_are_refused(client):
    r = client.post("/api/prompt", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "Traceback" not in r.text
    r = client.post("/api/prompt", content=json.dumps({"prompt": "x" * (MAX_BODY + 10)}).encode(),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "request body over" in r.text
    assert client.get("/api/nothing").status_code == 404


def test_a_request_that_waits_too_long_for_the_model_gets_a_503(client, monkeypatch):
    import attnsae.explorer as explorer_module

    ex = client.app.state.explorer
    monkeypatch.setattr(explorer_module, "MAX_WAIT_S", 0.1)
    with ex._lock:  # another request holds the model
        r = post(client, "/api/prompt", prompt="a prompt not traced yet", k=1)
    assert r.status_code == 503 and "busy" in r.json()["detail"] and r.headers["retry-after"] == "5"
    assert post(client, "/api/prompt", prompt="a prompt not traced yet", k=1).status_code == 200


def test_a_script_prompt_comes_back_as_text(client):
    r = post(client, "/api/prompt", prompt="<script>alert(1)</script>", k=1).json()
    assert "".join(r["tokens"][1:]) == "<script>alert(1)</script>"  # JSON text; the page sets it with textContent
    assert "innerHTML" not in client.get("/").text


def test_the_explorer_in_headless_chromium(client, tmp_path):
    """Type a prompt, click a token and a feature, expand a source, trace an upstream feature (two levels), ablate;
    no console errors; a <script> prompt shows as text."""
    import os
    import socket
    import threading
    import time
    from pathlib import Path

    import uvicorn

    from .test_html import ARGS, CHROMIUM, _playwright

    sync_playwright = _playwright()
    shots = Path(os.environ.get("ATTNSAE_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(client.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    errors = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.goto(f"http://127.0.0.1:{port}/")
            page.fill("#prompt", PROMPT)
            page.click("#run")
            page.wait_for_selector(".tok")
            n = page.locator(".tok").count()
            page.locator(".tok").nth(n - 1).click()
            page.locator("button.feat[data-layer='1']").first.click()
            page.wait_for_selector("details.node")
            page.locator("button.expand").first.click()
            page.wait_for_selector("button.trace", state="attached")  # inside a closed <details>
            page.locator("summary", has_text="into L0 features").first.click()  # open layer 0's features
            page.locator("button.trace").first.click()
            page.wait_for_function("document.querySelectorAll('details.node').length >= 2")
            assert page.locator("details.node details.node").count() == 1  # the upstream feature, nested in its parent
            page.locator("details.node details.node button.expand").first.click()
            page.wait_for_function("document.querySelectorAll('details.node details.node table.parts').length >= 2")
            page.locator("button.qk").first.click()  # the QK pair table of the source's strongest head
            page.wait_for_selector("table.qk-table tr:nth-child(3)")
            page.locator("details.node button.small", has_text="ablate").first.click()
            page.wait_for_selector("text=Δ next-token loss")
            page.screenshot(path=str(shots / "explorer.png"), full_page=True)
            page.fill("#prompt", "<script>window.pwned = 1</script> hello")
            page.click("#run")
            page.wait_for_function("document.querySelectorAll('.tok').length > 2 && "
                                   "[...document.querySelectorAll('.tok')].some(t => t.textContent.includes('<'))")
            assert page.evaluate("window.pwned === undefined") and page.evaluate("document.scripts.length") == 2
            clean = list(errors)
            page.fill("#prompt", "word " * 200)  # refused: the browser logs the 400, the page says why
            page.click("#run")
            page.wait_for_selector("#error:not([hidden])")
            assert "more than the 128 allowed" in page.text_content("#error")
            browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
    assert clean == [], clean
    assert all("status of 400" in e for e in errors[len(clean):]), errors
