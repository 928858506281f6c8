"""tspin_kit.templates: one prompt template for generation and training, plain fallback, EOS on responses."""

from __future__ import annotations

import pytest

from tspin_kit import toy
from tspin_kit.templates import (
    PLAIN_TEMPLATE,
    encode_prompt,
    encode_response,
    render_prompt,
    uses_chat_template,
)
from tspin_kit.training import build_examples


@pytest.fixture(scope="module")
def chat_tok():
    return toy.build_tokenizer()  # has a one-line chat template


@pytest.fixture(scope="module")
def plain_tok():
    tok = toy.build_tokenizer()
    tok.chat_template = None  # a tokenizer with no chat template, built in code
    return tok


def test_chat_template_is_used_when_present(chat_tok):
    assert uses_chat_template(chat_tok, "auto")
    # the toy chat template renders the user turn verbatim
    assert render_prompt(chat_tok, "12+34=") == "12+34="
    assert chat_tok.decode(encode_prompt(chat_tok, "12+34=")) == "12+34="


def test_plain_fallback_without_chat_template(plain_tok):
    assert not uses_chat_template(plain_tok, "auto")
    assert (
        render_prompt(plain_tok, "hi") == "### Instruction: hi\n\n### Response: " == PLAIN_TEMPLATE.format(prompt="hi")
    )
    assert plain_tok.decode(encode_prompt(plain_tok, "hi")) == "### Instruction: hi\n\n### Response: "


def test_plain_mode_overrides_a_chat_template(chat_tok):
    assert render_prompt(chat_tok, "hi", "plain") == PLAIN_TEMPLATE.format(prompt="hi")


def test_chat_mode_without_template_raises_clear_error(plain_tok):
    from tspin_kit.config import ConfigError

    with pytest.raises(ConfigError, match=r"model.prompt_template = 'chat'.*no chat_template"):
        encode_prompt(plain_tok, "hi", "chat")


@pytest.mark.parametrize("mode", ["auto", "plain"])
def test_same_prompt_ids_for_generation_and_training(chat_tok, plain_tok, mode):
    """Training builds its rows with build_examples; generation samples from the same prompt_ids.
    Both go through encode_prompt, so the ids the model generates from are the ids it is trained on."""
    for tok in (chat_tok, plain_tok):
        prompts = ["12+34=", "a longer prompt\nwith a newline"]
        ex = build_examples(tok, prompts, ["46", "ok"], mode)
        assert ex.prompt_ids == [encode_prompt(tok, p, mode) for p in prompts]


def test_response_ends_with_eos(chat_tok):
    ids = encode_response(chat_tok, "146")
    assert ids[-1] == chat_tok.eos_token_id
    assert chat_tok.decode(ids[:-1]) == "146"
    assert encode_response(chat_tok, "") == [chat_tok.eos_token_id]
