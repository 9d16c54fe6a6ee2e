"""The query/key SAE study of chosen heads in one command (the seed's study, on any model).

    out/sae/<spec>/sae             a query SAE and a key SAE per head, all trained from one stream (resumable)
    out/L{l}H{h}/fidelity.json     each SAE spliced into its own head: CE recovered (the seed's recovered loss), ΔCE, KL
    out/L{l}H{h}/pattern_fidelity  pattern KL from reconstructed q, k, both; induction / previous-token scores from them
    out/L{l}H{h}/{q,k}/positional  positions and tokens of each feature's top activations; the seed's positional plot
    out/L{l}H{h}/{q,k}/features/   dashboards of the features the study points at
    out/L{l}H{h}/qk_matrix         query x key feature scores by modal position, score against offset, token partners
    out/L{l}H{h}/prompt_pattern    real vs reconstructed pattern on a prompt, and the features that move one score
    out/L{l}H{h}/intervention      an "I follow [X]" key feature removed: induction on X against the other tokens
    out/L{l}H{h}/objective         SAEs trained with a pattern-KL term against MSE-only ones at equal L0
    out/index.html                 all of it
A stage whose output exists is skipped, so a killed study resumes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import StreamedActivations, WindowSpec, load_windows
from ..data.harvest import collect, hook_width
from ..evals import fidelity_many
from ..experiments.qk.heads import QKHead, check_pair, qk_head
from ..experiments.qk.intervene import intervene
from ..experiments.qk.matrix import qk_matrix
from ..experiments.qk.objective import qk_data, train_pair
from ..experiments.qk.pattern import pattern_fidelity, prompt_pattern
from ..experiments.qk.positional import load_tops, positional, save_tops, top_activations
from ..lock import hold
from ..models import DEFAULT_MODEL, load_model
from ..results import write
from ..sae import TrainConfig, load_sae
from ..sae.many import train_saes
from ..sae.trainer import sae_config_for
from ..viz.html import write_html
from ..viz.html.pages import render_qk_feature, render_qk_study

PROMPT = "When Mary and John went to the store, John gave a drink to Mary"


def qk_train_config() -> TrainConfig:
    """BatchTopK at 16x (1,024 latents on a 64-wide head), 8 latents per input on average, 1,200 steps of 1,024."""
    return TrainConfig(recipe="batchtopk", k=8, expansion=16, batch_size=1024, steps=1200, lr=1e-3, lr_warmup=100,
                       betas=(0.9, 0.999), checkpoint_every=200)


@dataclass
class QKStudyConfig:
    heads: list[str]  # query heads, LAYER.HEAD
    out: str = "runs/qk"
    model: str = DEFAULT_MODEL
    post_rotary: bool = False  # SAEs on hook_rot_q / hook_rot_k instead of hook_q / hook_k
    windows: WindowSpec = field(default_factory=WindowSpec)
    train: TrainConfig = field(default_factory=qk_train_config)
    eval_windows: int = 32  # held-out windows for CE / KL and pattern KL
    top_windows: int = 4000  # training windows scanned for each feature's top activations (4,000 x 127 = 508k tokens)
    n_top: int = 2000  # the seed: top 2,000 of 500k tokens
    prompt: str = PROMPT
    x_token: str | None = None  # the intervention's token (the seed's " D"); None: the clearest "I follow [X]" feature's X
    scale: float = 0.0  # what the "I follow [X]" key feature is scaled by (0: removed)
    pattern_coeff: float = 1.0  # weight of the pattern KL in the objective comparison (0: skip it)
    objective_steps: int = 600
    dashboards: int = 24  # features per SAE with a dashboard (besides those the results point at)
    device: str = "auto"
    seed: int = 0


def _done(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def run_qk_study(cfg: QKStudyConfig, progress: bool = True) -> Path:
    """Train, evaluate and report; the inputs are checked before anything is written."""
    model = load_model(cfg.model, dtype="bfloat16", device=cfg.device)
    heads = [qk_head(model.cfg, h, cfg.post_rotary) for h in cfg.heads]
    if cfg.x_token is not None and len(n := model.tokenizer.encode(cfg.x_token, add_special_tokens=False)) != 1:
        raise ValueError(f"--x-token {cfg.x_token!r} is {len(n)} tokens for this tokenizer; give one token")
    out = Path(cfg.out)
    with hold(out, "qk-study"):
        return _run(cfg, out, model, heads, progress)


def _run(cfg: QKStudyConfig, out: Path, model, heads: list[QKHead], progress: bool) -> Path:
    train_w, held = load_windows(model, cfg.windows)
    specs = sorted({s for h in heads for s in (h.q_spec, h.k_spec)})
    source = StreamedActivations(model, train_w, specs)
    meta = source.meta(cfg.windows.corpus)
    sae_cfgs = {s: sae_config_for(cfg.train, hook_width(model, s), s, meta) for s in specs}
    dirs = train_saes(sae_cfgs, cfg.train, {s: out / "sae" / s for s in specs}, source, progress=progress,
                      device=cfg.device)
    saes = {s: load_sae(d) for s, d in dirs.items()}
    del source

    tops_path = out / "top_activations.safetensors"
    windows = train_w[: cfg.top_windows]
    if tops_path.exists():
        tops = load_tops(tops_path)
    else:
        tops = dict(zip(specs, top_activations(model, [saes[s] for s in specs], windows, cfg.n_top, progress=progress)))
        save_tops(tops_path, tops)
    decode = lambda t: model.tokenizer.decode([t])  # noqa: E731

    model = load_model(cfg.model, dtype="float32", device=cfg.device)  # the evaluations in fp32
    summaries = []
    for qk in heads:
        q_sae, k_sae = saes[qk.q_spec], saes[qk.k_spec]
        check_pair(model, q_sae, k_sae, cfg.post_rotary)
        summaries.append(_study_head(model, qk, q_sae, k_sae, tops, windows, train_w, held, decode, cfg,
                                     out / f"L{qk.layer}H{qk.head}", progress))
    study = {"model": model.cfg.name, "config": _cfg_dict(cfg), "heads": summaries}
    (out / "study.json").write_text(json.dumps(study, indent=1))
    write_html(out / "index.html", render_qk_study(study))
    return out / "index.html"


def _cfg_dict(cfg: QKStudyConfig) -> dict:
    d = asdict(cfg)
    d["train"]["betas"] = list(d["train"]["betas"])
    return d


def _study_head(model, qk: QKHead, q_sae, k_sae, tops, windows, train_w, held, decode, cfg, out: Path,
                progress: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    summary = {"head": qk.name, "layer": qk.layer, "query_head": qk.head, "kv_head": qk.kv_head, "served": list(qk.served),
               "side": qk.side, "dir": out.name, "q_spec": qk.q_spec, "k_spec": qk.k_spec}
    eval_w = held[: cfg.eval_windows]
    fid = _done(out / "fidelity.json")
    if fid is None:
        fq, fk = fidelity_many(model, [q_sae, k_sae], eval_w, progress=progress)
        fid = {"q": fq.to_dict(), "k": fk.to_dict()}
        (out / "fidelity.json").write_text(json.dumps(fid, indent=1))
    summary["fidelity"] = fid
    pf = _done(out / "pattern_fidelity.json")
    if pf is None:
        r = pattern_fidelity(model, qk, q_sae, k_sae, eval_w, seed=cfg.seed)
        write(r, out)
        pf = r.to_json()
    summary["pattern"] = pf

    profs = {}
    for side, sae in (("q", q_sae), ("k", k_sae)):
        top = tops[str(sae.cfg.hook_spec)]
        p = _done(out / side / "positional.json")
        if p is None:
            r = positional(sae, top, windows, decode, cfg.n_top)
            write(r, out / side)
            p = r.to_json()
        profs[side] = p
        summary[f"positional_{side}"] = {"shares": p["shares"], "n_features": p["n_features"],
                                         "l0": float(top.count.sum()) / max(top.n_tokens, 1)}
    m = _done(out / "qk_matrix.json")
    if m is None:
        r = qk_matrix(model, qk, q_sae, k_sae, profs["q"]["features"], profs["k"]["features"], cfg.windows.ctx)
        write(r, out)
        m = r.to_json()
    summary["matrix"] = {k: m[k] for k in ("best_offset", "token_match")} | {"n_partners": len(m["partners"])}

    pp = _done(out / "prompt_pattern.json")
    if pp is None:
        ids = [model.cfg.bos_token_id or 0] + model.tokenizer.encode(cfg.prompt, add_special_tokens=False)
        strs = [decode(t) for t in ids]
        r = prompt_pattern(model, qk, q_sae, k_sae, torch.tensor(ids), strs)
        write(r, out)
        pp = r.to_json()
    summary["prompt"] = {k: pp[k] for k in ("kl", "query_pos", "key_pos", "score")}

    iv = _done(out / "intervention.json")
    if iv is None:
        x_str, candidates = _follow_target(profs["k"]["features"], cfg.x_token, model.tokenizer)
        x, = model.tokenizer.encode(x_str, add_special_tokens=False)
        r = intervene(model, qk, k_sae, x, scale=cfg.scale, seed=cfg.seed, candidates=candidates)
        write(r, out)
        iv = r.to_json()
    summary["intervention"] = {k: iv[k] for k in ("feature", "token", "scale", "loss_x", "loss_other", "attn_x", "attn_other")}

    if cfg.pattern_coeff > 0:
        ob = _done(out / "objective.json")
        if ob is None:
            ob = _objective(model, qk, train_w, held, cfg, progress)
            (out / "objective.json").write_text(json.dumps(ob, indent=1))
        summary["objective"] = ob

    pointed = {"q": {r["feature"] for r in pp["query_features"]} | {c["q"] for c in m["curves"]}
               | {r["q"] for r in m["partners"]},
               "k": {r["feature"] for r in pp["key_features"]} | {c["k"] for c in m["curves"]}
               | {p["k"] for r in m["partners"] for p in r["partners"]} | {iv["feature"]}}
    for side, sae in (("q", q_sae), ("k", k_sae)):
        _dashboards(model, qk, side, sae, tops[str(sae.cfg.hook_spec)], profs[side], pointed[side],
                    windows, decode, cfg, out / side / "features")
    summary["dashboards"] = {side: sorted(int(p.stem[1:]) for p in (out / side / "features").glob("F*.html"))
                             for side in ("q", "k")}
    summary["figures"] = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))  # a plot with nothing to show is absent
    return summary


def _follow_target(k_profiles: list[dict], x_token: str | None, tokenizer) -> tuple[str, list[int]]:
    """(X, the key features whose top activations follow X at least 20% of the time). X is `x_token`, or by default
    the token the clearest "I follow [X]" feature follows (the most of its top activations; one token, not BOS)."""
    bos = tokenizer.decode([tokenizer.bos_token_id]) if tokenizer.bos_token_id is not None else None

    def usable(t: str) -> bool:
        return t.strip() != "" and t != bos and len(tokenizer.encode(t, add_special_tokens=False)) == 1

    if x_token is None:  # an "I follow" feature if there is one, else the feature most tied to one preceding token
        follows = [p for p in k_profiles if usable(p["follow"])]
        if not follows:
            raise ValueError("no key feature follows a usable token often enough to test: give --x-token")
        x_token = max(follows, key=lambda p: (p["kind"] == "I follow", p["follow_share"] * p["n"]))["follow"]
    return x_token, [p["feature"] for p in k_profiles if p["follow"] == x_token and p["follow_share"] >= 0.2]


@torch.no_grad()
def _objective(model, qk: QKHead, train_w, held, cfg: QKStudyConfig, progress: bool) -> dict:
    """MSE-only and MSE + pattern-KL TopK pairs from the same windows and steps: pattern KL and recovered loss."""
    n_train = 512
    data = qk_data(model, qk, train_w[:n_train])
    rows = []
    for coeff in (0.0, cfg.pattern_coeff):
        with torch.enable_grad():
            q_sae, k_sae, hist = train_pair(model, qk, data, k=cfg.train.k, expansion=cfg.train.expansion,
                                            pattern_coeff=coeff, steps=cfg.objective_steps, seed=cfg.seed, progress=progress)
        pf = pattern_fidelity(model, qk, q_sae, k_sae, held[: cfg.eval_windows], seed=cfg.seed)
        fq, fk = fidelity_many(model, [q_sae, k_sae], held[: cfg.eval_windows], progress=False)
        rows.append({"pattern_coeff": coeff, "l0": cfg.train.k, "pattern_kl": pf.kl, "head_scores": pf.head_scores,
                     "ce_recovered_q": fq.ce_recovered, "ce_recovered_k": fk.ce_recovered,
                     "delta_ce_q": fq.delta_ce_sae, "delta_ce_k": fk.delta_ce_sae, "history": hist})
    return {"train_windows": n_train, "steps": cfg.objective_steps, "runs": rows}


@torch.no_grad()
def _dashboards(model, qk, side, sae, top, prof: dict, pointed: set, windows, decode, cfg, out: Path,
                n_examples: int = 8, around: int = 24) -> None:
    """A page per feature: its top examples (position shown), the "I am" / "I follow" token lists, its positions."""
    feats = {p["feature"]: p for p in prof["features"]}
    by_count = sorted(feats, key=lambda f: -feats[f]["n"])[: cfg.dashboards]
    chosen = [f for f in sorted((set(by_count) | pointed) & set(feats)) if not (out / f"F{f}.html").exists()]
    pick = {}  # feature -> [(window, pos, act)] from distinct windows
    for f in chosen:
        seen, rows = set(), []
        for a, w, p in zip(top.act[f].tolist(), top.window[f].tolist(), top.pos[f].tolist()):
            if a > 0 and w not in seen:
                seen.add(w)
                rows.append((w, p, a))
            if len(rows) == n_examples:
                break
        pick[f] = rows
    wins = sorted({w for rows in pick.values() for w, _, _ in rows})
    spec = str(sae.cfg.hook_spec)
    acts = {}
    for i in range(0, len(wins), 32):
        ids = wins[i:i + 32]
        x = collect(model, torch.from_numpy(windows[ids].astype(np.int64)), [spec])[spec]
        f = sae.encode(x.float()).view(len(ids), windows.shape[1], -1)
        acts.update({w: f[j] for j, w in enumerate(ids)})
    for f in chosen:
        p = feats[f]
        examples = []
        for w, pos, a in pick[f]:
            lo, hi = max(0, pos - around), min(windows.shape[1], pos + 4)
            examples.append({"tokens": [decode(t) for t in windows[w, lo:hi].tolist()],
                             "acts": acts[w][lo:hi, f].tolist(), "pos": pos - lo, "abs_pos": pos, "act": a})
        k = p["n"]
        pos = top.pos[f, :k].numpy()
        win = top.window[f, :k].numpy()
        am = _token_counts(windows[win, pos], decode)
        follow = _token_counts(windows[win, pos - 1], decode)
        hist = np.bincount(pos, minlength=windows.shape[1]).tolist()
        d = {"head": qk.name, "side": "query" if side == "q" else "key", "spec": spec, "feature": f, "profile": p,
             "examples": examples, "am": am, "follow": follow, "hist": hist, "n_top": cfg.n_top, "model": model.cfg.name,
             "served": list(qk.served)}
        write_html(out / f"F{f}.html", render_qk_feature(d))


def _token_counts(ids: np.ndarray, decode, n: int = 12) -> list:
    vals, counts = np.unique(ids, return_counts=True)
    order = np.argsort(-counts)[:n]
    return [[decode(int(vals[i])), int(counts[i])] for i in order]

