"""Indirect object identification (IOI, Wang et al. 2022) for any model: prompts, logit difference,
head roles, and noising at S2 (paper 4.3, fig. 5, table 4).

A prompt names two people and stops where the model should name the indirect object:
    "When Mary and John went to the store, John gave a drink to" -> " Mary"
IO is the name said once (Mary), S the subject said twice (John); S1 and S2 are its two positions.
ABBA prompts put IO first ("Mary and John ... John"), BABA prompts S first ("John and Mary ... John").
END is the last prompt token ("to"), where the model predicts IO. The ABC distribution fills the S2
slot with a third name C (no name repeats): Wang et al.'s reference distribution for mean ablation.

    logit diff = logit(IO) - logit(S) at END

Every name, place, object and the conjunction are single tokens (with their leading space) in the
model's tokenizer, so all prompts of one template, ABBA, BABA or ABC, have identical positions.
Prompts are built token by token from the template's pieces; `encode` checks that this is also
how the tokenizer splits the whole text, and warns where it is not.
"""

from __future__ import annotations

import random
import re
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..attribution.logit_path import head_direct_effect

NAMES = (
    "Mary John Alice Bob Tom James Michael David Sarah Emma Anna Paul Mark Kevin Laura Lisa Daniel Rachel Steven "
    "Jessica Robert William Richard Joseph Thomas Charles Christopher Matthew Anthony Andrew Joshua Brian George Edward "
    "Jason Ryan Jacob Gary Eric Jonathan Stephen Larry Justin Scott Frank Benjamin Gregory Samuel Patrick Jack Dennis "
    "Peter Adam Nathan Henry Carl Arthur Kyle Jesse Sean Alan Harry Victor Elizabeth Jennifer Linda Susan Karen Nancy "
    "Betty Margaret Sandra Ashley Kimberly Donna Michelle Amanda Melissa Deborah Stephanie Rebecca Sharon Cynthia "
    "Kathleen Amy Angela Anne Helen Brenda Nicole Samantha Katherine Christine Emily Catherine Maria Heather Diane Julie "
    "Joyce Victoria Kelly Christina Joan Evelyn Lauren Judith Olivia Martha Cheryl Megan Andrea Hannah Jacqueline "
    "Grace Alex Max Sam Ben Dan Joe Tim Jim Rose Kate Jane Lucy Ruth Amy Eva Claire Ian Neil Leo Oscar Hugo"
).split()
PLACES = ("store garden restaurant school hospital office house station park beach library market church bank museum "
          "hotel cafe farm river airport").split()
OBJECTS = ("ring kiss bone basketball computer necklace drink snack book letter ball gift key cake flower hat "
           "coin bottle box pen").split()

# Slots: {X} {conj} {Y} are the first two names, {Z} the third name slot (S2), {gap} where the noising
# distribution inserts filler between S1 and S2. A space before a word slot belongs to the slot's token.
TEMPLATES = (
    "When {X} {conj} {Y} went to the {place},{gap} {Z} gave a {object} to",
    "After {X} {conj} {Y} went to the {place},{gap} {Z} gave a {object} to",
    "Then, {X} {conj} {Y} went to the {place}.{gap} {Z} gave a {object} to",
    "While {X} {conj} {Y} were working at the {place},{gap} {Z} gave a {object} to",
    "While {X} {conj} {Y} were commuting to the {place},{gap} {Z} gave a {object} to",
    "Friends {X} {conj} {Y} found a {object} at the {place}.{gap} {Z} gave it to",
    "When {X} {conj} {Y} got a {object} at the {place},{gap} {Z} decided to give it to",
    "Then, {X} {conj} {Y} had a long argument.{gap} Afterwards {Z} said to",
)
CONJ = " and"
# "and" replacements of table 4 (each must be one token to keep positions)
AND_REPLACEMENTS = (" alongside", " besides", " plus", " with", ",", " including")
# The "3 perturbations" noising distribution: text before the prompt, text between S1 and S2
# (no " and" in either: which name follows "and" is the property the noising keeps).
PREFIXES = ("It was a nice day.", "The sun was shining brightly.", "Everyone was in a good mood.", "It had rained all morning.")
GAPS = {",": (" after a while,", " later that day,", " after a short rest,", " once they had eaten,"),
        ".": (" It was a warm sunny afternoon.", " The weather was pleasant.", " Nobody was in a hurry.",
              " It had been a long week.")}
