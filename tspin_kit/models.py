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
        model = AutoModelForCausalLM.from_pretrained(
            src, dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code
        )
    except OSError as e:
        raise ModelError(f"model.name_or_path = {src!r}: could not load ({e})") from None
    check_tokenizer(tokenizer, src)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def max_length_of(model, tokenizer, cfg: ModelConfig) -> int:
    """The longest prompt allowed: ``model.max_length``, else the model's own limit."""
    if cfg.max_length is not None:
        return cfg.max_length
    return position_limit(model.config, tokenizer) or 2048


def position_limit(model_config, tokenizer=None) -> int | None:
    """Positions the model can take in one sequence (learned position tables index out of range past it),
    capped by the tokenizer's ``model_max_length``; None when neither says."""
    limit = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if tok_limit and tok_limit < 10**8:
        limit = min(limit, tok_limit) if limit else tok_limit
    return int(limit) if limit else None


def check_length_budget(
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    rows: list[dict],
    *,
    origin: str,
    prompt_limit: int,
    positions: int | None,
    max_new_tokens: int,
    prompt_field: str = "prompt",
    response_field: str = "response",
) -> None:
    """Every sequence a run will build fits the model, checked before anything is trained or sampled.

    A prompt must be shorter than ``prompt_limit`` (``model.max_length``); prompt + ``max_new_tokens`` + EOS
    (a sampled y' scored with its EOS) and prompt + y (with EOS) must fit in ``positions``. ``rows[i]["row"]``
    is the row of the source, so the message names the file's row, not the row after the split.
    """
    from .data import DataError

    for i, (p, y) in enumerate(zip(prompt_ids, response_ids)):
        row = rows[i].get("row", i)
        where = f"{origin}, row {row}, field {prompt_field!r}"
        if len(p) >= prompt_limit:
            raise DataError(
                f"{where}: the prompt is {len(p)} tokens after the template, but the model takes at "
                f"most {prompt_limit - 1} (model.max_length = {prompt_limit}); shorten or drop this row"
            )
        if positions is None:
            continue
        if len(p) + max_new_tokens + 1 > positions:
            raise DataError(
                f"{where}: the prompt is {len(p)} tokens after the template; with sampling.max_new_tokens = "
                f"{max_new_tokens} and EOS that is {len(p) + max_new_tokens + 1} positions, but the model has "
                f"{positions}; shorten this prompt or lower sampling.max_new_tokens to {positions - len(p) - 1}"
            )
        if len(p) + len(y) > positions:
            raise DataError(
                f"{origin}, row {row}, field {response_field!r}: prompt ({len(p)} tokens) + response with EOS "
                f"({len(y)} tokens) = {len(p) + len(y)} positions, but the model has {positions}; shorten or drop "
                f"this row"
            )


def apply_lora(model, cfg: ModelConfig):
    """Wrap in a peft LoRA adapter when cfg.lora_r > 0; the base weights stay frozen."""
    if cfg.lora_r == 0:
        return model
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_target_modules
    target_modules = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("LoRA r=%d on %s: %d trainable parameters", cfg.lora_r, targets, trainable)
    return model


def apply_gradient_checkpointing(model, cfg: ModelConfig):
    """Gradient checkpointing when ``cfg.gradient_checkpointing``: each transformer block keeps its input only and
    recomputes its activations in the backward (transformers' ``activation_checkpointing_enable``, formerly
    ``gradient_checkpointing_enable``; non-reentrant, so it composes with LoRA's frozen base weights; transformers
    checkpoints the block's ``forward``, so FSDP2's module hooks stay outside the recomputation). It acts in
    training mode only (generation and scoring run in eval mode and are unchanged). The model's ``use_cache``
    default is turned off: a training or scoring forward needs no KV cache, and generation asks for one
    explicitly. Call it before `apply_lora`.
    Same losses and gradients as without it (tested), more compute, less activation memory."""
    if not cfg.gradient_checkpointing:
        return model
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ModelError(
            f"model.gradient_checkpointing: {type(model).__name__} does not support gradient "
            f"checkpointing in transformers; set it to false"
        )
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x: the new name
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False
    return model
