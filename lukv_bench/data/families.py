"""Generated task families whose answers can come only from the context (offline, seeded).

Each family asks for something invented per sample (numbers, made-up names, arbitrary labels), so a
model cannot answer from memory: its no-context control (:mod:`lukv_bench.tasks.control`) scores
near zero, and a score above that measures what the context gave. The filler text is the needle
haystack (prose from Python's ``pydoc_data``, :func:`lukv_bench.data.corpus.prose_sentences`).

============ ========== =====================================================================================
family       metric     what it asks
============ ========== =====================================================================================
multikey     substring  the 5-digit access code of one of ``keys`` invented projects, each stated once in the
                        prose (the others are distractors of the same form)
multivalue   recall     all ``values`` access codes of one project, stated in separate sentences (share found)
vartrack     substring  variable tracking (RULER-like, asked forwards): the value of the last variable of a chain
                        ``VAR A = 12345. ... VAR B = VAR A.`` of ``values`` variables spread through the prose,
                        among ``keys`` chains
factqa       substring  who founded an invented organisation: a two-word invented name (a multi-token span),
                        among ``keys`` founding facts
fewshot      substring  few-shot labelled examples (topics mapped to invented labels): the label of one example
                        sentence, asked back (every label equally often over the samples). The embedded model
                        could not label *unseen* sentences (1 of 8 in calibration), so the query is a shown one
config       substring  structured-text completion: the port line of one invented service's block in a generated
                        INI file, prompted with the block's first lines
============ ========== =====================================================================================

A sample depends only on ``(family, seed, context_tokens, index)`` (and the tokenizer that measures
lengths): its id names them, so results stay keyed to the exact data.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from lukv_bench.data.corpus import Sentence, join_sentences, prose_sentences, token_counter
from lukv_bench.data.longbench.common import FIRST_NAMES as _FIRST_NAMES
from lukv_bench.data.longbench.common import distinct_words
from lukv_bench.sample import Sample

VERSION = "families v1"

#: family -> the metric name recorded with its scores
METRICS = {
    "multikey": "substring", "multivalue": "recall", "vartrack": "substring", "factqa": "substring",
    "fewshot": "substring", "config": "substring",
}
FAMILIES = tuple(METRICS)



@dataclass
class Spec:
    """What a family builder gets: the seeded random stream, the target length, a token counter and the
    sample's index."""

    rng: random.Random
    tokens: int
    count: Callable[[str], int]
    keys: int  #: distractor/fact count (multikey, factqa) or chain count (vartrack)
    values: int  #: values per key (multivalue) or chain length (vartrack)
    index: int = 0  #: the sample's index (fewshot cycles its target label with it)


def _code(rng: random.Random, taken: set[str]) -> str:
    while True:
        code = str(rng.randrange(10_000, 100_000))
        if code not in taken:
            taken.add(code)
            return code


def _with_needles(spec: Spec, needles: list[str]) -> str:
    """Haystack prose of about ``spec.tokens`` tokens with each needle sentence at a random depth, in order."""
    units = prose_sentences()
    start = spec.rng.randrange(len(units))
    room = spec.tokens - sum(spec.count(n) + 1 for n in needles)
    hay: list[Sentence] = []
    used = 0
    while used < room:
        unit = units[(start + len(hay)) % len(units)]
        used += spec.count(unit.text) + 1
        hay.append(unit)
    slots = sorted(spec.rng.randrange(len(hay) + 1) for _ in needles)
    out = list(hay)
    for k, (slot, text) in enumerate(zip(slots, needles, strict=True)):
        out.insert(slot + k, Sentence(text, para_end=False))
    return join_sentences(out)


def _multikey(spec: Spec) -> tuple[str, str, list[str], str]:
    rng, taken = spec.rng, set()
    names = [w.capitalize() for w, _ in zip(distinct_words(rng), range(spec.keys), strict=False)]
    codes = [_code(rng, taken) for _ in names]
    needles = [f"The access code of project {n} is {c}." for n, c in zip(names, codes, strict=True)]
    rng.shuffle(needles)
    ask = rng.randrange(len(names))
    return (_with_needles(spec, needles), f"What is the access code of project {names[ask]}? Answer with the number "
            "only.", [codes[ask]], "Below is a long text with the access codes of several projects. Remember them.")