ORDERS = ("ABBA", "BABA")
_SLOT = re.compile(r"\{(\w+)\}")
_WORD_SLOTS = ("X", "Y", "Z", "conj", "place", "object")


@dataclass(frozen=True)
class IOIPrompt:
    """One prompt's choices. ABBA: X=IO, Y=S, Z=S. BABA: X=S, Y=IO, Z=S. ABC: X=io, Y=s, Z=c
    (for ABC, io/s only label the first two names; there is no right answer)."""

    template: int
    order: str
    io: str
    s: str
    place: str
    obj: str
    c: str | None = None
    conj: str = CONJ
    prefix: str = ""
    gap: str = ""

    def slots(self) -> dict[str, str]:
        x, y, z = {"ABBA": (self.io, self.s, self.s), "BABA": (self.s, self.io, self.s), "ABC": (self.io, self.s, self.c)}[self.order]
        return {"X": " " + x, "Y": " " + y, "Z": " " + z, "conj": self.conj, "place": " " + self.place,
                "object": " " + self.obj, "gap": self.gap}


@dataclass
class IOIBatch:
    """Encoded prompts. tokens [n, L]: BOS, the prompt, then right padding (BOS ids; the model is
    causal, so padding never changes a real position). Positions are per prompt: io, s1, s2, end
    (the last real token) and conj (the " and" token, or its replacement)."""

    tokens: torch.Tensor
    length: torch.Tensor
    io_id: torch.Tensor
    s_id: torch.Tensor
    io: torch.Tensor
    s1: torch.Tensor
    s2: torch.Tensor
    end: torch.Tensor
    conj: torch.Tensor
    template: torch.Tensor
    order: list[str]
    text: list[str]
    prompts: list[IOIPrompt] = field(repr=False)

    def __len__(self) -> int:
        return len(self.order)

    def mask(self, order: str) -> torch.Tensor:
        return torch.tensor([o == order for o in self.order])

    def select(self, idx) -> "IOIBatch":
        idx = torch.as_tensor(idx)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        L = int(self.length[idx].max())
        t = lambda x: x[idx]  # noqa: E731
        return IOIBatch(self.tokens[idx, :L], t(self.length), t(self.io_id), t(self.s_id), t(self.io), t(self.s1),
                        t(self.s2), t(self.end), t(self.conj), t(self.template), [self.order[i] for i in idx.tolist()],
                        [self.text[i] for i in idx.tolist()], [self.prompts[i] for i in idx.tolist()])


def single_token(tokenizer, text: str) -> int | None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


@dataclass
class IOIVocab:
    """The names, places and objects that are one token each in this tokenizer, and the templates."""

    tokenizer: object
    bos: int
    names: list[str]
    places: list[str]
    objects: list[str]
    templates: tuple[str, ...] = TEMPLATES
    _pieces: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, tokenizer, bos: int, names=NAMES, places=PLACES, objects=OBJECTS, templates=TEMPLATES,
              min_names: int = 4) -> "IOIVocab":
        """Keep the candidates that are single tokens with a leading space; ValueError if too few.
        Four names are the least that work: the noising distribution swaps both names for two others."""
        if tokenizer is None:
            raise ValueError("IOI prompts need the model's tokenizer, and this model has none")
        keep = lambda words: list(dict.fromkeys(w for w in words if single_token(tokenizer, " " + w) is not None))  # noqa: E731
        v = cls(tokenizer, int(bos), keep(names), keep(places), keep(objects), tuple(templates))
        if len(v.names) < min_names:
            raise ValueError(f"only {len(v.names)} of {len(names)} candidate names are single tokens (' Name') in this "
                             f"tokenizer; IOI needs at least {min_names}")
        if not v.places or not v.objects:
            raise ValueError("no candidate place or object is a single token in this tokenizer")
        if single_token(tokenizer, CONJ) is None:
            raise ValueError(f"{CONJ!r} is not a single token in this tokenizer")
        for t in v.templates:
            slots = _SLOT.findall(t)
            if sorted(set(slots) & {"X", "Y", "Z", "conj", "gap"}) != ["X", "Y", "Z", "conj", "gap"] \
                    or slots.index("X") > slots.index("conj") or slots.index("conj") > slots.index("Y") \
                    or slots.index("gap") > slots.index("Z") or not set(slots) <= set(_WORD_SLOTS) | {"gap"}:
                raise ValueError(f"template {t!r} needs {{X}} {{conj}} {{Y}} ... {{gap}} {{Z}} in that order "
                                 f"(and only the slots {_WORD_SLOTS + ('gap',)})")
        if len(v.names) < 20:
            warnings.warn(f"only {len(v.names)} single-token names in this tokenizer; prompts will repeat a lot")
        return v

    def _piece(self, text: str) -> list[int]:
        if text not in self._pieces:
            self._pieces[text] = self.tokenizer.encode(text, add_special_tokens=False) if text else []
        return self._pieces[text]

    def gap_choices(self, template: int) -> tuple[str, ...]:
        t = self.templates[template]
        return GAPS["." if t[t.index("{gap}") - 1] == "." else ","]


