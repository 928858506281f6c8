"""The training examples of one iteration: each annotated (x, y) with this iteration's y' and the fixed y0, plus
what the method's loss reads besides the policy (the reference pi_t's log-probs, the y0 == y mask), and SPIN's
option of also training on the previous iteration's y'.

Pure assembly from what the generate phase recorded (`generated.parquet`): no model runs here, except the one
scoring call ``score_previous`` that ``mix_previous`` needs for a reference method.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch

from .config import MethodConfig
from .training import Examples

__all__ = ["assemble", "with_eos"]


def with_eos(ids, eos: int) -> list[list[int]]:
    return [list(map(int, x)) + [eos] for x in ids]


def assemble(
    examples: Examples,
    generated: pd.DataFrame,
    proto_ids: list[list[int]],
    method: MethodConfig,
    *,
    eos: int,
    previous: pd.DataFrame | None = None,
    score_previous: Callable[[list[list[int]]], list[float]] | None = None,
) -> Examples:
    """`Examples` with y', y0 (EOS appended), the reference log-probs pi_t recorded at generate time (reference
    methods: ``*_logp_before``), the y0 == y mask (``method.mask_proto_equal_annotated``), and, with
    ``method.mix_previous`` and a ``previous`` iteration's generated frame, a second copy of every example with
    the previous y' (its reference log-prob from ``score_previous``, under the current pi_t)."""
    syn = with_eos(generated["synthetic_ids"], eos)
    proto = with_eos(proto_ids, eos)
    out = Examples(examples.prompt_ids, examples.annotated_ids, syn, proto)
    if method.uses_reference:
        ref = {
            r: torch.tensor(generated[f"{r}_logp_before"].to_numpy(), dtype=torch.float32)
            for r in ("annotated", "synthetic", "proto")
        }
        out.ref_annotated, out.ref_synthetic, out.ref_proto = ref["annotated"], ref["synthetic"], ref["proto"]
    if method.mask_proto_equal_annotated:
        out.historical_mask = torch.tensor([p != a for p, a in zip(proto, examples.annotated_ids)])
    if method.mix_previous and previous is not None:
        prev_syn = with_eos(previous["synthetic_ids"], eos)
        extra = Examples(examples.prompt_ids, examples.annotated_ids, prev_syn, proto)
        if method.uses_reference:
            extra.ref_annotated, extra.ref_proto = out.ref_annotated, out.ref_proto
            extra.ref_synthetic = torch.tensor(score_previous(prev_syn))
        extra.historical_mask = out.historical_mask
        out = out.concat(extra)
    return out