def _multivalue(spec: Spec) -> tuple[str, str, list[str], str]:
    rng, taken = spec.rng, set()
    name = next(distinct_words(rng)).capitalize()
    codes = [_code(rng, taken) for _ in range(spec.values)]
    needles = [f"One of the access codes of project {name} is {c}." for c in codes]
    return (_with_needles(spec, needles), f"List all the access codes of project {name}, separated by commas.",
            codes, "Below is a long text. It states several access codes of one project. Remember all of them.")


def _vartrack(spec: Spec) -> tuple[str, str, list[str], str]:
    rng, taken = spec.rng, set()
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
    names: set[str] = set()

    def var() -> str:
        while True:
            v = "".join(rng.choice(letters) for _ in range(3))
            if v not in names:
                names.add(v)
                return v

    chains = [([var() for _ in range(spec.values)], _code(rng, taken)) for _ in range(spec.keys)]
    # each chain's statements keep their order; chains interleave at random
    per_chain = [[f"VAR {c[0]} = {v}."] + [f"VAR {c[i]} = VAR {c[i - 1]}." for i in range(1, len(c))]
                 for c, v in chains]
    order = [k for k, stmts in enumerate(per_chain) for _ in stmts]
    rng.shuffle(order)
    needles, pos = [], [0] * len(per_chain)
    for k in order:
        needles.append(per_chain[k][pos[k]])
        pos[k] += 1
    chain, value = chains[0]
    return (_with_needles(spec, needles), f"What is the value of VAR {chain[-1]}? Answer with the number only.",
            [value], "Below is a long text with variable assignments (VAR X = ...) hidden in it. Track them.")


_ORGS = ("Institute", "Foundation", "Society", "Laboratory", "Academy", "Observatory")


def _factqa(spec: Spec) -> tuple[str, str, list[str], str]:
    rng = spec.rng
    words = distinct_words(rng)
    facts = []
    for _ in range(spec.keys):
        person = f"{rng.choice(_FIRST_NAMES)} {next(words).capitalize()}"
        org = f"{next(words).capitalize()} {rng.choice(_ORGS)}"
        facts.append((person, org))
    needles = [f"The {org} was founded by {person}." for person, org in facts]
    rng.shuffle(needles)
    person, org = facts[0]
    return (_with_needles(spec, needles), f"Who founded the {org}? Answer with the full name only.", [person],
            "Below is a long text that mentions who founded several organisations.")


#: topic -> sentences (the few-shot family's examples and queries)
_TOPICS = {
    "weather": ("Heavy rain is expected all afternoon.", "The wind blew hard and the sky turned grey.",
                "Tomorrow will be sunny and warm.", "Snow covered the roads this morning.",
                "A thunderstorm rolled in after lunch.", "The fog lifted by noon.",
                "It was freezing cold overnight.", "Light showers will clear by evening."),
    "food": ("She baked fresh bread with butter.", "The soup needs more salt and pepper.",
             "He fried two eggs for breakfast.", "We ordered noodles and dumplings.",
             "The cake was sweet with strawberries.", "Grill the fish with lemon and garlic.",
             "They ate rice with spicy beans.", "The pasta sauce simmered for an hour."),
    "sport": ("The striker scored a late goal.", "She won the race by two seconds.",
              "The team trained on the field all week.", "He hit the ball over the fence.",
              "The coach praised the defenders.", "The match ended in a draw.",
              "They lost the final on penalties.", "The runner crossed the finish line first."),
    "money": ("The bank raised its interest rate.", "He paid the bill with his credit card.",
              "Prices rose again this month.", "She saved part of her salary.",
              "The loan must be repaid within a year.", "Shares fell sharply on the market.",
              "They opened a new savings account.", "The company reported higher profits."),
}


def _fewshot(spec: Spec) -> tuple[str, str, list[str], str]:
    rng = spec.rng
    topics = sorted(_TOPICS)
    labels = dict(zip(topics, (w for w, _ in zip(distinct_words(rng), topics, strict=False)), strict=True))
    pool = [(t, s) for t in topics for s in _TOPICS[t]]
    rng.shuffle(pool)
    lines: list[str] = []
    shown: list[tuple[str, str]] = []
    for t, s in pool:  # each sentence at most once, as many as fit
        line = f"Sentence: {s}\nLabel: {labels[t]}"
        if lines and spec.count("\n\n".join([*lines, line])) > spec.tokens:
            break
        lines.append(line)
        shown.append((t, s))
    target = topics[spec.index % len(topics)]  # every label equally often over the samples
    if not any(t == target for t, _ in shown):  # only with very short contexts
        target = shown[0][0]
    query = rng.choice([s for t, s in shown if t == target])
    return ("\n\n".join(lines), f'Which label does the sentence "{query}" have? Answer with the label only.',
            [labels[target]], "Each sentence below has a label; labels are made-up words, one per kind of sentence.")


