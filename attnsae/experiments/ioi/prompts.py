"""IOI prompts (Wang et al. 2022) for any tokenizer: vocabulary, templates, the ABBA / BABA / ABC
distributions, the corruptions used for noising, and their encoding into token ids and positions.

A prompt names two people and stops where the model should name the indirect object:
    "When Mary and John went to the store, John gave a drink to" -> " Mary"
IO is the name said once (Mary), S the subject said twice (John); S1 and S2 are its two positions.
ABBA prompts put IO first ("Mary and John ... John"), BABA prompts S first ("John and Mary ... John").
END is the last prompt token ("to"), where the model predicts IO. The ABC distribution fills the S2
slot with a third name C (no name repeats): Wang et al.'s reference distribution for mean ablation.

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

import torch

from ...models.text import single_token

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
        x, y, z = {"ABBA": (self.io, self.s, self.s), "BABA": (self.s, self.io, self.s),
                   "ABC": (self.io, self.s, self.c)}[self.order]
        return {"X": " " + x, "Y": " " + y, "Z": " " + z, "conj": self.conj, "place": " " + self.place,
                "object": " " + self.obj, "gap": self.gap}


# IOIBatch's per-prompt tensors after `tokens`, in field order
_PER_PROMPT = ("length", "io_id", "s_id", "io", "s1", "s2", "end", "conj", "template")


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

    def select(self, idx) -> IOIBatch:
        idx = torch.as_tensor(idx)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        L = int(self.length[idx].max())
        rows = idx.tolist()
        return IOIBatch(self.tokens[idx, :L], *(getattr(self, k)[idx] for k in _PER_PROMPT),
                        [self.order[i] for i in rows], [self.text[i] for i in rows], [self.prompts[i] for i in rows])


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
              min_names: int = 4) -> IOIVocab:
        """Keep the candidates that are single tokens with a leading space; ValueError if too few.
        Four names are the least that work: the noising distribution swaps both names for two others."""
        if tokenizer is None:
            raise ValueError("IOI prompts need the model's tokenizer, and this model has none")

        def keep(words):
            return list(dict.fromkeys(w for w in words if single_token(tokenizer, " " + w) is not None))

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
            warnings.warn(f"only {len(v.names)} single-token names in this tokenizer; prompts will repeat a lot", stacklevel=2)
        return v

    def piece(self, text: str) -> list[int]:
        """Token ids of a literal piece of a prompt (cached)."""
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
        warnings.warn(f"{word!r} is not a single token in this tokenizer; skipping that corruption", stacklevel=2)
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
                    ids += vocab.piece(p.prefix)
                    text += p.prefix
                    lit = " " + lit if lit else lit
                ids += vocab.piece(lit)
                text += lit
            else:
                value = values[chunk]
                if chunk == "gap":
                    ids += vocab.piece(value)
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
                      "the piecewise tokens are used", stacklevel=2)
    L = max(map(len, rows))
    tokens = torch.tensor([r + [vocab.bos] * (L - len(r)) for r in rows])
    m = torch.tensor(meta)
    return IOIBatch(tokens, torch.tensor([len(r) for r in rows]), m[:, 0], m[:, 1], m[:, 2], m[:, 3], m[:, 4], m[:, 5],
                    m[:, 6], m[:, 7], [p.order for p in prompts], texts, list(prompts))


def ioi_vocab(model, **kw) -> IOIVocab:
    """The IOI vocabulary of this model's tokenizer, BOS its own."""
    return IOIVocab.build(model.tokenizer, model.cfg.bos_token_id or 0, **kw)


def corruptions(vocab: IOIVocab, prompts: list[IOIPrompt], seed: int = 2, words=AND_REPLACEMENTS) -> dict[str, IOIBatch]:
    """{name: batch aligned with `prompts`}: the 3-perturbation distribution and each single-token "and" replacement."""
    out = {"3 perturbations": encode(vocab, three_perturbations(vocab, prompts, seed))}
    for w in words:
        ps = replace_conj(vocab, prompts, w)
        if ps is not None:
            out[f"and->{w.strip() or w}"] = encode(vocab, ps)
    return out
