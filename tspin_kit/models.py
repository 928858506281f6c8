"""Any causal LM + tokenizer, by hub id or local folder; full fine-tuning or LoRA via peft.

``trust_remote_code`` stays off unless the config asks. A tokenizer without a pad token is an error, not a
silent ``pad = eos``: padding with EOS hides the EOS the model must learn to emit, so we say what to do.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .config import ModelConfig

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelError(ValueError):
    """A model or tokenizer cannot be used as configured."""


def check_tokenizer(tokenizer, source: str) -> None:
    if tokenizer.pad_token_id is None:
        raise ModelError(
            f"{source}: the tokenizer has no pad token; set one before training, e.g. "
            f"tokenizer.add_special_tokens({{'pad_token': '<pad>'}}) and model.resize_token_embeddings(len(tokenizer)) "
            f"(padding with EOS would hide the EOS the model must learn)"
        )
    if tokenizer.eos_token_id is None:
        raise ModelError(f"{source}: the tokenizer has no EOS token; responses could never end")


def load_pretrained(cfg: ModelConfig):
    """(model, tokenizer) from a hub id or a local folder saved with save_pretrained."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = cfg.name_or_path
    looks_local = src.startswith((".", "/", "~")) or Path(src).exists()
    if looks_local and not Path(src).expanduser().exists():
        raise FileNotFoundError(f"model.name_or_path: {src} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code)
    except OSError as e:
        raise ModelError(f"model.name_or_path = {src!r}: could not load ({e})") from None
    check_tokenizer(tokenizer, src)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def max_length_of(model, tokenizer, cfg: ModelConfig) -> int:
    if cfg.max_length is not None:
        return cfg.max_length
    limit = getattr(model.config, "max_position_embeddings", None) or 2048
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if tok_limit and tok_limit < 10**8:
        limit = min(limit, tok_limit)
    return int(limit)


def apply_lora(model, cfg: ModelConfig):
    """Wrap in a peft LoRA adapter when cfg.lora_r > 0; the base weights stay frozen."""
    if cfg.lora_r == 0:
        return model
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_target_modules
    target_modules = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=target_modules, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("LoRA r=%d on %s: %d trainable parameters", cfg.lora_r, targets, trainable)
    return model
