"""The one prompt template, used for generation *and* training.

SPIN's released code sampled with ``### Instruction: ...`` but trained with the chat template; the model
was then trained on prompts it never generated from. Here every prompt goes through :func:`encode_prompt`
whichever phase asks, so the two can never differ.

Choice: ``auto`` uses the tokenizer's chat template when it has one, else :data:`PLAIN_TEMPLATE`, the
template printed in the T-SPIN paper.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

PLAIN_TEMPLATE = "### Instruction: {prompt}\n\n### Response: "


def uses_chat_template(tokenizer, mode: str = "auto") -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "chat" and not has:
        from .config import ConfigError  # a ValueError that `tspin` reports as a bad setting (exit code 2)

        raise ConfigError(
            "model.prompt_template = 'chat' but the tokenizer has no chat_template; "
            "use 'plain' or 'auto' (which falls back to the plain template)"
        )
    return has and mode != "plain"


def render_prompt(tokenizer, prompt: str, mode: str = "auto") -> str:
    """The text the model sees before its response."""
    if uses_chat_template(tokenizer, mode):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return PLAIN_TEMPLATE.format(prompt=prompt)


def encode_prompt(tokenizer, prompt: str, mode: str = "auto") -> list[int]:
    text = render_prompt(tokenizer, prompt, mode)
    # A chat template writes its own BOS into the text; the plain template relies on the tokenizer's.
    add_special = not uses_chat_template(tokenizer, mode)
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def encode_response(tokenizer, response: str) -> list[int]:
    """Response tokens followed by EOS (the model must learn to stop; SPIN appends EOS too)."""
    ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    return ids + [tokenizer.eos_token_id]


def describe_template(tokenizer, mode: str = "auto") -> dict:
    """What a run records about its template: the mode asked for, the one used, and the text around a
    prompt (``{prompt}`` marks where it goes). ``auto`` falling back to plain is logged, not silent."""
    chat = uses_chat_template(tokenizer, mode)
    if mode == "auto" and not chat:
        logger.warning(
            "the tokenizer has no chat template: prompts use the plain template %r "
            "(set model.prompt_template: plain to say so)",
            PLAIN_TEMPLATE,
        )
    text = render_prompt(tokenizer, "{prompt}", mode)
    return {
        "requested": mode,
        "used": "chat" if chat else "plain",
        "text": text,
        "separator": not text.endswith("{prompt}"),
    }


def token_strings(tokenizer, ids: list[int], cache: dict | None = None) -> list[str]:
    """The text of each token of ``ids``, for per-token displays on any tokenizer (BPE, SentencePiece,
    characters). Byte-level BPE's ``Ġword`` becomes `` word``, SentencePiece's ``▁word`` becomes `` word``;
    special tokens keep their name (``<eos>``). A byte split across tokens shows as U+FFFD. ``cache`` (a
    dict kept by the caller) memoises per token id, so a run pays once per vocabulary entry it meets."""
    cache = {} if cache is None else cache
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = []
    for i in ids:
        i = int(i)
        s = cache.get(i)
        if s is None:
            tok = tokenizer.convert_ids_to_tokens(i)
            if tok is None:
                s = ""
            elif i in special:
                s = tok
            else:
                s = tokenizer.convert_tokens_to_string([tok])
                if tok.startswith("\u2581") and not s.startswith(" "):  # SentencePiece drops a leading space
                    s = " " + s
            cache[i] = s
        out.append(s)
    return out