def ioi_prompts(vocab: IOIVocab, n: int, seed: int = 0) -> list[IOIPrompt]:
    """n ABBA prompts and the n BABA prompts with the same names, place, object and template, interleaved
    (2n in all); templates in turn."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        io, s = rng.sample(vocab.names, 2)
        place, obj = rng.choice(vocab.places), rng.choice(vocab.objects)
        out += [IOIPrompt(i % len(vocab.templates), order, io, s, place, obj) for order in ORDERS]
    return out


def abc_prompts(vocab: IOIVocab, n: int, seed: int = 1) -> list[IOIPrompt]:
    """n prompts of the ABC distribution: three different names in the X, Y and Z slots; templates in turn."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b, c = rng.sample(vocab.names, 3)
        out.append(IOIPrompt(i % len(vocab.templates), "ABC", a, b, rng.choice(vocab.places), rng.choice(vocab.objects), c=c))
    return out


def three_perturbations(vocab: IOIVocab, prompts: list[IOIPrompt], seed: int = 2) -> list[IOIPrompt]:
    """Noising distribution of paper 4.3, aligned with `prompts`: each name replaced by another random
    name (not one of the prompt's), filler text prepended, filler text inserted between S1 and S2.
    The order (whether the repeated name is the one after "and") is kept."""
    rng = random.Random(seed)
    out = []
    for p in prompts:
        used = {p.io, p.s, p.c}
        k = 3 if p.c is not None else 2
        new = rng.sample([m for m in vocab.names if m not in used], k)
        out.append(replace(p, io=new[0], s=new[1], c=new[2] if p.c is not None else None,
                           prefix=rng.choice(PREFIXES), gap=rng.choice(vocab.gap_choices(p.template))))
    return out


def replace_conj(vocab: IOIVocab, prompts: list[IOIPrompt], word: str) -> list[IOIPrompt] | None:
    """The prompts with " and" replaced by `word`; None (with a warning) if `word` is not one token."""
    if single_token(vocab.tokenizer, word) is None:
        warnings.warn(f"{word!r} is not a single token in this tokenizer; skipping that corruption")
        return None
    return [replace(p, conj=word) for p in prompts]


