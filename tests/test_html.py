"""Static HTML rendering (attnsae.viz.html): escaping and structure, plus a real headless-browser
check with the system chromium (layout, console errors, rating sheet round trip)."""
import json
import os
import random
import re
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path

import pytest

from attnsae.evals import interpretability as interp
from attnsae.viz import html as H

WORDS = (" the cat sat on the mat and then it went to sleep because the day had been long . In 1987 ,"
         " researchers at the University of Cambridge published a paper on neural networks that"
         " nobody read until much later").split(" ")
NASTY = ["<script>", "&amp;", "\n", " the", "\n\n", '"quoted"', "'", "</div>", "\t", " <b>", "&", "<|endoftext|>",
         "  ", "", "ünï©ødé", "================================================"]


def make_example(rng: random.Random, n_heads: int, act: float, length: int = 48) -> dict:
    toks = ["<|endoftext|>"] + [(" " + rng.choice(WORDS).strip()) if rng.random() < 0.85 else rng.choice(NASTY)
                                for _ in range(length - 1)]
    pos = rng.randrange(length // 2, length - 1)
    acts = [0.0] * length
    for i in range(1, length):
        if rng.random() < 0.12:
            acts[i] = round(rng.uniform(0, act * 0.6), 3)
    acts[pos] = act
    srcs = sorted(rng.sample(range(0, pos + 1), k=min(5, pos + 1)),
                  key=lambda p: -abs(p - pos))  # any order; values sorted below
    vals = sorted((rng.uniform(0.05, act / 2) for _ in srcs), reverse=True)
    dfa_source = []
    for p, v in zip(srcs, vals):
        w = [rng.random() for _ in range(n_heads)]
        dfa_source.append({"pos": p, "value": v, "by_head": [v * x / sum(w) for x in w]})
    dfa_head = [rng.uniform(-0.3, 1.0) * act / n_heads for _ in range(n_heads)]
    dfa_head[rng.randrange(n_heads)] += act / 2
    return {"window": rng.randrange(8000), "pos": pos, "act": act, "tokens": toks, "acts": acts,
            "dfa_source": dfa_source, "dfa_head": dfa_head, "dfa_bias": act - sum(dfa_head)}


def make_dashboard(feature: int = 123, n_heads: int = 9, seed: int = 0, with_fve: bool = True) -> dict:
    rng = random.Random(seed)
    max_act = 7.3
    w = [rng.random() ** 3 for _ in range(n_heads)]
    w[rng.randrange(n_heads)] += 2
    attr = [x / sum(w) for x in w]
    fve = None
    if with_fve:
        f = [a + rng.uniform(-0.08, 0.05) for a in attr]
        fve = [x / sum(f) for x in f]
    edges = [0.01 * (max_act / 0.01) ** (i / 40) for i in range(41)]
    counts = [int(2000 * pow(2.718, -((i - 22) / 7) ** 2)) for i in range(40)]
    vocab = [" Paris", " London", "<script>", "&amp;", "\n", " the", " Berlin", " Tokyo", "'s", " cities", " Rome",
             " capital", '"', " Madrid", " Vienna", " Prague", "ville", " Lisbon", " Oslo", " Dublin"]
    top = [[t, round(0.6 - 0.02 * i, 3)] for i, t in enumerate(vocab)]
    bottom = [[t.upper(), round(-0.5 + 0.02 * i, 3)] for i, t in enumerate(vocab)]
    top_acts = sorted((rng.uniform(5.0, max_act) for _ in range(19)), reverse=True)
    top_examples = [make_example(rng, n_heads, a) for a in [max_act] + top_acts]
    groups = []
    bounds = [max_act * (10 - i) / 10 for i in range(11)]
    for q in range(10):
        hi, lo = bounds[q], bounds[q + 1]
        groups.append({"label": f"Q{10 - q}" + (" (highest)" if q == 0 else " (lowest)" if q == 9 else ""),
                       "lo": lo, "hi": hi,
                       "examples": [make_example(rng, n_heads, rng.uniform(max(lo, 0.01), hi), 32) for _ in range(3)]})
    return {"model": "smollm2-135m", "hook": "blocks.15.attn.hook_z", "layer": 15, "feature": feature, "d_sae": 4608,
            "n_heads": n_heads, "density": 0.0012, "n_tokens": 1016000, "max_act": max_act, "mean_act": 1.2,
            "head_attribution": attr, "head_fve": fve,
            "logit_effect": {"convention": "W_U · diag(g_final) · W_O d_i (norm scales ignored)", "top": top,
                             "bottom": bottom},
            "histogram": {"edges": edges, "counts": counts, "log_x": True},
            "top_examples": top_examples, "quantile_groups": groups,
            "links": {"index": "../../index.html", "heads": [[f"H{h}", f"../../heads/L15H{h}.html"] for h in range(n_heads)]}}


def make_head_page(head: int = 3, n_heads: int = 9, k: int = 12, seed: int = 1) -> dict:
    rng = random.Random(seed)
    feats = []
    for i in range(k):
        ma = rng.uniform(1, 9)
        feats.append({"feature": rng.randrange(4608), "score": 0.95 - 0.06 * i,
                      "density": 10 ** rng.uniform(-5, -1), "max_act": ma,
                      "head_fve": rng.uniform(-0.1, 1.0) if i % 4 else None,
                      "top_example": make_example(rng, n_heads, ma) if i != 5 else None,
                      "dashboard": f"../features/L15/f{i}.html"})
    return {"model": "smollm2-135m", "hook": "blocks.15.attn.hook_z", "layer": 15, "head": head, "n_heads": n_heads,
            "k": k, "n_tokens": 1016000, "dead_threshold": 1e-5, "features": feats,
            "links": {"index": "../index.html", "prev": "L15H2.html", "next": "L15H4.html"}}


def make_index(n_heads: int = 9) -> dict:
    rng = random.Random(2)
    layers = []
    for L in (0, 15):
        heads = [{"head": h, "page": f"heads/L{L}H{h}.html",
                  "top": [{"feature": rng.randrange(4608), "score": rng.uniform(0.3, 1), "density": 10 ** rng.uniform(-5, -1),
                           "summary": rng.choice(["… went to <sleep>", " the & cat\n sat", "capital of ⟨Paris⟩"])}
                          for _ in range(3)]} for h in range(n_heads)]
        layers.append({"layer": L, "hook": f"blocks.{L}.attn.hook_z", "sae": f"runs/sae_L{L}", "n_live": 4400,
                       "d_sae": 4608, "heads": heads})
    return {"model": "smollm2-135m", "title": "SmolLM2-135M attention SAEs", "n_tokens": 1016000, "layers": layers,
            "dashboards": [[f"L15 #{i}", f"features/L15/f{i}.html"] for i in range(5)]}


# ----------------------------------------------------------------------------------------------
# static checks
# ----------------------------------------------------------------------------------------------

def test_format_numbers():
    assert H.fmt_num(7.3) == "7.30"
    assert H.fmt_num(0.0012345) == "0.00123"
    assert H.fmt_num(1234.5) == "1,230"
    assert H.fmt_num(9.996) == "10.0"
    assert H.fmt_num(-0.41) == "-0.410"
    assert H.fmt_num(3e-7) == "3.00e-7" and H.fmt_num(0.0003) == "3.00e-4"
    assert H.fmt_num(0) == "0" and H.fmt_num(None) == "—"
    assert H.fmt_pct(0.0012) == "0.120%"
    assert H.fmt_density(0.0012) == "0.120% · 1 in 833"
    assert H.fmt_count(1016000) == "1.02M" and H.fmt_count(950) == "950"
    assert H.show_token("\n\n") == "↵↵" and H.show_token(" the") == " the" and H.show_token("") == "∅"
    assert H.fmt_num("<b>") == "&lt;b&gt;" and H.fmt_pct("<b>") == "&lt;b&gt;"  # not a number: shown, escaped once


def test_dashboard_structure_and_escaping():
    d = make_dashboard()
    out = H.render_dashboard(d)
    assert out.startswith("<!DOCTYPE html>") and out.rstrip().endswith("</html>")
    # no raw tags from tokens: the page itself has no script at all
    assert "<script" not in out and "&lt;script&gt;" in out
    assert "</div>" in out and "&lt;/div&gt;" in out
    assert "&amp;amp;" in out  # the token "&amp;" shown literally
    assert "↵" in out
    assert out.count('<div class="ex">') == 20 + 30
    top = out.split('id="top-examples"')[1].split('id="quantiles"')[0]
    assert top.count('<div class="ex">') == 20
    assert out.count('<details class="q"') == 10
    assert len(re.findall(r'<rect class="bar"[^>]*><title>H\d+ weight-based', out)) == 9
    assert len(re.findall(r'<rect class="bar"[^>]*><title>H\d+ fraction of variance', out)) == 9
    for h in range(9):
        assert f">H{h}</text>" in out
    assert "log scale" in out
    assert "W_U · diag(g_final) · W_O d_i (norm scales ignored)" in out
    examples = out.split('<div class="examples"')[1]
    assert len(re.findall(r'class="t[^"]*\bmax\b', examples)) == 50
    assert 'class="rk">1</sup>' in out
    # without fve and links, still renders
    d2 = make_dashboard(with_fve=False)
    d2.pop("links")
    out2 = H.render_dashboard(d2)
    assert "fraction of variance" not in out2 and "<nav" not in out2 and "rect class=\"bar\"" in out2


def test_head_page_index_and_sheet_escape():
    hp = H.render_head_page(make_head_page())
    assert "<script" not in hp and hp.count("<tr>") == 12 + 1
    ix = H.render_index(make_index())
    assert "<sleep>" not in ix and "&lt;sleep&gt;" in ix and 'href="heads/L15H8.html"' in ix
    sheet = {"title": "Ratings <test> & co", "sae": "runs/</script><b>x", "seed": 3, "n": 2,
             "features": [{"feature": 5, "dashboard": "f/5.html"}, {"feature": 9, "dashboard": "f/9.html"}],
             "ratings_file": "ratings.json"}
    rs = H.render_rating_sheet(sheet)
    assert rs.count("</script>") == 2  # the data block and the code block, none from the SAE name
    assert "Ratings &lt;test&gt; &amp; co" in rs



PAYLOAD = '"><img src=x onerror=alert(1)><script>alert(1)</script>{{ 7*7 }}'


class _Elements(HTMLParser):
    """Every element's tag and attribute names, and the text of <script> blocks."""

    def __init__(self, html: str):
        super().__init__()
        self.tags, self.attrs, self.scripts = [], set(), []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs |= {name for name, _ in attrs}

    def handle_data(self, data):
        if self.lasttag == "script":
            self.scripts.append(data)


def test_no_text_field_can_inject_html():
    """Every string a page shows (from a tokenizer, a report or a ratings file) is escaped: no element or
    attribute from the payload, and template syntax in it is shown, not run."""
    d = make_dashboard()
    d.update(model=PAYLOAD, hook=PAYLOAD, feature=PAYLOAD, layer=PAYLOAD,
             links={"index": PAYLOAD, "heads": [["H0", PAYLOAD]]})
    d["logit_effect"].update(convention=PAYLOAD, top=[[PAYLOAD, 0.5]])
    d["quantile_groups"][0]["label"] = PAYLOAD
    ex = d["top_examples"][0]
    ex.update(window=PAYLOAD, act=PAYLOAD)
    ex["tokens"][ex["pos"]] = PAYLOAD
    hp = make_head_page()
    hp.update(model=PAYLOAD, hook=PAYLOAD, layer=PAYLOAD, head=PAYLOAD, n_heads=PAYLOAD,
              links={"index": PAYLOAD, "prev": PAYLOAD, "next": PAYLOAD})
    hp["features"][0].update(feature=PAYLOAD, dashboard=PAYLOAD)
    hp["features"][0]["top_example"]["tokens"][hp["features"][0]["top_example"]["pos"]] = PAYLOAD
    ix = make_index()
    ix.update(title=PAYLOAD, model=PAYLOAD, dashboards=[[PAYLOAD, PAYLOAD]])
    ix["layers"][0].update(layer=PAYLOAD, hook=PAYLOAD, sae=PAYLOAD, n_live=PAYLOAD)
    ix["layers"][0]["heads"][0].update(page=PAYLOAD)
    ix["layers"][0]["heads"][0]["top"][0].update(feature=PAYLOAD, summary=PAYLOAD)
    ix["layers"][1]["heads"][0].update(head=PAYLOAD, page=PAYLOAD)
    sheet = {"title": PAYLOAD, "sae": PAYLOAD, "layer": PAYLOAD, "seed": PAYLOAD, "ratings_file": PAYLOAD,
             "features": [{"feature": PAYLOAD, "dashboard": PAYLOAD}]}
    pages = [H.render_dashboard(d), H.render_head_page(hp), H.render_index(ix), H.render_rating_sheet(sheet)]
    for out in pages:
        el = _Elements(out)
        assert "img" not in el.tags and not any(a.startswith("on") for a in el.attrs)
        assert "{{ 7*7 }}" in out
    assert [_Elements(out).tags.count("script") for out in pages] == [0, 0, 0, 2]
    data = json.loads(_Elements(pages[-1]).scripts[0])  # the rating app reads the values back unchanged
    assert data["title"] == data["sae"] == data["seed"] == data["features"][0]["dashboard"] == PAYLOAD


def test_pages_inline_their_css_and_js():
    """Each page is one file: the stylesheet and the rating app (package data) are inlined, nothing is linked."""
    static = files("attnsae.viz.html") / "static"
    css, sheet_css, js = ((static / name).read_text(encoding="utf-8") for name in ("page.css", "rating.css", "rating.js"))
    pages = [H.render_dashboard(make_dashboard()), H.render_head_page(make_head_page()), H.render_index(make_index()),
             H.render_rating_sheet({"features": [{"feature": 1, "dashboard": "f1.html"}]})]
    for out in pages:
        assert css in out and "<link" not in out and "http:" not in out and "https:" not in out
        assert " src=" not in out  # the rating sheet's frame gets its src from the script
    assert sheet_css in pages[-1] and js in pages[-1]
    assert all(sheet_css not in out for out in pages[:-1])

# ----------------------------------------------------------------------------------------------
# headless browser
# ----------------------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _playwright():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (scripts/setup.sh installs Debian chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("python playwright module not installed (pip install playwright; test extras)")
    return sync_playwright


def test_pages_in_headless_chromium(tmp_path):
    sync_playwright = _playwright()
    shots = Path(os.environ.get("ATTNSAE_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)

    site = tmp_path / "site"
    feats = [101, 202, 303, 404]
    for i, f in enumerate(feats):
        H.write_html(site / "features" / f"f{f}.html", H.render_dashboard(make_dashboard(feature=f, seed=i)))
    H.write_html(site / "heads" / "L15H3.html", H.render_head_page(make_head_page()))
    H.write_html(site / "index.html", H.render_index(make_index()))
    ratings = site / "ratings.json"
    interp.save_ratings(ratings, interp.new_ratings("runs/sae_L15", 15, 0, [(f, f"features/f{f}.html") for f in feats]))
    sheet = {"title": "Layer 15 interpretability", "sae": "runs/sae_L15", "layer": 15, "seed": 0, "n": len(feats),
             "features": [{"feature": f, "dashboard": f"features/f{f}.html"} for f in feats],
             "ratings_file": "ratings.json"}
    H.write_html(site / "rate.html", H.render_rating_sheet(sheet))

    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        ctx = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page = ctx.new_page()
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))

        # dashboard
        page.goto((site / "features" / "f101.html").as_uri())
        assert page.locator("#top-examples .ex").count() == 20
        assert page.locator("details.q").count() == 10
        assert page.locator("details.q .ex").count() == 30
        bars = page.locator("rect.bar")
        assert bars.count() == 18
        widths = [bars.nth(i).bounding_box()["width"] for i in range(bars.count())]
        heights = [bars.nth(i).bounding_box()["height"] for i in range(bars.count())]
        assert min(widths) > 3 and min(heights) > 0
        assert page.locator(".examples .t.max, details.q .t.max").count() == 50
        assert page.locator(".examples .t.max").first.is_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        # the "<script>" token is text, not an element
        assert page.evaluate("document.scripts.length") == 0
        assert page.locator(".t", has_text="<script>").count() >= 1
        page.screenshot(path=str(shots / "dashboard.png"), full_page=True)

        # head page and index
        page.goto((site / "heads" / "L15H3.html").as_uri())
        assert page.locator("table.list tbody tr").count() == 12
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        page.screenshot(path=str(shots / "head_page.png"), full_page=True)
        page.goto((site / "index.html").as_uri())
        assert page.locator("table.matrix tbody tr").count() == 2
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        page.screenshot(path=str(shots / "index.png"), full_page=True)

        # rating sheet: click, count, persist, export, merge
        page.goto((site / "rate.html").as_uri())
        count = page.locator("#count")
        assert count.inner_text().startswith("Rated 0 of 4")
        page.locator(".item").nth(0).locator("button[data-v=yes]").click()
        assert count.inner_text() == "Rated 1 of 4 · interpretable 1 (100.0%)"
        page.locator(".item").nth(1).locator("button[data-v=no]").click()
        page.locator(".item").nth(1).locator("input.note").fill("fires on <everything> & more")
        assert count.inner_text() == "Rated 2 of 4 · interpretable 1 (50.0%)"
        page.keyboard.press("Escape")
        page.locator(".item").nth(2).locator(".hd").click()
        page.keyboard.press("y")  # keyboard shortcut rates the selected feature
        assert count.inner_text() == "Rated 3 of 4 · interpretable 2 (66.7%)"
        assert page.locator(".item.cur").get_attribute("data-feature") == "404"  # moved to the next unrated
        assert page.frame_locator("#frame").locator("#top-examples .ex").count() == 20
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        page.screenshot(path=str(shots / "rating_sheet.png"), full_page=True)
        page.reload()  # localStorage keeps the choices
        assert count.inner_text() == "Rated 3 of 4 · interpretable 2 (66.7%)"
        assert page.locator(".item").nth(1).locator("input.note").input_value() == "fires on <everything> & more"
        with page.expect_download() as dl:
            page.locator("#export").click()
        download = dl.value
        assert download.suggested_filename == "ratings.json"
        exported = tmp_path / "exported.json"
        download.save_as(str(exported))
        browser.close()

    assert errors == []
    r = interp.merge_export(ratings, exported)
    assert [f["verdict"] for f in r["features"]] == [True, False, True, None]
    assert r["features"][1]["note"] == "fires on <everything> & more"
    assert interp.score(interp.load_ratings(ratings))["n_interpretable"] == 2


def test_minimal_and_degenerate_inputs_render():
    """Dead features, missing optional parts and odd numbers render without errors."""
    dead = {"model": "m", "hook": "blocks.0.attn.hook_z", "layer": 0, "feature": 7, "d_sae": 64, "n_heads": 1,
            "density": 0.0, "n_tokens": 0, "max_act": 0.0, "mean_act": None, "head_attribution": [1.0],
            "head_fve": None, "logit_effect": {"convention": "c", "top": [], "bottom": []},
            "histogram": {"edges": [0.0, 1.0], "counts": [0], "log_x": True}, "top_examples": [],
            "quantile_groups": []}
    out = H.render_dashboard(dead)
    assert "Feature 7" in out and "no activations recorded" in out and "never" not in out.split("<h1>")[0]
    out = H.render_dashboard({"feature": 1, "top_examples": [{"pos": 0, "act": float("nan"), "tokens": ["x"],
                                                             "acts": [float("inf")]}]})
    assert "Feature 1" in out
    assert "<tr>" not in H.render_head_page({"layer": 0, "head": 0, "features": []}).split("<tbody>")[-1]
    assert "<h1>" in H.render_index({"layers": []})
    assert "Rated 0 of 0" in H.render_rating_sheet({"features": []})


def test_write_html(tmp_path):
    p = H.write_html(tmp_path / "a" / "b.html", "<p>é</p>")
    assert p.read_bytes() == "<p>é</p>".encode()