def _config(spec: Spec) -> tuple[str, str, list[str], str]:
    rng, taken = spec.rng, set()
    words = distinct_words(rng)
    blocks: list[str] = []
    heads: list[str] = []
    ports: list[str] = []
    while True:
        head = f"[service {next(words)}]\nhost = {next(words)}-{rng.randrange(1, 40):02d}.internal\nport ="
        port = _code(rng, taken)
        block = f"{head} {port}\nowner = {rng.choice(_FIRST_NAMES).lower()}\nretries = {rng.randrange(1, 9)}"
        if blocks and spec.count("\n\n".join([*blocks, block])) > spec.tokens:
            break
        blocks.append(block)
        heads.append(head)
        ports.append(port)
    ask = rng.randrange(len(heads))
    return ("\n\n".join(blocks), "Complete the entry as it appears in the configuration above; reply with the "
            f"number only.\n{heads[ask]}", [ports[ask]], "Below is a configuration file (INI format).")


def recall(prediction: str, answers: list[str]) -> float:
    """Share of the gold answers that occur in the prediction (case-insensitive)."""
    pred = prediction.lower()
    return sum(a.lower() in pred for a in answers) / len(answers) if answers else 0.0


class FamilyTask:
    """One generated family as a task: ``samples`` builds them on demand, ``score`` applies its metric."""

    def __init__(self, name: str, family: str, seed: int = 0, context_tokens: int = 800, keys: int = 4,
                 values: int = 3, tokenizer: Any = None, max_new_tokens: int | None = None) -> None:
        """Build the task; the tokenizer (when given) measures lengths in tokens, else 4 characters count as one."""
        if family not in METRICS:
            raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
        self.name, self.family, self.seed = name, family, int(seed)
        self.context_tokens, self.keys, self.values = int(context_tokens), int(keys), int(values)
        self.metric = METRICS[family]
        self.max_new_tokens = max_new_tokens
        self.limit: int | None = None
        self._count = token_counter(tokenizer)
        self.data_source = (f"offline generated family {family} ({VERSION}; seed {self.seed}, "
                            f"~{self.context_tokens} tokens; invented names and numbers, pydoc_data prose)")

    def make_sample(self, index: int) -> Sample:
        """Sample ``index``: deterministic in (family, seed, context_tokens, keys, values, index)."""
        tag = f"{self.family}|{self.seed}|{self.context_tokens}|{self.keys}|{self.values}|{index}"
        spec = Spec(random.Random(f"lukv-{VERSION}|{tag}"), self.context_tokens, self._count, self.keys, self.values,
                    index)
        context, question, answers, instruction = _BUILDERS[self.family](spec)
        return Sample(id=f"{self.family}-s{self.seed}-t{self.context_tokens}-{index}", context=context,
                      question=question, answers=answers, instruction=instruction,
                      max_new_tokens=self.max_new_tokens,
                      meta={"family": self.family, "index": index, "context_tokens_est": self._count(context)})

    def samples(self, limit: int | None = None) -> Iterator[Sample]:
        """Samples 0, 1, ... up to ``limit`` (12 when no limit is set)."""
        for i in range(limit if limit is not None else 12):
            yield self.make_sample(i)

    def score(self, prediction: str, sample: Sample) -> float:
        """``recall`` families: share of the answers found; others: 1.0 when the answer occurs in the prediction."""
        if self.metric == "recall":
            return recall(prediction, sample.answers)
        return 1.0 if recall(prediction, sample.answers) > 0 else 0.0


_BUILDERS: dict[str, Callable[[Spec], tuple[str, str, list[str], str]]] = {
    "multikey": _multikey, "multivalue": _multivalue, "vartrack": _vartrack, "factqa": _factqa, "fewshot": _fewshot,
    "config": _config,
}