def encode(vocab: IOIVocab, prompts: list[IOIPrompt]) -> IOIBatch:
    """Token ids and positions for each prompt (see IOIBatch)."""
    rows, meta, texts, mismatched = [], [], [], 0
    for p in prompts:
        values = p.slots()
        template = vocab.templates[p.template]
        ids, pos, text = [vocab.bos], {}, ""
        parts = _SLOT.split(template)  # literal, slot, literal, ..., literal
        for i, chunk in enumerate(parts):
            if i % 2 == 0:  # literal text; the space before a word slot is the slot token's
                before_word = i + 1 < len(parts) and parts[i + 1] != "gap"
                lit = chunk[:-1] if before_word and chunk.endswith(" ") else chunk
                if i == 0 and p.prefix:
                    ids += vocab._piece(p.prefix)
                    text += p.prefix
                    lit = " " + lit if lit else lit
                ids += vocab._piece(lit)
                text += lit
            else:
                value = values[chunk]
                if chunk == "gap":
                    ids += vocab._piece(value)
                else:
                    tok = single_token(vocab.tokenizer, value)
                    if tok is None:
                        raise ValueError(f"{value!r} ({chunk}) is not a single token in this tokenizer")
                    pos[chunk] = len(ids)
                    ids.append(tok)
                text += value
        if vocab.tokenizer.encode(text, add_special_tokens=False) != ids[1:]:
            mismatched += 1
        rows.append(ids)
        texts.append(text)
        io_pos, s1 = (pos["X"], pos["Y"]) if p.order in ("ABBA", "ABC") else (pos["Y"], pos["X"])
        meta.append((single_token(vocab.tokenizer, " " + p.io), single_token(vocab.tokenizer, " " + p.s),
                     io_pos, s1, pos["Z"], len(ids) - 1, pos["conj"], p.template))
    if mismatched:
        warnings.warn(f"{mismatched} of {len(prompts)} prompts tokenize differently as whole strings than piece by piece; "
                      "the piecewise tokens are used")
    L = max(map(len, rows))
    tokens = torch.tensor([r + [vocab.bos] * (L - len(r)) for r in rows])
    m = torch.tensor(meta)
    return IOIBatch(tokens, torch.tensor([len(r) for r in rows]), m[:, 0], m[:, 1], m[:, 2], m[:, 3], m[:, 4], m[:, 5],
                    m[:, 6], m[:, 7], [p.order for p in prompts], texts, list(prompts))


def ioi_vocab(model, **kw) -> IOIVocab:
    return IOIVocab.build(model.tokenizer, model.cfg.bos_token_id or 0, **kw)


# ---- running the model -------------------------------------------------------------------------

@torch.no_grad()
def run_end(model, tokens=None, end=None, hooks=(), cache=(), start: int = 0, resid=None):
    """(logits at each row's `end` position [n, vocab] float32, cache). Computes the final norm and
    unembedding at `end` only, since a big batch's full logits would not fit in memory.

    With `resid` (blocks.{start}.hook_resid_pre of every row) the forward starts at block `start`:
    only hooks at or after that point apply. The blocks, norms and unembedding are the model's own
    (this mirrors Transformer.forward_run after the embedding). If "ln_final.hook_scale" is in
    `cache`, its value at `end` ([n, 1]) is returned there."""
    from ..models.transformer import Run, _norm

    c = model.cfg
    if resid is None:
        if start != 0:
            raise ValueError("start > 0 needs the residual stream at that block (resid=)")
        _, got = model.run_with_cache(tokens, ["blocks.0.hook_resid_pre"], stop_early=True)
        resid = got["blocks.0.hook_resid_pre"]
    want = [n for n in cache if n != "ln_final.hook_scale"]
    for name in want + [h for h, _ in hooks]:
        model.check_hook_name(name)
    table: dict = {}
    for name, fn in hooks:
        table.setdefault(name, []).append(fn)
    run = Run(cache=want, hooks=table)
    x = resid.to(model.device)
    n = x.shape[1]
    for i in range(start, c.n_layers):
        x = model.blocks[i](x, run, model._rope(n, i, x.dtype, x.device))
    x = x[torch.arange(x.shape[0]), torch.as_tensor(end).to(x.device)]
    x, scale = _norm(x, model.ln_final_w, getattr(model, "ln_final_b", None), c.norm_eps, c.family)
    logits = (x @ model.W_U).float()
    if c.final_logit_softcap:
        logits = torch.tanh(logits / c.final_logit_softcap) * c.final_logit_softcap
    if "ln_final.hook_scale" in cache:
        run.cache["ln_final.hook_scale"] = scale
    return logits, run.cache


