"""Scoring under the current policy: the summed log-probs of several roles' responses in one call, and the task
score (exact-match accuracy with greedy decoding on toy tasks; otherwise the mean per-token log-likelihood of the
held-out annotated responses, higher is better)."""

from __future__ import annotations

import numpy as np

from . import toy
from .config import SamplingConfig
from .generation import sample_responses, score_responses

__all__ = ["score_roles", "task_score"]


def score_roles(
    model,
    prompt_ids: list[list[int]],
    ids: dict[str, list[list[int]]],
    *,
    pad_id: int,
    batch_size: int,
    desc: str,
    progress=None,
) -> dict[str, list[dict]]:
    """Score several roles of the same prompts in one call, so that each distinct (prompt, response) is forwarded
    once and each prompt once (y' == y and y0 == y repeat about half of the rows on the toy task)."""
    if not ids:
        return {}
    n = len(prompt_ids)
    flat = [r for role in ids for r in ids[role]]
    scored = score_responses(
        model, prompt_ids * len(ids), flat, pad_id=pad_id, batch_size=batch_size, desc=desc, progress=progress
    )
    return {role: scored[k * n : (k + 1) * n] for k, role in enumerate(ids)}


def task_score(world, sampling: SamplingConfig, progress=None) -> tuple[float, list[float]]:
    """The task score of ``world.model`` and its per-problem values (1/0 per problem, or per-token log-lik),
    kept so that intervals can resample test problems."""
    held = world.held_out_examples
    if world.score_name == "accuracy":
        out = sample_responses(
            world.model,
            world.tokenizer,
            held.prompt_ids,
            temperature=0.0,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_new_tokens=sampling.max_new_tokens,
            batch_size=sampling.batch_size,
            seed=0,
            desc="evaluate",
            progress=progress,
        )
        texts = [world.tokenizer.decode(x, skip_special_tokens=True) for x in out]
        per = [float(toy.is_correct(world.task, t, r["answer"])) for t, r in zip(texts, world.held_out)]
    else:
        scored = score_responses(
            world.model,
            held.prompt_ids,
            held.annotated_ids,
            pad_id=world.tokenizer.pad_token_id,
            batch_size=sampling.batch_size,
            desc="evaluate",
            progress=progress,
        )
        per = [s["logp"] / len(ids) for s, ids in zip(scored, held.annotated_ids)]
    return float(np.mean(per)), per
