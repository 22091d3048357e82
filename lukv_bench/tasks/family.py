"""``type: family``: the generated task families of :mod:`lukv_bench.data.families` (offline, seeded).

Suite entry::

    - name: multikey
      type: family
      family: multikey          # multikey | multivalue | vartrack | factqa | fewshot | config
      samples: 12               # samples generated (a suite or task ``limit`` can lower it)
      context_tokens: 800       # approximate context length in tokens
      keys: 4                   # projects / facts / variable chains in one context
      values: 3                 # codes per project (multivalue) or variables per chain (vartrack)
      seed: 0                   # default: the suite's seed
      control: true             # no-context control (FullKV on the questions alone); default true

The metric is the family's own (``substring`` or ``recall``), so ``metric`` is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lukv_bench.data.corpus import CORPUS_VERSION
from lukv_bench.data.families import FAMILIES, FamilyTask
from lukv_bench.data.families import VERSION as FAMILIES_VERSION
from lukv_bench.registry.task_contract import REQUIRED, Key
from lukv_bench.tasks.base import MAX_NEW_TOKENS, BaseTaskType, task_limit
from lukv_bench.tasks.control import control_key

if TYPE_CHECKING:
    from lukv_bench.config.suite import Suite



class FamilyTaskType(BaseTaskType):
    """``type: family``: one generated family whose answers only the context holds."""

    name = "family"
    keys = {
        "family": Key("str", REQUIRED, choices=FAMILIES, help=f"one of {', '.join(FAMILIES)}"),
        "samples": Key("int", 12, minimum=1),
        "context_tokens": Key("int", 800, minimum=64),
        "keys": Key("int", 4, minimum=1),
        "values": Key("int", 3, minimum=1),
        "seed": Key("int", default_from="seed"),
        "max_new_tokens": MAX_NEW_TOKENS,
        "control": control_key(True),
        "metric": Key.refuse("cannot be set: each family is scored by its own metric (substring or recall); "
                             "remove it"),
    }

    def data_version(self, task: dict[str, Any]) -> str:
        """The families generator's design and the corpus it draws haystacks from."""
        return f"{FAMILIES_VERSION}; {CORPUS_VERSION}"

    def build(self, task: dict[str, Any], suite: Suite | None, tokenizer: Any = None) -> FamilyTask:
        """The family task; ``limit`` (task or suite) caps ``samples``."""
        built = FamilyTask(task["name"], task["family"], task["seed"], task["context_tokens"], task["keys"],
                           task["values"], tokenizer, max_new_tokens=task["max_new_tokens"])
        limit = task_limit(task, suite)
        built.limit = min(task["samples"], limit) if limit is not None else task["samples"]
        return built