def rows_forward(model, start: int, resid: torch.Tensor, end: torch.Tensor, make_hooks, chunk: int = 256) -> torch.Tensor:
    """Logits at `end` for many rows that share a prefix computation, in chunks: row r starts from
    resid[r] (blocks.{start}.hook_resid_pre) with the hooks make_hooks(rows) returns for the rows
    of a chunk (an index tensor). Rows are trimmed to the chunk's longest end + 1 (causal)."""
    out = []
    for a in range(0, len(end), chunk):
        rows = torch.arange(a, min(a + chunk, len(end)))
        L = int(end[rows].max()) + 1
        logits, _ = run_end(model, end=end[rows], hooks=make_hooks(rows), start=start, resid=resid[rows, :L])
        out.append(logits)
    return torch.cat(out) if out else torch.zeros(0, model.cfg.d_vocab)


def logit_diff(logits_end: torch.Tensor, batch: IOIBatch, prompt_of: torch.Tensor | None = None) -> torch.Tensor:
    """[n]: logit(IO) - logit(S) at END, from run_end's logits; with prompt_of, row r of the logits belongs
    to prompt prompt_of[r] (batched interventions)."""
    rows = torch.arange(len(batch)) if prompt_of is None else prompt_of
    ar = torch.arange(len(rows))
    return (logits_end[ar, batch.io_id[rows]] - logits_end[ar, batch.s_id[rows]]).float()


def summarize(values: torch.Tensor, batch: IOIBatch, vocab: IOIVocab | None = None) -> dict:
    """Mean of a per-prompt number overall, per order (ABBA/BABA) and per template."""
    v = values.float()
    out = {"mean": float(v.mean())}
    for o in sorted(set(batch.order)):
        out[o] = float(v[batch.mask(o)].mean())
    by_t = {}
    for t in sorted(set(batch.template.tolist())):
        key = vocab.templates[t] if vocab is not None else str(t)
        by_t[key] = float(v[batch.template == t].mean())
    out["by_template"] = by_t
    return out


def clean_logit_diff(model, batch: IOIBatch) -> torch.Tensor:
    logits, _ = run_end(model, batch.tokens, batch.end)
    return logit_diff(logits, batch)


# ---- head roles ---------------------------------------------------------------------------------

HEAD_RULE = (
    "Per head at END, means over the IOI prompts: attention to S2 and to IO; direct logit attribution (DLA) to "
    "logit(IO) - logit(S) (head output through the final norm with its scale frozen); ablation effect = change in "
    "mean logit diff when the head's z at END is replaced by its mean at END over ABC prompts of the same template, "
    "measured for heads attending >= min_attn to S2 or IO. S-inhibition heads: attention to S2 >= min_attn and above "
    "attention to IO, effect < 0, and |DLA| <= |effect| / 2 (the effect is mostly indirect); ranked by effect, most "
    "negative first. Name movers: attention to IO >= min_attn and above attention to S2, DLA > 0; ranked by DLA."
)


def _capture_at(store: dict, key, pos, dim: int = 1):
    """A hook fn that keeps x at each row's position `pos` along `dim` (1: [b, p, ...]; 2: pattern [b, h, dest, src],
    the destination), as float32, and leaves x unchanged."""
    ar = torch.arange(len(pos))

    def fn(x, name):
        store[key] = (x[ar, pos] if dim == 1 else x[ar, :, pos]).detach().float()
    return fn


def template_means_at_end(model, abc: IOIBatch, layers, hooks=()) -> dict[int, torch.Tensor]:
    """{layer: [n_templates, n_heads, d_head]}: mean hook_z at END over ABC prompts of each template."""
    store: dict = {}
    caps = [(f"blocks.{l}.attn.hook_z", _capture_at(store, l, abc.end)) for l in layers]
    run_end(model, abc.tokens, abc.end, hooks=list(hooks) + caps)
    T = int(abc.template.max()) + 1
    out = {}
    for l in layers:
        m = torch.zeros(T, *store[l].shape[1:])
        for t in range(T):
            if (abc.template == t).any():
                m[t] = store[l][abc.template == t].mean(0)
        out[l] = m
    return out


def head_dla(model, layer: int, z_end: torch.Tensor, io_id, s_id, final_scale, post_scale=None) -> torch.Tensor:
    """[n, n_heads]: each head's direct contribution to logit(IO) - logit(S) at END, from its z there
    [n, h, dh], through the norms after it with their per-token scales frozen (as induction.head_dla)."""
    W_U = model.W_U.float()
    return head_direct_effect(model, layer, z_end, W_U[:, io_id] - W_U[:, s_id], final_scale, post_scale)


