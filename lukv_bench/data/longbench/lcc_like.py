"""``lcc_like``: code completion imitating LongBench's lcc — the next line of a generated Python module,
a line whose values only the context defines (metric ``code_sim``).

Design v3: the module defines one client function per invented service; each returns a ``Client``
built from the service's host, port and owner, which are invented. The module ends with a second
function for one of its services (``reopen_<service>``: its ``def`` line and docstring are the question
block), whose next line is that service's ``return Client(...)`` line: completing it means finding the
service's function earlier in the file and copying its host, port and owner. Like LongBench's lcc, the
prompt is a plain completion without the chat template (``Sample.chat = False``); LongBench's "Next line
of code:" cue is left out, because after it the embedded SmolLM2-135M writes prose instead of code.

Design v2 (0.03 FullKV on the embedded model: in the chat format it explained the code instead of
continuing it) asked for a line of a record-store class; its samples are those of the git history
before this design.
"""

from __future__ import annotations

import random

from lukv_bench.data.longbench.common import FIRST_NAMES, OfflineSubset, Slot, distinct_words
from lukv_bench.sample import Sample

DESIGN = 3  #: design revision: part of the set's random streams, sample ids and data source ("design v3")
VERSION = f"lcc_like v{DESIGN}"  #: this generator's version; :func:`generator_version` reports it

INSTRUCTION = "Please complete the code given below. \n"  #: LongBench's lcc instruction
_ZONES = ("internal", "local", "lan", "corp", "svc")


def _header(domain: str) -> list[str]:
    return [
        f'"""Clients of the {domain} services.',
        "",
        "Every service has its own host, port and owner; open_<service> returns a client for it and",
        "reopen_<service> a fresh one after a failure.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from dataclasses import dataclass",
        "",
        "",
        "@dataclass(frozen=True)",
        "class Client:",
        '    """A connection to one service."""',
        "",
        "    host: str",
        "    port: int",
        "    owner: str",
        "    retries: int = 3",
    ]


def _opener(service: str, host: str, port: int, owner: str) -> tuple[list[str], str]:
    """The ``open_<service>`` function and its return line."""
    ret = f'return Client("{host}", {port}, "{owner}", retries)'
    return [
        "",
        "",
        f"def open_{service}(retries: int = 3) -> Client:",
        f'    """A client of the {service} service."""',
        f"    {ret}",
    ], ret


def make_sample(rng: random.Random, target: int, slot: Slot) -> Sample:
    """One sample: a module of service clients of about ``target`` characters, ending with the ``def`` line
    and docstring of ``reopen_<service>`` for one of its services; the answer is that function's next line.

    The question block ends right after the docstring, without a newline: a lone newline token there would
    not be the newline-and-indent token the context has before every ``return`` line."""
    words = distinct_words(rng, min_len=5)
    domain = next(words)
    lines = _header(domain)
    services: list[tuple[str, str]] = []  # (service, return line)
    ports: set[int] = set()
    while len("\n".join(lines)) < target or len(services) < 2:
        service = next(words)
        host = f"{next(words)}-{rng.randrange(1, 40):02d}.{rng.choice(_ZONES)}"
        port = rng.randrange(10_000, 65_000)
        while port in ports:
            port = rng.randrange(10_000, 65_000)
        ports.add(port)
        owner = rng.choice(FIRST_NAMES).lower()
        block, ret = _opener(service, host, port, owner)
        lines += block
        services.append((service, ret))
    k = rng.randrange(len(services) - 1)  # never the last function: the answer is not the line just above
    service, answer = services[k]
    question = [
        "",
        "",
        f"def reopen_{service}(retries: int = 3) -> Client:",
        f'    """A fresh client of the {service} service, after the first one failed."""',
    ]
    return Sample(
        id="",
        instruction=INSTRUCTION,
        context="\n".join(lines),
        question="\n".join(question),
        answers=[answer],
        meta={"module": f"{domain}_clients.py", "service": service, "function": k + 1, "n_functions": len(services)},
        verbatim=True,
        chat=False,
    )


SUBSET = OfflineSubset(
    "lcc_like",
    "lcc",
    "code_sim",
    "code completion (next line: a client built from the host, port and owner one function defines)",
    make_sample,
    source="invented_clients",
    max_new_tokens=64,
    version=DESIGN,
)
