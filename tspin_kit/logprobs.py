"""Summed response log-probs and the one batch layout for [y; y'; y0].

Everything that turns a model into log pi(z|x) goes through :func:`sequence_logps`; the next-token shift
lives here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SequenceLogps:
    summed: torch.Tensor  # (N,)   sum over response tokens of log pi(token | prefix)
    token_logps: torch.Tensor  # (N, T-1) per-position log-probs, 0 where the mask is off
    mask: torch.Tensor  # (N, T-1) True on response tokens
    entropy: torch.Tensor | None = None  # (N,) mean next-token entropy over response positions (nats)


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor,
                   *, with_entropy: bool = False) -> SequenceLogps:
    """log pi(response | prompt), summed over response tokens (no length normalisation, as in SPIN's code).

    logits: (N, T, V) from the model on input_ids (N, T); loss_mask (N, T) is True on response tokens.
    Position t of the logits predicts token t+1, so logits drop their last position and ids/mask their first.
    Equals ``log_softmax(logits).gather(-1, ids)`` (tested), computed as ``logit - logsumexp`` to avoid
    materialising a second (N, T, V) tensor.
    """
    # Upcast half precision to float32, but never downcast float64 (that would break the equality above).
    logits = logits[:, :-1, :].to(torch.promote_types(logits.dtype, torch.float32))  # (N, T-1, V)
    targets = input_ids[:, 1:]  # (N, T-1)
    mask = loss_mask[:, 1:].bool()  # (N, T-1)
    lse = torch.logsumexp(logits, dim=-1)  # (N, T-1)
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)  # (N, T-1)
    token_logps = (picked - lse) * mask
    entropy = None
    if with_entropy:
        with torch.no_grad():
            probs = torch.softmax(logits, dim=-1)
            ent = lse - (probs * logits).sum(-1)  # H = logsumexp - E_p[logit]
            entropy = (ent * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return SequenceLogps(summed=token_logps.sum(-1), token_logps=token_logps, mask=mask, entropy=entropy)


@dataclass
class Batch:
    input_ids: torch.Tensor  # (N, T) right-padded
    attention_mask: torch.Tensor  # (N, T) 1 on real tokens
    loss_mask: torch.Tensor  # (N, T) 1 on response tokens

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device))


def collate(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> Batch:
    """Right-padded prompt+response rows; loss only on response tokens.

    Training pads on the right (positions stay 0..len-1 for every row); generation pads on the left.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"collate: {len(prompts)} prompts but {len(responses)} responses")
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    # Build padded Python rows and convert once: one tensor per batch, not one per row (a hot path).
    ids, attn, loss = [], [], []
    for p, r in zip(prompts, responses):
        pad = width - len(p) - len(r)
        ids.append(p + r + [pad_id] * pad)
        attn.append([1] * (len(p) + len(r)) + [0] * pad)
        loss.append([0] * len(p) + [1] * len(r) + [0] * pad)
    as_long = lambda rows: torch.tensor(rows, dtype=torch.long)  # noqa: E731
    return Batch(as_long(ids), as_long(attn), as_long(loss))


def collate_triplets(prompts, annotated, synthetic, proto, pad_id: int) -> Batch:
    """Rows [y_0..y_{B-1}; y'_0..y'_{B-1}; y0_0..y0_{B-1}]: the layout every T-SPIN step uses.

    Split the model's summed log-probs back with ``.chunk(3)`` -> (annotated, synthetic, proto).
    """
    return collate(prompts * 3, annotated + synthetic + proto, pad_id)


def collate_pairs(prompts, annotated, synthetic, pad_id: int) -> Batch:
    """Rows [y; y'] for SPIN; split with ``.chunk(2)``."""
    return collate(prompts * 2, annotated + synthetic, pad_id)


def model_logps(model, batch: Batch, *, with_entropy: bool = False) -> SequenceLogps:
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return sequence_logps(logits, batch.input_ids, batch.loss_mask, with_entropy=with_entropy)


def rows_logps(model, prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> torch.Tensor:
    """Summed log-probs (N,) of every (prompt, response) row, each distinct row computed once.

    On verifiable tasks most rows repeat (y' == y for 50-70% of prompts, y0 == y as often): a repeated
    row gets the same log-prob anyway, so it is forwarded once and indexed back; autograd sums the
    gradients of its copies, which is exactly what the full batch would give.
    """
    keys = [(tuple(p), tuple(r)) for p, r in zip(prompts, responses)]
    first: dict = {}
    inverse = [first.setdefault(k, len(first)) for k in keys]
    if len(first) == len(keys):
        unique_p, unique_r = prompts, responses
    else:
        unique_p = [list(k[0]) for k in first]
        unique_r = [list(k[1]) for k in first]
    device = next(model.parameters()).device
    summed = model_logps(model, collate(unique_p, unique_r, pad_id).to(device)).summed
    if len(first) == len(keys):
        return summed
    return summed[torch.tensor(inverse, device=device)]
