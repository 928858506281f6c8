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
    chat_model, chat_tok = load_pretrained(ModelConfig(name_or_path=str(tiny_model_dirs["chat"]), dtype="bfloat16"))
    assert chat_tok.chat_template == toy.CHAT_TEMPLATE
    assert next(chat_model.parameters()).dtype == torch.bfloat16


def test_missing_folder_and_unknown_hub_id(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"model.name_or_path: .*/nothing does not exist"):
        load_pretrained(ModelConfig(name_or_path=str(tmp_path / "nothing")))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match=r"model.name_or_path = 'nobody-xyz/not-a-model': could not load"):
        load_pretrained(ModelConfig(name_or_path="nobody-xyz/not-a-model"))


def test_tokenizer_without_pad_token_is_an_error(tiny_model_dirs):
    with pytest.raises(ModelError, match=r"no_pad: the tokenizer has no pad token; set one before training"):
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
    only_q = apply_lora(toy.build_model(tok, seed=0), ModelConfig(lora_r=2, lora_target_modules="q_proj, v_proj"))
    names = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k, p in only_q.named_parameters() if p.requires_grad}
    assert names == {"q_proj", "v_proj"}


def test_max_length_of(tiny_model_dirs):
    model, tok = load_pretrained(ModelConfig(name_or_path=str(tiny_model_dirs["plain"])))
    assert max_length_of(model, tok, ModelConfig()) == 256  # the toy model and tokenizer both say 256
    assert max_length_of(model, tok, ModelConfig(max_length=64)) == 64
    tok.model_max_length = int(1e30)  # "no limit" sentinel of tokenizers without one
    model.config.max_position_embeddings = 128
    assert max_length_of(model, tok, ModelConfig()) == 128


@pytest.mark.parametrize("lora_r", [0, 4])
def test_gradient_checkpointing_gives_the_same_training(pi0, toy_world, lora_r):
    """model.gradient_checkpointing recomputes each block in the backward (counted) and trains to the same losses
    and weights as without it, full fine-tuning and LoRA."""
    import copy

    from tspin_kit.config import MethodConfig, TrainConfig
    from tspin_kit.models import apply_gradient_checkpointing
    from tspin_kit.training import build_examples, train_iteration

    base, tok = pi0
    rows = toy_world[0][:16]
    ex = build_examples(tok, [r["prompt"] for r in rows], [r["response"] for r in rows])
    ex.synthetic_ids = ex.annotated_ids[1:] + ex.annotated_ids[:1]  # wrong sums shaped like right ones
    ex.proto_ids = ex.annotated_ids[2:] + ex.annotated_ids[:2]
    runs = {}
    for on in (False, True):
        cfg = ModelConfig(gradient_checkpointing=on, lora_r=lora_r)
        model = apply_gradient_checkpointing(copy.deepcopy(base), cfg)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = apply_lora(model, cfg)
        core = model.get_base_model() if lora_r else model
        assert core.is_gradient_checkpointing is on and core.config.use_cache is (not on)
        calls = []
        # transformers checkpoints a block's forward (its own hooks stay outside), and the recomputation stops once
        # it has what the backward needs: a pre-hook on the block's MLP sees the forward and the recomputation
        hook = core.model.layers[0].mlp.register_forward_pre_hook(lambda *a, calls=calls: calls.append(1))
        res = train_iteration(
            model,
            ex,
            method=MethodConfig(name="tspin"),
            train=TrainConfig(optimizer="adamw", lr=1e-3, epochs=3, batch_size=16, warmup_ratio=0.0),
            iteration=1,
            seed=0,
            cpu=True,
        )
        hook.remove()
        # one forward per step, and with checkpointing one recomputation per step in the backward
        assert len(calls) == (6 if on else 3), calls
        runs[on] = (res.step_losses, {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad})
    (loss_off, w_off), (loss_on, w_on) = runs[False], runs[True]
    torch.testing.assert_close(torch.tensor(loss_on), torch.tensor(loss_off), atol=1e-5, rtol=0)
    assert w_on.keys() == w_off.keys() and w_off
    for k in w_off:
        torch.testing.assert_close(w_on[k], w_off[k], atol=1e-5, rtol=0, msg=k)
    assert any(not torch.equal(w_off[k], dict(base.named_parameters()).get(k, w_off[k] + 1)) for k in w_off)


def test_gradient_checkpointing_config_switch():
    assert ModelConfig().gradient_checkpointing is False
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        ModelConfig(gradient_checkpointing="yes")
