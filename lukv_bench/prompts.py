"""Turn a sample into token ids, split into the part to compress and the question that follows."""

from __future__ import annotations

from dataclasses import dataclass

from lukv_bench.tasks.base import Sample


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
    """Render the sample (chat template when ``chat``) and split it before the question block.

    Both protocols use the same ids, so ``compress: prompt`` and ``compress: context`` differ only
    in what is compressed, never in tokenisation.
    """
    context_block, question_block = sample.blocks()
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": context_block + question_block}], tokenize=False, add_generation_prompt=True
        )
        cut = text.rfind(question_block) if question_block else len(text)
        if cut < 0:
            raise ValueError(f"sample {sample.id}: question not found in the rendered chat prompt")
        head, tail = text[:cut], text[cut:]
        add_special = False
    else:
        head, tail = context_block, question_block + "\nAnswer:"
        add_special = True
    ctx = tokenizer(head, add_special_tokens=add_special)["input_ids"]
    q = tokenizer(tail, add_special_tokens=False)["input_ids"]
    return PromptIds(context=list(ctx), question=list(q))
