"""``lcc_like``: code completion imitating LongBench's lcc — the next line of a generated Python module,
a line that names an identifier only the context defines (metric ``code_sim``).

The module's domain, record kinds and identifiers are invented words, so the line cannot be completed
from memory of real code.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lukv_bench.data.longbench.common import OfflineSubset, Slot, distinct_words
from lukv_bench.sample import Sample

DESIGN = 2  #: design revision: part of the set's random streams, sample ids and data source ("design v2")
VERSION = f"lcc_like v{DESIGN}"  #: this generator's version; :func:`generator_version` reports it

_TEXT_FIELDS = ("label", "owner", "title", "source", "status", "region", "author", "channel")
_INT_FIELDS = ("count", "size", "weight", "level", "rank", "limit", "offset", "priority")


@dataclass(frozen=True)
class _Kind:
    """One invented record kind of a generated module: its word and the names derived from it."""

    word: str
    suffix: str
    limit: int
    text_field: str
    int_field: str
    sep: str

    @property
    def const(self) -> str:
        """The prefix of the kind's module constants (``<WORD>_SUFFIX``, ``<WORD>_LIMIT``)."""
        return self.word.upper()

    @property
    def cls(self) -> str:
        """The name of the kind's record class (``<Word>Record``)."""
        return f"{self.word.capitalize()}Record"


def _kind_definitions(k: _Kind) -> list[str]:
    return [
        "@dataclass",
        f"class {k.cls}:",
        f'    """One {k.word} entry."""',
        "",
        f"    {k.text_field}: str",
        f"    {k.int_field}: int = 0",
        "",
        "",
        f"def _parse_{k.word}(text: str, strict: bool = False) -> {k.cls}:",
        f'    {k.text_field}, _, raw = text.strip().partition("{k.sep}")',
        f"    if strict and len({k.text_field}) > {k.const}_LIMIT:",
        f'        raise ValueError("{k.word} {k.text_field} is longer than the limit")',
        f"    return {k.cls}({k.text_field}, int(raw or 0))",
        "",
        "",
    ]


#: store methods: name -> body lines for one kind (after the ``def`` line)
def _method(family: str, k: _Kind) -> list[str]:
    w = k.word
    if family == "load":
        return [
            f"    def load_{w}(self, name: str) -> {k.cls}:",
            f"        path = os.path.join(self.root, name + {k.const}_SUFFIX)",
            '        with open(path, encoding="utf-8") as fh:',
            f"            record = _parse_{w}(fh.read(), strict=True)",
            f"        self._{w}_cache[name] = record",
            "        return record",
        ]
    if family == "save":
        return [
            f"    def save_{w}(self, name: str, record: {k.cls}) -> None:",
            f"        path = os.path.join(self.root, name + {k.const}_SUFFIX)",
            '        with open(path, "w", encoding="utf-8") as fh:',
            f'            fh.write(f"{{record.{k.text_field}}}{k.sep}{{record.{k.int_field}}}\\n")',
            f"        self._{w}_cache[name] = record",
        ]
    if family == "total":
        return [
            f"    def total_{w}(self) -> int:",
            f"        return sum(record.{k.int_field} for record in self._{w}_cache.values())",
        ]
    if family == "find":
        return [
            f"    def find_{w}(self, {k.text_field}: str) -> list[str]:",
            f"        names = [n for n, r in self._{w}_cache.items() if r.{k.text_field} == {k.text_field}]",
            "        return sorted(names)",
        ]
    assert family == "dump"
    return [
        f"    def dump_{w}(self) -> str:",
        f"        rows = {{n: [r.{k.text_field}, r.{k.int_field}] for n, r in self._{w}_cache.items()}}",
        f'        return json.dumps({{"kind": "{w}", "limit": {k.const}_LIMIT, "rows": rows}})',
    ]


_FAMILIES = ("load", "save", "total", "find", "dump")


def _module_lines(domain: str, kinds: list[_Kind], families: list[str], grouped: bool) -> list[str]:
    """A whole generated module: constants, record classes and parsers, then a store class."""
    store = f"{domain.capitalize()}Store"
    lines = [
        f'"""Reading, checking and saving {domain} records.',
        "",
        f"Each record kind has its own file suffix, size limit and parser; {store}",
        "keeps the records it has loaded or saved.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "import json",
        "import os",
        "from dataclasses import dataclass",
        "",
    ]
    for k in kinds:
        lines += [f'{k.const}_SUFFIX = "{k.suffix}"', f"{k.const}_LIMIT = {k.limit}"]
    lines += ["", ""]
    if grouped:  # all classes, then all parsers
        parts = [_kind_definitions(k) for k in kinds]
        lines += [x for p in parts for x in p[:8]] + [x for p in parts for x in p[8:]]
    else:
        lines += [x for k in kinds for x in _kind_definitions(k)]
    lines += [
        f"class {store}:",
        f'    """Loads and saves {domain} records below one folder."""',
        "",
        "    def __init__(self, root: str) -> None:",
        "        self.root = root",
    ]
    lines += [f"        self._{k.word}_cache: dict[str, {k.cls}] = {{}}" for k in kinds]
    for k in kinds:
        for family in families:
            lines += ["", *_method(family, k)]
    return lines


def make_sample(rng: random.Random, target: int, slot: Slot) -> Sample:
    """One sample: a generated module grown kind by kind until the context before its target line (a line
    of the last method that names the last kind) has about ``target`` characters."""
    words = distinct_words(rng, min_len=6)
    domain = next(words)
    families = rng.sample(_FAMILIES, rng.randint(2, 4))
    grouped = rng.random() < 0.5
    kinds: list[_Kind] = []
    while True:
        word = next(words)
        kinds.append(
            _Kind(
                word=word,
                suffix=f".{word[:3]}",
                limit=rng.randint(16, 4096),
                text_field=rng.choice(_TEXT_FIELDS),
                int_field=rng.choice(_INT_FIELDS),
                sep=rng.choice(":|;="),
            )
        )
        lines = _module_lines(domain, kinds, families, grouped)
        last = kinds[-1]
        # the target: a line of the last method that names the last kind (only the context can tell it)
        method_start = max(i for i, line in enumerate(lines) if line.startswith("    def "))
        candidates = [
            i
            for i in range(method_start + 1, len(lines))
            if last.word in lines[i].lower()
        ]
        line = rng.choice(candidates)
        context = "\n".join(lines[:line]) + "\n"
        if len(context) >= 0.8 * target or len(kinds) >= 200:
            break
    return Sample(
        id="",
        instruction="Please complete the code given below.",
        context=context,
        question="Next line of code:\n",
        answers=[lines[line].strip()],
        meta={"module": f"{domain}_store.py", "line": line + 1, "kind": last.word},
    )


SUBSET = OfflineSubset(
    "lcc_like",
    "lcc",
    "code_sim",
    "code completion (next line naming an invented identifier)",
    make_sample,
    source="invented_code",
    max_new_tokens=64,
    version=DESIGN,
)