def classify_heads(effect: np.ndarray, attn_s2: np.ndarray, attn_io: np.ndarray, dla: np.ndarray, min_attn: float = 0.1,
                   after_layer: int = -1) -> dict[str, list[tuple[int, int]]]:
    """Ranked S-inhibition heads and name movers by HEAD_RULE ([layer, head] arrays; NaN effect = not measured);
    only heads in layers > after_layer."""
    s_inh, nm = [], []
    for l, h in np.ndindex(*effect.shape):
        if l <= after_layer:
            continue
        e = effect[l, h]
        if attn_s2[l, h] >= min_attn and attn_s2[l, h] > attn_io[l, h] and np.isfinite(e) and e < 0 \
                and abs(dla[l, h]) <= abs(e) / 2:
            s_inh.append((l, h))
        if attn_io[l, h] >= min_attn and attn_io[l, h] > attn_s2[l, h] and dla[l, h] > 0:
            nm.append((l, h))
    return {"s_inhibition": sorted(s_inh, key=lambda k: effect[k]), "name_movers": sorted(nm, key=lambda k: -dla[k])}


@torch.no_grad()
def head_roles(model, batch: IOIBatch, abc: IOIBatch, min_attn: float = 0.1, hooks=(), chunk: int = 256) -> dict:
    """Per-head statistics at END and the heads HEAD_RULE classifies (see there). `hooks` apply to every
    forward, including the batched ablations, so they must work for any number of rows. Arrays are
    [n_layers][n_heads] lists; effect is NaN for heads below min_attn (not measured)."""
    c, n = model.cfg, len(batch)
    layers = range(c.n_layers)
    store: dict = {}
    caps = []
    for l in layers:
        caps.append((f"blocks.{l}.attn.hook_z", _capture_at(store, ("z", l), batch.end)))
        caps.append((f"blocks.{l}.attn.hook_pattern", _capture_at(store, ("pattern", l), batch.end, dim=2)))
        if c.family == "gemma3":
            caps.append((f"blocks.{l}.ln1_post.hook_scale", _capture_at(store, ("post", l), batch.end)))
    resid_names = [f"blocks.{l}.hook_resid_pre" for l in layers]
    logits, cache = run_end(model, batch.tokens, batch.end, hooks=list(hooks) + caps, cache=resid_names + ["ln_final.hook_scale"])
    ld = logit_diff(logits, batch)
    ar = torch.arange(n)
    attn_s2 = torch.stack([store[("pattern", l)][ar, :, batch.s2].mean(0) for l in layers]).numpy()
    attn_io = torch.stack([store[("pattern", l)][ar, :, batch.io].mean(0) for l in layers]).numpy()
    dla = torch.stack([head_dla(model, l, store[("z", l)], batch.io_id, batch.s_id, cache["ln_final.hook_scale"],
                                store.get(("post", l))).mean(0) for l in layers]).numpy()
    means = template_means_at_end(model, abc, list(layers), hooks)
    effect = np.full((c.n_layers, c.n_heads), np.nan)
    for l in layers:
        heads = [h for h in range(c.n_heads) if max(attn_s2[l, h], attn_io[l, h]) >= min_attn]
        if not heads:
            continue
        # one row per (head, prompt): that head's z at END replaced by its ABC template mean
        head_of = torch.tensor(heads).repeat_interleave(n)
        prompt_of = torch.arange(n).repeat(len(heads))
        repl = means[l][batch.template[prompt_of], head_of]

        def make_hooks(rows, l=l, head_of=head_of, prompt_of=prompt_of, repl=repl):
            def fn(z, name):
                z = z.clone()
                z[torch.arange(len(rows)), batch.end[prompt_of[rows]], head_of[rows]] = repl[rows].to(z.dtype)
                return z
            return list(hooks) + [(f"blocks.{l}.attn.hook_z", fn)]

        out = rows_forward(model, l, cache[f"blocks.{l}.hook_resid_pre"][prompt_of], batch.end[prompt_of], make_hooks, chunk)
        ld_abl = logit_diff(out, batch, prompt_of)
        for j, h in enumerate(heads):
            effect[l, h] = float(ld_abl[j * n:(j + 1) * n].mean() - ld.mean())
    roles = classify_heads(effect, attn_s2, attn_io, dla, min_attn)
    return {"rule": HEAD_RULE, "min_attn": min_attn, "clean_logit_diff": float(ld.mean()),
            "effect": np.round(effect, 5).tolist(), "attn_s2": np.round(attn_s2, 4).tolist(),
            "attn_io": np.round(attn_io, 4).tolist(), "dla": np.round(dla, 5).tolist(),
            "s_inhibition": [list(k) for k in roles["s_inhibition"]], "name_movers": [list(k) for k in roles["name_movers"]]}


