"""The one prompt template, used for generation *and* training.

SPIN's released code sampled with ``### Instruction: ...`` but trained with the chat template; the model
was then trained on prompts it never generated from. Here every prompt goes through :func:`encode_prompt`
whichever phase asks, so the two can never differ.

Choice: ``auto`` uses the tokenizer's chat template when it has one, else :data:`PLAIN_TEMPLATE`, the
template printed in the T-SPIN paper.
"""

from __future__ import annotations

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
