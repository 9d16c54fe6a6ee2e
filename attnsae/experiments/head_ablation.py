"""Zero-ablate each head of a layer and record the mean change in loss on templated tasks (paper 4.1.1, fig. 3).

A task is a template whose text before "|" is the prompt and after it the answer; the loss is
the model's cross-entropy on the answer tokens only. Slots are written {name} and filled from
lists, or from a generator "random:<alphabet>:<length>" (e.g. URL ids). A slot used twice takes
the same value both times, which is what makes copying tasks.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..models.hooks import act_name, head_name
from ..plotting import pyplot, save
from ..results import Result

NOUNS = ["apples", "books", "cars", "dogs", "boxes", "chairs", "coins", "birds", "cups", "pens", "shirts", "trees"]
FILLERS = ["and then", "but also", "as well as", "next to", "along with", "and later"]
BASE64 = string.ascii_letters + string.digits + "-_"

TASKS = {
    "digits": {"template": "{noun} {digit}, {filler} {noun}| {digit}",
               "slots": {"noun": NOUNS, "digit": list("0123456789"), "filler": FILLERS}},
    "url": {"template": "Watch it at https://www.youtube.com/watch?v={id} now. Again: https://www.youtube.com/watch?v=|{id}",
            "slots": {"id": "random:base64:11"}},
}


def tasks_from(names: list[str] | None, templates=()) -> dict[str, dict]:
    """{name: task}: the built-in TASKS named (default: all of them, unless template files are given, then
    just those) and each JSON template file ({"name", "template", "slots"}; the name defaults to the file's)."""
    names = names if names is not None else ([] if templates else list(TASKS))
    tasks = {t: TASKS[t] for t in names}
    for path in templates:
        spec = json.loads(Path(path).read_text())
        tasks[spec.get("name", Path(path).stem)] = spec
    return tasks


def fill(task: dict, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n (prompt, answer) strings from a task."""
    rng = random.Random(seed)
    if task["template"].count("|") != 1:
        raise ValueError(f"a task template needs exactly one '|' between prompt and answer: {task['template']!r}")
    out = []
    for _ in range(n):
        values = {}
        for name, src in task["slots"].items():
            if isinstance(src, str) and src.startswith("random:"):
                _, alphabet, length = src.split(":")
                chars = BASE64 if alphabet == "base64" else alphabet
                values[name] = "".join(rng.choice(chars) for _ in range(int(length)))
            else:
                values[name] = rng.choice(list(src))
        try:
            prompt, answer = task["template"].format(**values).split("|")
        except KeyError as e:
            raise ValueError(f"template slot {e.args[0]!r} has no values in 'slots'") from e
        out.append((prompt, answer))
    return out


def encode(model, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n, L] with BOS, answer mask [n, L] marking the positions whose next token is an answer token).
    Right-padded; the model is causal so padding never changes earlier positions."""
    tok, bos = model.tokenizer, model.cfg.bos_token_id or 0
    rows, masks = [], []
    for prompt, answer in pairs:
        p = tok.encode(prompt, add_special_tokens=False)
        a = tok.encode(prompt + answer, add_special_tokens=False)[len(p):]
        if not a:
            raise ValueError(f"empty answer for {prompt!r}")
        ids = [bos] + p + a
        m = [False] * len(ids)
        for i in range(len(p) + 1, len(ids)):
            m[i - 1] = True  # position i-1 predicts token i
        rows.append(ids)
        masks.append(m)
    L = max(map(len, rows))
    tokens = torch.tensor([r + [bos] * (L - len(r)) for r in rows])
    mask = torch.tensor([m + [False] * (L - len(m)) for m in masks])
    return tokens, mask


@torch.no_grad()
def answer_loss(model, tokens, mask, hooks=()) -> float:
    logits = model.run_with_hooks(tokens, list(hooks))
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), tokens[:, 1:], reduction="none")
    return float(ce[mask[:, :-1]].mean())


def zero_head(layer: int, head: int):
    def fn(z, name):
        z = z.clone()
        z[:, :, head] = 0
        return z
    return (act_name("z", layer), fn)


@torch.no_grad()
def ablate_heads(model, layer: int, tasks: dict[str, dict], n: int = 64, seed: int = 0) -> dict:
    """{task: {clean_loss, delta_loss [n_heads], examples}}: mean answer-loss change from zero-ablating each head."""
    out = {}
    for name, task in tasks.items():
        pairs = fill(task, n, seed)
        tokens, mask = encode(model, pairs)
        clean = answer_loss(model, tokens, mask)
        deltas = [answer_loss(model, tokens, mask, [zero_head(layer, h)]) - clean for h in range(model.cfg.n_heads)]
        out[name] = {"clean_loss": clean, "delta_loss": deltas, "n": n, "example": "|".join(pairs[0])}
    return out


@dataclass
class HeadAblation(Result):
    """head_ablation.json: per task, the clean answer loss and the change from zero-ablating each head of `layer`."""

    name: ClassVar[str] = "head_ablation"
    model: str
    layer: int
    tasks: dict[str, dict]

    def summary(self) -> str:
        lines = []
        for name, r in self.tasks.items():
            d = r["delta_loss"]
            order = sorted(range(len(d)), key=lambda h: -d[h])[:3]
            lines.append(f"{name}: clean loss {r['clean_loss']:.3f}; largest increases "
                         + ", ".join(f"{head_name(self.layer, h)} +{d[h]:.3f}" for h in order))
        return "\n".join(lines)

    def plot(self, out: Path) -> list[Path]:
        plt = pyplot()
        fig, axes = plt.subplots(1, len(self.tasks), figsize=(4.5 * len(self.tasks), 3.2), squeeze=False)
        for ax, (name, r) in zip(axes[0], self.tasks.items(), strict=True):
            d = np.array(r["delta_loss"])
            ax.bar(range(len(d)), d, color=["#c0392b" if i == d.argmax() else "#3b6ea8" for i in range(len(d))])
            ax.set_xticks(range(len(d)), [head_name(self.layer, h) for h in range(len(d))], fontsize=7)
            ax.set_title(f"{name} (clean loss {r['clean_loss']:.2f})", fontsize=9)
            ax.set_ylabel("Δ loss from zero-ablating head")
        path = out / "head_ablation.png"
        save(fig, path)
        return [path]


def run_head_ablation(model, layer: int, tasks: dict[str, dict], n: int = 64, seed: int = 0) -> HeadAblation:
    """The ablate-heads experiment: ablate_heads on each task, for every head of `layer`."""
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"--layer {layer} out of range: {model.cfg.name} has {model.cfg.n_layers} layers")
    return HeadAblation(model.cfg.name, layer, ablate_heads(model, layer, tasks, n=n, seed=seed))
