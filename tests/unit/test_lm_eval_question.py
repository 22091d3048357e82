"""Where an lm-eval request's question starts (the ``compress: context`` split) and its no-context control."""

from __future__ import annotations

from lukv_bench.tasks.lm_eval.question import locate, question_of, token_cut, without_context
from lukv_bench.testing import byte_tokenizer

#: a document shaped like lm-eval's RULER ones (niah template: instruction, haystack, question on the last line)
RULER_DOC = {
    "index": 0,
    "input": "Some special magic numbers are hidden within the following text.\nThe grass is green. "
             "One of the special magic numbers for lucky-cat is: 4821. The sky is blue.\n"
             "What are all the special magic numbers for lucky-cat mentioned in the provided text?",
    "outputs": ["4821"],
    "length": 40,
    "max_length": 4096,
    "gen_prefix": "The special magic number for lucky-cat mentioned in the provided text is",
}
QUESTION = "What are all the special magic numbers for lucky-cat mentioned in the provided text?"


def _chat(doc: dict) -> str:
    """The request as lm-eval renders it with a ChatML-like template and RULER's gen_prefix."""
    return f"<|im_start|>user\n{doc['input']}<|im_end|>\n<|im_start|>assistant\n{doc['gen_prefix']}"


def test_question_of_ruler_doc_is_the_input_last_line() -> None:
    assert question_of(RULER_DOC) == (QUESTION, "ruler: the input's last line")
    # a RULER-shaped document without a newline has no separable question
    assert question_of({**RULER_DOC, "input": "one line only?"}) is None


def test_question_of_other_docs_uses_question_or_query_fields() -> None:
    assert question_of({"question": " Who? ", "query": "ignored"}) == ("Who?", "doc field 'question'")
    assert question_of({"query": "Where?"}) == ("Where?", "doc field 'query'")
    assert question_of({"prompt": "no question field"}) is None
    assert question_of({"question": ""}) is None
    assert question_of("not a dict") is None


def test_locate_finds_the_last_occurrence_in_the_rendered_request() -> None:
    context = _chat(RULER_DOC)
    span = locate(context, RULER_DOC)
    assert span is not None and context[span.start:].startswith(QUESTION)
    assert span.method == "ruler: the input's last line"
    # few-shot examples come first: the document's own question is the last occurrence
    shot = "Q: Who? A: Bob.\n"
    assert locate(shot + "Context.\nQ: Who?", {"question": "Q: Who?"}).start == len(shot + "Context.\n")
    assert locate("the question is not in here", RULER_DOC) is None


def test_token_cut_counts_the_tokens_before_the_question() -> None:
    tok = byte_tokenizer()  # one token per byte: the cut is the byte offset
    context = _chat(RULER_DOC)
    at = locate(context, RULER_DOC).start
    cut = token_cut(tok, context, at, add_special_tokens=False)
    ids = tok(context, add_special_tokens=False)["input_ids"]
    assert cut == len(context[:at].encode())
    assert tok.decode(ids[cut:]).startswith(QUESTION) and not tok.decode(ids[:cut]).endswith("What")
    assert token_cut(tok, context, len(context), add_special_tokens=False) == len(ids)


def test_without_context_keeps_the_template_and_the_question_only() -> None:
    context = _chat(RULER_DOC)
    control = without_context(context, RULER_DOC["input"], locate(context, RULER_DOC))
    assert control == f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n{RULER_DOC['gen_prefix']}"
    assert "4821" not in control  # the needle (and the whole haystack) is gone
    # a document text that is not in the request gives no control
    assert without_context(context, "some other text\n" + QUESTION, locate(context, RULER_DOC)) is None


def test_generated_lm_eval_documents_are_drawn_under_the_suites_seed(monkeypatch) -> None:
    """RULER draws needles from Python's and NumPy's global generators: every load must draw the same, per seed."""
    import random
    from types import SimpleNamespace

    import numpy as np

    from lukv_bench.tasks.lm_eval import loading

    class FakeManager:
        def load(self, names):
            return {"tasks": {names[0]: (random.random(), float(np.random.rand()))}}

    monkeypatch.setattr(loading, "_task_manager", lambda cfg, metadata: FakeManager())
    cfg = SimpleNamespace(name="r", tasks=["niah_single_1", "ruler_vt"], seed=0)
    first = loading.load_tasks(cfg, {})  # the first load imports what it needs (imports may draw numbers)
    before = (random.getstate(), np.random.get_state()[1].tolist())
    again = loading.load_tasks(cfg, {})
    after = (random.getstate(), np.random.get_state()[1].tolist())
    assert first == again and first["niah_single_1"] != first["ruler_vt"]
    alone = {seed: loading.load_tasks(SimpleNamespace(name="r", tasks=["ruler_vt"], seed=seed), {}) for seed in (0, 1)}
    assert alone[0] == {"ruler_vt": first["ruler_vt"]} != alone[1]  # other tasks loaded first change nothing
    assert after == before  # the caller's generators are left as they were
