"""A run's world: the accelerator, pi_0 (model and tokenizer), the annotated rows and the held-out ones, their
token ids, the prompt template and the task score's name. `SelfPlaySession.prepare` loads it once; every phase
reads it.

Loading checks every row's length budget up front (a long row is a one-line error naming the file, its row and
field, never an IndexError halfway through sampling), and makes or finds the cached toy pi_0 on the main process
first, so the other processes only load it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

from . import toy
from .config import RunConfig
from .generation import derive_seed
from .templates import PLAIN_TEMPLATE
from .training import Examples, build_examples

logger = logging.getLogger(__name__)

__all__ = ["World", "load_world"]


@dataclass
class World:
    accelerator: Any
    model: Any
    tokenizer: Any
    task: str | None  # the toy task ("addition", ...) or None for the user's own data
    train_rows: list[dict]  # annotated rows (prompt, response, and answer on toy tasks)
    held_out: list[dict]  # held-out rows of the task score
    examples: Examples  # token ids of train_rows
    held_out_examples: Examples  # token ids of held_out
    template_mode: str  # "plain" or "chat": how prompts are written (templates.py)
    template: dict  # describe_template(...) plus the requested mode, recorded in the manifest
    max_length: int | None
    score_name: str  # "accuracy" (toy tasks) or "heldout_token_logp"
    pi0_info: dict = field(default_factory=dict)  # where pi_0 came from (shipped, cached, pretrained)


def _rows(config: RunConfig) -> tuple[str | None, list[dict], list[dict], list[dict]]:
    """(task, train rows, held-out rows, the rows the toy pi_0 is SFT-ed on)."""
    cfg = config
    src = cfg.data.source
    task = src.split(":", 1)[1] if src.startswith("toy:") else None
    if task is not None:
        pool = max(cfg.data.num_examples or 0, cfg.model.toy_sft_examples)
        train, held_out = toy.make_world(task, pool, cfg.data.eval_size, cfg.data.seed)
        rows = train[: cfg.data.num_examples] if cfg.data.num_examples else train
        if cfg.data.fraction is not None:
            rows = rows[: max(1, int(round(cfg.data.fraction * len(rows))))]
        return task, rows, held_out, train[: cfg.model.toy_sft_examples]
    train_ds, eval_ds = cfg.data.load()  # rows carry "row", their row in the source file
    rows = [dict(r) for r in train_ds]
    return None, rows, [dict(r) for r in eval_ds], [{k: v for k, v in r.items() if k != "row"} for r in rows]


def token_ids(config: RunConfig, task, train_rows, held_out, tokenizer, model_config, template_mode: str):
    """(examples, held-out examples, template) with the whole length budget (prompt + max_new_tokens + EOS,
    prompt + y) checked up front."""
    from .data import describe_source
    from .models import check_length_budget, position_limit
    from .templates import describe_template

    cfg = config
    if isinstance(model_config, dict):
        model_config = SimpleNamespace(**model_config)
    positions = position_limit(model_config, tokenizer)
    prompt_limit = cfg.model.max_length or positions or 2048
    origin = f"data.source {cfg.data.source!r}" if task is not None else describe_source(cfg.data.source)
    template = {**describe_template(tokenizer, template_mode), "requested": cfg.model.prompt_template}
    out = []
    for rows in (train_rows, held_out):
        ex = build_examples(tokenizer, [r["prompt"] for r in rows], [r["response"] for r in rows], template_mode, None)
        check_length_budget(
            ex.prompt_ids,
            ex.annotated_ids,
            rows,
            origin=origin,
            prompt_limit=prompt_limit,
            positions=positions,
            max_new_tokens=cfg.sampling.max_new_tokens,
            prompt_field=cfg.data.prompt_column,
            response_field=cfg.data.response_column,
        )
        out.append(ex)
    return out[0], out[1], template


def load_world(config: RunConfig) -> World:
    from accelerate import Accelerator

    from .models import apply_gradient_checkpointing, apply_lora, check_tokenizer, load_pretrained, max_length_of
    from .sharding import check_supported, keep_policy_whole

    cfg = config
    accelerator = Accelerator(cpu=cfg.cpu or not torch.cuda.is_available())
    check_supported(accelerator, cfg.train)  # DeepSpeed, FSDP1, ... stop here, not at the first train
    keep_policy_whole(accelerator)  # under DeepSpeed: transformers loads and generates as without it
    task, train_rows, held_out, pi0_rows = _rows(cfg)
    # The toy tokenizer's chat template is a bare concatenation made for `a+b=` prompts; on a user's own
    # text it would run prompt and response together, so `auto` takes the plain template there.
    toy_on_text = cfg.model.name_or_path == "toy" and task is None and cfg.model.prompt_template == "auto"
    template_mode = "plain" if toy_on_text else cfg.model.prompt_template
    if toy_on_text:
        logger.info("toy model on your own data: prompts use the plain template %r", PLAIN_TEMPLATE)
    pi0_info: dict = {}
    if cfg.model.name_or_path == "toy":
        # Check every prompt's length budget before pi_0 is trained (the toy tokenizer is built in code).
        token_ids(
            cfg,
            task,
            train_rows,
            held_out,
            toy.build_tokenizer(),
            {"max_position_embeddings": toy.ToyModelSize().max_position_embeddings},
            template_mode,
        )
        # The main process makes (or finds) the cached pi_0; the others then load it.
        with accelerator.main_process_first():
            model, tokenizer = toy.initial_policy(
                task or "text",
                pi0_rows,
                toy.InitialPolicySettings(epochs=cfg.model.toy_sft_epochs, seed=cfg.model.toy_pi0_seed),
                cpu=accelerator.device.type == "cpu",
                info=pi0_info,
                template=template_mode,
            )
    else:
        pi0_info = {"source": "pretrained", "name_or_path": cfg.model.name_or_path}
        model, tokenizer = load_pretrained(cfg.model)
    check_tokenizer(tokenizer, cfg.model.name_or_path)
    model = apply_gradient_checkpointing(model, cfg.model)  # model.gradient_checkpointing
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(cfg.seed, "lora"))
        model = apply_lora(model, cfg.model)
    model.to(accelerator.device)
    max_length = max_length_of(model, tokenizer, cfg.model)
    examples, held_out_examples, template = token_ids(
        cfg, task, train_rows, held_out, tokenizer, model.config, template_mode
    )
    if task is None and not template["separator"]:
        logger.warning(
            "the prompt template puts nothing between a prompt and its response (%r): the model "
            "cannot tell where the prompt ends",
            template["text"],
        )
    return World(
        accelerator=accelerator,
        model=model,
        tokenizer=tokenizer,
        task=task,
        train_rows=train_rows,
        held_out=held_out,
        examples=examples,
        held_out_examples=held_out_examples,
        template_mode=template_mode,
        template=template,
        max_length=max_length,
        score_name="accuracy" if task in toy.TASKS else "heldout_token_logp",
        pi0_info=pi0_info,
    )
