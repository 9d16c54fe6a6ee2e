"""The circuit explorer on real SmolLM2 with an attention SAE on every layer: how long one step of recursive DFA
takes on a 64-token prompt, and a load test of concurrent clients against the real server (uvicorn on 127.0.0.1).

SAEs: `--saes DIR` reads DIR/L{l}/sae for every layer (the every-head study's layout, e.g. runs/every_head2);
without it, random TopK SAEs (16x, k 16: the every-head study's shape and L0) stand in, since the time of a step
depends on the shapes and the number of active features, not on what the features mean.

Steps timed in process (median over `--reps` features):
  trace     a new prompt: the float32 forward with every SAE's features (POST /api/prompt, first call)
  feature   DFA of a feature at the last position by head and by source (steps 1-2, POST /api/feature)
  source    one source split into components, upstream attention features (steps 3-5, POST /api/source)
  qk        a head's score to that source split into query x key pairs (POST /api/qk)
Load test: `--clients` threads, each sending `--requests` requests (a cached prompt, a feature, a source, in
turn) over HTTP; every reply must be 200. Reported: p50 / p95 / max latency and requests/s.

    python benchmarks/bench_explorer.py [--saes runs/every_head2] [--clients 50] [--requests 6] [--quick]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

TEXT = ("The committee met on Tuesday to review the budget. When Mary and John went to the store, John gave a drink "
        "to Mary. The report says that the new bridge will open next spring, and the city expects traffic to fall "
        "by a third. Meanwhile the river rose again after a week of rain, and the farmers who live along its banks ")


def random_topk_saes(model, k=16, expansion=16, seed=0):
    from attnsae.sae import SAE, SAEConfig

    c, saes = model.cfg, {}
    for l in range(c.n_layers):
        d = c.n_heads * c.d_head
        sae = SAE(SAEConfig(d_in=d, d_sae=expansion * d, architecture="topk", k=k, model_name=c.name,
                            hook_name=f"blocks.{l}.attn.hook_z"))
        sae.reset_parameters(torch.Generator().manual_seed(seed + l))
        saes[l] = sae
    return saes


def load_saes(root: Path, n_layers: int):
    from attnsae.sae import load_sae

    missing = [l for l in range(n_layers) if not (root / f"L{l}" / "sae").exists()]
    if missing:
        raise SystemExit(f"bench_explorer: no SAE for layers {missing} under {root} (expects {root}/L{{l}}/sae)")
    return {l: load_sae(root / f"L{l}" / "sae") for l in range(n_layers)}


def prompt_of(model, n_tokens: int) -> str:
    ids = model.tokenizer(TEXT)["input_ids"][: n_tokens - 1]  # + BOS = n_tokens
    return model.tokenizer.decode(ids)


def median_time(fn, args_list):
    times = []
    for args in args_list:
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times), max(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--saes", default=None, help="a folder with L{l}/sae for every layer (default: random TopK SAEs)")
    ap.add_argument("--tokens", type=int, default=64, help="prompt length, BOS included")
    ap.add_argument("--reps", type=int, default=5, help="features timed per step")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=6, help="requests per client")
    ap.add_argument("--quick", action="store_true", help="a few layers' SAEs and clients: checks that everything runs")
    a = ap.parse_args(argv)

    import uvicorn

    from attnsae.explorer import Explorer, FeatureIn, PromptIn, QKIn, SourceIn, create_app
    from attnsae.models import load_model

    model = load_model(a.model, dtype="float32", device="cpu")
    saes = load_saes(Path(a.saes), model.cfg.n_layers) if a.saes else random_topk_saes(model)
    if a.quick:
        saes = {l: saes[l] for l in list(saes)[:3]}
        a.clients, a.requests, a.reps = 4, 2, 2
    ex = Explorer(model, saes)
    prompt = prompt_of(model, a.tokens)
    top_layer = max(saes)
    print(f"circuit explorer: {model.cfg.name} float32, attention SAEs on {len(saes)} layers "
          f"({'from ' + a.saes if a.saes else 'random TopK, 16x, k 16'}); prompt of {a.tokens} tokens; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    t = time.perf_counter()
    p = ex.prompt(PromptIn(prompt=prompt, k=a.reps))
    t_trace = time.perf_counter() - t
    n = len(p["tokens"])
    feats = [f for f, _ in p["top"][top_layer][n - 1]][: a.reps]
    fq = [FeatureIn(prompt=prompt, layer=top_layer, feature=f, dest=n - 1, n_sources=5) for f in feats]
    t_feat, max_feat = median_time(lambda q: ex.feature(q), [(q,) for q in fq])
    srcs = [ex.feature(q)["sources"][0]["src"] for q in fq]
    sq = [SourceIn(prompt=prompt, layer=top_layer, feature=f, dest=n - 1, src=s, top=8) for f, s in zip(feats, srcs)]
    t_src, max_src = median_time(lambda q: ex.source(q), [(q,) for q in sq])
    qq = [QKIn(prompt=prompt, layer=top_layer, head=h, dest=n - 1, src=srcs[0]) for h in range(a.reps)]
    t_qk, max_qk = median_time(lambda q: ex.qk(q), [(q,) for q in qq])
    print(f"one RDFA step at layer {top_layer}, median (max) of {len(feats)} features, seconds:")
    print(f"  trace a new prompt (one-off)     {t_trace:7.3f}")
    print(f"  feature: DFA by head and source  {t_feat:7.3f} ({max_feat:.3f})")
    print(f"  source: components + upstream    {t_src:7.3f} ({max_src:.3f})")
    print(f"  qk: a head's query x key pairs   {t_qk:7.3f} ({max_qk:.3f})")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(ex), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    bodies = [("/api/prompt", {"prompt": prompt, "k": 5}),
              ("/api/feature", fq[0].model_dump()), ("/api/source", sq[0].model_dump())]

    def client(i):
        out = []
        for r in range(a.requests):
            path, body = bodies[(i + r) % len(bodies)]
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            t = time.perf_counter()
            try:
                with urllib.request.urlopen(req, timeout=600) as resp:
                    resp.read()
                    status = resp.status
            except urllib.error.HTTPError as e:
                status = e.code
            out.append((time.perf_counter() - t, status))
        return out

    t = time.perf_counter()
    with ThreadPoolExecutor(a.clients) as pool:
        results = [x for res in pool.map(client, range(a.clients)) for x in res]
    wall = time.perf_counter() - t
    server.should_exit = True
    thread.join(10)
    lat = sorted(x for x, _ in results)
    bad = [s for _, s in results if s != 200]
    q = statistics.quantiles(lat, n=20, method="inclusive")
    print(f"load test: {a.clients} concurrent clients x {a.requests} requests (prompt / feature / source in turn) "
          f"over HTTP: {len(results)} requests, {len(bad)} not 200")
    print(f"  latency p50 {statistics.median(lat):.3f} s, p95 {q[18]:.3f} s, max {lat[-1]:.3f} s; "
          f"{len(results) / wall:.1f} requests/s")
    if bad:
        raise SystemExit(f"bench_explorer: {len(bad)} requests failed: statuses {sorted(set(bad))}")


if __name__ == "__main__":
    main()
