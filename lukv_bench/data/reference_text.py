"""Real English prose that ships with every CPython install, as token ids: no download needed.

The text is Python's language reference as ``help()`` shows it (``pydoc_data.topics``). Latency
tasks, benchmarks and tests prefill it when they need a prompt of an exact length.
"""

from __future__ import annotations

#: how records and reports name this text
SOURCE = "Python's language reference (pydoc_data.topics, ships with Python)"


def reference_text_ids(tokenizer, n_tokens: int) -> list[int]:
    """``n_tokens`` token ids of Python's language reference (repeated when the text is shorter)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    while len(ids) < n_tokens:
        ids = ids + ids
    return list(ids[:n_tokens])
