"""Turn a sample into token ids, split into the part to compress and the question that follows,
and fit those ids into the model's positions (the suite's ``truncate`` setting)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lukv_bench.errors import UserError
from lukv_bench.sample import Sample

__all__ = [
    "DEFAULT_TRUNCATE",
    "TRUNCATE_MODES",
    "PromptIds",
    "build_prompt",
    "fit_prompt",
    "model_max_positions",
    "use_chat_template",
]

#: values of the suite's ``truncate`` setting (see :func:`fit_prompt`)
TRUNCATE_MODES = ("middle", "error", "none")
DEFAULT_TRUNCATE = "middle"


@dataclass
class PromptIds:
    """Token ids of one prompt: ``context + question`` is the full prompt, in order."""

    context: list[int]
    question: list[int]

    @property
    def full(self) -> list[int]:
        """All prompt ids."""
        return self.context + self.question


def use_chat_template(tokenizer, setting: str | bool) -> bool:
    """Resolve the suite's ``chat_template: auto|true|false`` for this tokenizer."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if setting == "auto":
        return has
    if setting and not has:
        raise ValueError("chat_template: true but the tokenizer has no chat template")
    return bool(setting)


def build_prompt(tokenizer, sample: Sample, chat: bool) -> PromptIds:
    """Render the sample (chat template when ``chat`` and ``sample.chat``) and split it before the question block.

    Both protocols use the same ids, so ``compress: prompt`` and ``compress: context`` differ only
    in what is compressed, never in tokenisation.
    """
    head, tail, add_special = render_prompt(tokenizer, sample, chat)
    ctx = tokenizer(head, add_special_tokens=add_special)["input_ids"]
    q = tokenizer(tail, add_special_tokens=False)["input_ids"]
    return PromptIds(context=list(ctx), question=list(q))


def render_prompt(tokenizer, sample: Sample, chat: bool) -> tuple[str, str, bool]:
    """The prompt text :func:`build_prompt` tokenises: ``(context part, question part, add_special)``.

    ``add_special`` says whether the context part is tokenised with the tokenizer's special tokens
    (plain prompts) or not (the chat template already holds them).
    """
    context_block, question_block = sample.blocks()
    if chat and sample.chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": context_block + question_block}], tokenize=False, add_generation_prompt=True
        )
        cut = text.rfind(question_block) if question_block else len(text)
        if cut < 0:
            raise ValueError(f"sample {sample.id}: question not found in the rendered chat prompt")
        head, tail = text[:cut], text[cut:]
        add_special = False
    else:
        head, tail = context_block, question_block if sample.verbatim else question_block + "\nAnswer:"
        add_special = True
    return head, tail, add_special


def model_max_positions(config: Any) -> int | None:
    """The most positions the model was built for, read from its transformers config (None if unknown).

    Multimodal configs keep it on ``text_config``; older architectures call it ``n_positions`` or
    ``max_sequence_length``.
    """
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is None:
            continue
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def fit_prompt(
    ids: PromptIds,
    max_positions: int | None,
    max_new_tokens: int,
    mode: str = DEFAULT_TRUNCATE,
    *,
    task: str = "",
    sample_id: str = "",
    where: str = "",
) -> tuple[PromptIds, int, int]:
    """Fit a built prompt into ``max_positions - max_new_tokens`` tokens; return (ids, original, used).

    ``original`` and ``used`` count the whole prompt (context + question) before and after. The
    question part (the question and the chat template's tail) is never cut; tokens go from the
    middle of the context part only:

    * ``middle`` — LongBench's rule: of the ``allowed`` tokens keep the first ``allowed // 2`` and the
      last ``allowed - allowed // 2`` (more at the end when the question is longer than that half);
    * ``error`` — raise :class:`UserError` naming the task, the sample, the lengths and the fixes;
    * ``none`` — use the prompt as it is (for models whose positions extrapolate; the record still
      shows the length).

    ``max_positions=None`` (unknown limit) leaves the prompt as it is. ``where`` prefixes error
    messages (e.g. ``suite.where("truncate")``: the suite file, line and key).
    """
    if mode not in TRUNCATE_MODES:
        raise UserError(f"truncate must be one of {', '.join(TRUNCATE_MODES)} (got {mode!r})")
    original = len(ids.context) + len(ids.question)
    if max_positions is None or mode == "none":
        return ids, original, original
    allowed = max_positions - max_new_tokens
    if original <= allowed:
        return ids, original, original
    prefix = f"{where}: " if where else ""
    what = f"task {task!r}, sample {sample_id!r}: the prompt has {original} tokens"
    room = (
        f"the model's {max_positions} positions minus {max_new_tokens} tokens of generation room "
        f"(max_new_tokens) leave {max(allowed, 0)}"
    )
    if allowed - len(ids.question) < 1:
        raise UserError(
            f"{prefix}{what}, of which {len(ids.question)} are the question and answer prompt; {room}, "
            "so no context fits even after truncation. Lower max_new_tokens (generation or the task's "
            "max_new_tokens), shorten the question, or use a model with more positions."
        )
    if mode == "error":
        raise UserError(
            f"{prefix}{what}; {room}. Set 'truncate: middle' in the suite (keeps the first and last parts "
            "of the context, as LongBench does), shorten the data (e.g. context_tokens, needle lengths), "
            "lower max_new_tokens, or use a model with more positions."
        )
    tail = max(allowed - allowed // 2, len(ids.question))  # kept from the end of the prompt
    head = allowed - tail  # kept from the start
    keep_ctx_tail = tail - len(ids.question)
    context = ids.context[:head] + (ids.context[len(ids.context) - keep_ctx_tail :] if keep_ctx_tail else [])
    return PromptIds(context=context, question=list(ids.question)), original, allowed
