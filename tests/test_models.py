"""tspin_kit.models: loading a saved folder, the pad/EOS checks, LoRA via peft, max length."""

from __future__ import annotations

import pytest
import torch

from tspin_kit import toy
from tspin_kit.config import ModelConfig
from tspin_kit.models import ModelError, apply_lora, check_tokenizer, load_pretrained, max_length_of


def test_load_a_saved_folder(tiny_model_dirs):
    model, tok = load_pretrained(ModelConfig(name_or_path=str(tiny_model_dirs["plain"])))
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.hidden_size == 32
    assert tok.pad_token_id == 0 and tok.eos_token_id == 2 and not tok.chat_template
    assert model.generation_config.pad_token_id == 0
    assert next(model.parameters()).dtype == torch.float32
    chat_model, chat_tok = load_pretrained(
        ModelConfig(name_or_path=str(tiny_model_dirs["chat"]), dtype="bfloat16")
    )
    assert chat_tok.chat_template == toy.CHAT_TEMPLATE
    assert next(chat_model.parameters()).dtype == torch.bfloat16


def test_missing_folder_and_unknown_hub_id(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"model.name_or_path: .*/nothing does not exist"):
        load_pretrained(ModelConfig(name_or_path=str(tmp_path / "nothing")))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        ModelError, match=r"model.name_or_path = 'nobody-xyz/not-a-model': could not load"
    ):
        load_pretrained(ModelConfig(name_or_path="nobody-xyz/not-a-model"))


def test_tokenizer_without_pad_token_is_an_error(tiny_model_dirs):
    with pytest.raises(
        ModelError, match=r"no_pad: the tokenizer has no pad token; set one before training"
    ):
        load_pretrained(ModelConfig(name_or_path=str(tiny_model_dirs["no_pad"])))


def test_tokenizer_without_eos_is_an_error():
    tok = toy.build_tokenizer()
    tok.eos_token = None
    with pytest.raises(ModelError, match="no EOS token"):
        check_tokenizer(tok, "mine")


def test_apply_lora_freezes_the_base():
    tok = toy.build_tokenizer()
    base = toy.build_model(tok, seed=0)
    assert apply_lora(base, ModelConfig(lora_r=0)) is base
    n_base = sum(p.numel() for p in base.parameters())
    model = apply_lora(toy.build_model(tok, seed=0), ModelConfig(lora_r=4))
    trainable = {k: p for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in k for k in trainable)
    assert sum(p.numel() for p in trainable.values()) < n_base / 10
    # LoRA B starts at zero: the wrapped model computes what the base computes
    ids = torch.tensor([[1, 20, 21, 22]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, base(input_ids=ids).logits)
    only_q = apply_lora(
        toy.build_model(tok, seed=0), ModelConfig(lora_r=2, lora_target_modules="q_proj, v_proj")
    )
    names = {
        k.split(".lora_")[0].rsplit(".", 1)[-1]
        for k, p in only_q.named_parameters()
        if p.requires_grad
    }
    assert names == {"q_proj", "v_proj"}


def test_max_length_of(tiny_model_dirs):
    model, tok = load_pretrained(ModelConfig(name_or_path=str(tiny_model_dirs["plain"])))
    assert (
        max_length_of(model, tok, ModelConfig()) == 256
    )  # the toy model and tokenizer both say 256
    assert max_length_of(model, tok, ModelConfig(max_length=64)) == 64
    tok.model_max_length = int(1e30)  # "no limit" sentinel of tokenizers without one
    model.config.max_position_embeddings = 128
    assert max_length_of(model, tok, ModelConfig()) == 128