def s_inhibition_after(roles: dict, layer: int, k: int) -> list[tuple[int, int]]:
    """The k highest-ranked S-inhibition heads of `roles` in layers after `layer`."""
    arr = {key: np.array(roles[key], dtype=float) for key in ("effect", "attn_s2", "attn_io", "dla")}
    found = classify_heads(arr["effect"], arr["attn_s2"], arr["attn_io"], arr["dla"], roles["min_attn"], after_layer=layer)
    return found["s_inhibition"][:k]


# ---- noising at S2 ------------------------------------------------------------------------------

@torch.no_grad()
def noise_s2(model, batch: IOIBatch, corrupted: dict[str, IOIBatch], layers: list[int]) -> dict:
    """Noising (paper fig. 5, table 4): each layer's hook_z at S2 of every clean prompt replaced by the
    aligned corrupted prompt's hook_z at its own S2 (all layers at once, values from the corrupted run).

        recovered = (LD_noised - LD_zero) / (LD_clean - LD_zero)

    with mean logit diffs and LD_zero from zero-ablating the same layers' hook_z at S2."""
    for l in layers:
        if not 0 <= l < model.cfg.n_layers:
            raise ValueError(f"noising layer {l} out of range: {model.cfg.name} has {model.cfg.n_layers} layers")
    ar = torch.arange(len(batch))

    def set_s2(values):
        def fn(z, name):
            z = z.clone()
            z[ar, batch.s2] = values[name].to(z.dtype) if values is not None else 0
            return z
        return fn

    names = [f"blocks.{l}.attn.hook_z" for l in layers]
    ld_clean = clean_logit_diff(model, batch)
    logits, _ = run_end(model, batch.tokens, batch.end, hooks=[(nm, set_s2(None)) for nm in names])
    ld_zero = logit_diff(logits, batch)
    res = {"layers": list(layers), "clean": summarize(ld_clean, batch), "zero": summarize(ld_zero, batch), "corruptions": {}}
    for key, cb in corrupted.items():
        if len(cb) != len(batch) or cb.order != batch.order:
            raise ValueError(f"corruption {key!r} is not aligned with the clean prompts")
        store: dict = {}
        run_end(model, cb.tokens, cb.end, hooks=[(nm, _capture_at(store, nm, cb.s2)) for nm in names])
        logits, _ = run_end(model, batch.tokens, batch.end, hooks=[(nm, set_s2(store)) for nm in names])
        ld = logit_diff(logits, batch)
        entry = {"noised": summarize(ld, batch), "example": cb.text[0]}
        for part in ["mean"] + sorted(set(batch.order)):
            m = batch.mask(part) if part != "mean" else torch.ones(len(batch), dtype=torch.bool)
            c_, z_, n_ = ld_clean[m].mean(), ld_zero[m].mean(), ld[m].mean()
            entry["recovered" if part == "mean" else f"recovered_{part}"] = float((n_ - z_) / (c_ - z_))
        res["corruptions"][key] = entry
    return res


def corruptions(vocab: IOIVocab, prompts: list[IOIPrompt], seed: int = 2, words=AND_REPLACEMENTS) -> dict[str, IOIBatch]:
    """{name: batch aligned with `prompts`}: the 3-perturbation distribution and each single-token "and" replacement."""
    out = {"3 perturbations": encode(vocab, three_perturbations(vocab, prompts, seed))}
    for w in words:
        ps = replace_conj(vocab, prompts, w)
        if ps is not None:
            out[f"and->{w.strip() or w}"] = encode(vocab, ps)
    return out

