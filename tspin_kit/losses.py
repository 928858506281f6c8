"""Loss functions for SFT, SPIN and T-SPIN, over per-sequence summed log-probabilities.

Every loss here is a pure function: it takes ``(B,)`` tensors of summed response log-probs
log pi(z|x) (prompt tokens masked out, no length normalisation) and returns a dataclass with the
unreduced, differentiable per-example ``losses`` plus detached per-example diagnostics. The
caller owns the model calls and the reduction (the papers average over examples). The
Proposition 1 helpers at the bottom work on a finite candidate set and exist for tests and
teaching; training never calls them.

Notation (docs/methods/tspin.md: the loss, Theorem 1, every logged metric): y annotated ("real"), y' synthetic
(from the latest policy), y0 proto-synthetic (from pi_0, fixed), l(x) = -log sigmoid(x) = log(1 + exp(-x)).

T-SPIN (eq. 7), all three log-probs from the trainable policy, no reference model::

    u = log pi(y)  - log pi(y')          # current advantage
    v = log pi(y') - log pi(y0)          # historical advantage
    L = l(alpha * u) + beta * mask * l(alpha * v)
    rewards: alpha * log pi(z)

Gradient (Theorem 1), with l'(x) = -sigmoid(-x)::

    dL/d lp(y)  = -alpha * w_cur
    dL/d lp(y') = +alpha * w_cur - alpha * w_hist
    dL/d lp(y0) = +alpha * w_hist
    w_cur = sigmoid(-alpha * u),  w_hist = beta * mask * sigmoid(-alpha * v)

``current_weight`` and ``historical_weight`` in the outputs are these w_cur and w_hist.

"w/o H-A" ablation: T-SPIN with beta = 0 (``tspin_without_history_loss``); it equals a
reference-free SPIN with lam = alpha.

T-SPIN_ref ablation: the T-SPIN form with the reference-adjusted reward lam * (lp - ref_lp)::

    u = (lp(y) - ref(y)) - (lp(y') - ref(y'))
    v = (lp(y') - ref(y')) - (lp(y0) - ref(y0))
    L = l(lam * u) + beta * mask * l(lam * v)

SPIN (eq. 4.7), reference = the frozen previous-iteration policy pi_t::

    margin = (lp(y) - ref(y)) - (lp(y') - ref(y'))
    L = l(lam * margin)
    rewards: lam * (lp(z) - ref(z))

SFT: L = -lp(y) / n_tokens(y), the mean token negative log-likelihood of each example.

Departures from the papers and choices they leave open:

- T-SPIN_ref's formula is not printed in the T-SPIN paper; the form above is our natural reading
  (T-SPIN with SPIN's reward in place of alpha * log pi).
- The T-SPIN appendix prints l'(x) = -sigmoid(x) in Theorem 1; that is a sign typo. The
  derivative of -log sigmoid(x) is -sigmoid(-x), which is what the weights above use (and what
  autograd computes; the tests check both agree).
- ``historical_mask`` is ours, not the paper's: the caller passes ``proto != annotated`` so that
  the historical term, which pushes y' above y0, is dropped where y0 == y (there it would push y'
  above the annotated response itself).
- Reference log-probs are detached inside ``spin_loss`` and ``tspin_ref_loss``: the reference is
  frozen by definition, so no gradient reaches it even if a caller forgot ``torch.no_grad()``.
- ``current_advantage`` and ``historical_advantage`` are in log-prob units (not multiplied by
  alpha or lam); ``reward_margin`` is the reward difference reward(y) - reward(y').
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

__all__ = [
    "PairLossOutput",
    "SFTLossOutput",
    "TripletLossOutput",
    "entropy",
    "entropy_regularised_objective",
    "logistic_loss",
    "opponent_distribution",
    "sft_loss",
    "spin_loss",
    "tspin_loss",
    "tspin_ref_loss",
    "tspin_without_history_loss",
]


class _Record:
    """Mixin: every output turns into a dict of detached CPU tensors for run records."""

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name).detach().cpu() for f in fields(self)}


@dataclass(frozen=True)
class TripletLossOutput(_Record):
    """Per-example results of ``tspin_loss`` / ``tspin_ref_loss``; every field is ``(B,)``.

    Only ``losses`` carries gradient; the rest are detached.
    """

    losses: torch.Tensor  # l(s*u) + beta*mask*l(s*v), s = alpha (or lam); differentiable
    current_term: torch.Tensor  # l(s*u)
    historical_term: torch.Tensor  # beta * mask * l(s*v)
    annotated_rewards: torch.Tensor  # s*lp(y)   (T-SPIN_ref: s*(lp(y) - ref(y)))
    synthetic_rewards: torch.Tensor  # s*lp(y')
    proto_rewards: torch.Tensor  # s*lp(y0)
    current_advantage: torch.Tensor  # u, log-prob units
    historical_advantage: torch.Tensor  # v, log-prob units
    reward_margin: torch.Tensor  # reward(y) - reward(y') = s*u
    current_weight: torch.Tensor  # sigmoid(-s*u)
    historical_weight: torch.Tensor  # beta * mask * sigmoid(-s*v)
    historical_mask: torch.Tensor  # bool, True where the historical term is kept


@dataclass(frozen=True)
class PairLossOutput(_Record):
    """Per-example results of ``spin_loss``; every field is ``(B,)``, only ``losses`` has grad."""

    losses: torch.Tensor  # l(lam * margin); differentiable
    annotated_rewards: torch.Tensor  # lam * (lp(y) - ref(y))
    synthetic_rewards: torch.Tensor  # lam * (lp(y') - ref(y'))
    current_advantage: torch.Tensor  # (lp(y) - ref(y)) - (lp(y') - ref(y')), log-prob units
    reward_margin: torch.Tensor  # annotated_rewards - synthetic_rewards = lam * current_advantage
    current_weight: torch.Tensor  # sigmoid(-lam * current_advantage)


@dataclass(frozen=True)
class SFTLossOutput(_Record):
    """Per-example results of ``sft_loss``; ``(B,)``."""

    losses: torch.Tensor  # -lp(y) / n_tokens(y); differentiable


def logistic_loss(x: torch.Tensor) -> torch.Tensor:
    """l(x) = -log sigmoid(x) = log(1 + exp(-x)), computed stably for large |x|.

    >>> round(logistic_loss(torch.tensor(0.0)).item(), 6)  # log 2
    0.693147
    """
    # F.logsigmoid is exact in both tails; softplus(-x) switches to a linear branch at 20.
    return -F.logsigmoid(x)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _check_scalar(name: str, value: float, *, allow_zero: bool) -> float:
    bound = ">= 0" if allow_zero else "> 0"
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}") from None
    ok = value >= 0 if allow_zero else value > 0
    if not (ok and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return value


def _check_logps(**tensors: torch.Tensor) -> None:
    """All named tensors must be floating-point, 1-D and of one shape ``(B,)``."""
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (B,), got {type(t).__name__}")
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D of shape (B,), got shape {tuple(t.shape)}")
        if not torch.is_floating_point(t):
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.shape != first.shape:
            raise ValueError(f"{name} must have the shape of {first_name} {tuple(first.shape)}, got {tuple(t.shape)}")


def _check_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError(
            f"historical_mask must be a bool tensor of shape (B,), got {getattr(mask, 'dtype', type(mask).__name__)}"
        )
    if mask.shape != like.shape:
        raise ValueError(f"historical_mask must have shape {tuple(like.shape)}, got {tuple(mask.shape)}")
    return mask.to(like.device)


# ---------------------------------------------------------------------------------------------
# Triplet losses (T-SPIN and its ablations)
# ---------------------------------------------------------------------------------------------


def _triplet(
    annotated: torch.Tensor,
    synthetic: torch.Tensor,
    proto: torch.Tensor,
    *,
    scale: float,
    beta: float,
    mask: torch.Tensor,
) -> TripletLossOutput:
    """The shared T-SPIN form over per-example scores (log-probs, or log-probs minus reference)."""
    u = annotated - synthetic  # current advantage, (B,)
    v = synthetic - proto  # historical advantage, (B,)
    current = logistic_loss(scale * u)
    # torch.where, not a multiply: a masked-out -inf log-prob must not turn into 0 * inf = nan.
    historical = torch.where(mask, beta * logistic_loss(scale * v), torch.zeros_like(v))
    losses = current + historical
    with torch.no_grad():
        current_weight = torch.sigmoid(-scale * u)
        historical_weight = torch.where(mask, beta * torch.sigmoid(-scale * v), torch.zeros_like(v))
    return TripletLossOutput(
        losses=losses,
        current_term=current.detach(),
        historical_term=historical.detach(),
        annotated_rewards=(scale * annotated).detach(),
        synthetic_rewards=(scale * synthetic).detach(),
        proto_rewards=(scale * proto).detach(),
        current_advantage=u.detach(),
        historical_advantage=v.detach(),
        reward_margin=(scale * u).detach(),
        current_weight=current_weight,
        historical_weight=historical_weight,
        historical_mask=mask.detach(),
    )


def tspin_loss(
    annotated_logps: torch.Tensor,
    synthetic_logps: torch.Tensor,
    proto_logps: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    historical_mask: torch.Tensor | None = None,
) -> TripletLossOutput:
    """T-SPIN loss per example: l(alpha*u) + beta * mask * l(alpha*v).

    u = lp(y) - lp(y') and v = lp(y') - lp(y0), all three summed log-probs from the trainable
    policy (no reference model). The reward is alpha * lp.

    Args:
        annotated_logps: ``(B,)`` log pi_theta(y|x).
        synthetic_logps: ``(B,)`` log pi_theta(y'|x), y' sampled from the latest policy.
        proto_logps: ``(B,)`` log pi_theta(y0|x), y0 sampled once from pi_0.
        alpha: entropy coefficient and reward scale, > 0 (paper default 1.0).
        beta: weight of the historical advantage, >= 0 (paper default 0.1; 0 at iteration 0).
            beta = 0 is the "w/o H-A" ablation, equal to reference-free SPIN with lam = alpha.
        historical_mask: optional bool ``(B,)``; True keeps the historical term. Pass
            ``proto != annotated`` to drop it where y0 == y. None keeps it everywhere.

    Returns:
        ``TripletLossOutput`` with differentiable ``losses`` and detached diagnostics.

    Raises:
        ValueError: alpha <= 0, beta < 0, inputs not 1-D of one shape, or a bad mask.
        TypeError: an input is not a tensor.
    """
    alpha = _check_scalar("alpha", alpha, allow_zero=False)
    beta = _check_scalar("beta", beta, allow_zero=True)
    _check_logps(annotated_logps=annotated_logps, synthetic_logps=synthetic_logps, proto_logps=proto_logps)
    mask = _check_mask(historical_mask, annotated_logps)
    return _triplet(annotated_logps, synthetic_logps, proto_logps, scale=alpha, beta=beta, mask=mask)


def tspin_without_history_loss(
    annotated_logps: torch.Tensor,
    synthetic_logps: torch.Tensor,
    proto_logps: torch.Tensor,
    *,
    alpha: float,
) -> TripletLossOutput:
    """The "w/o H-A" ablation: ``tspin_loss`` with beta = 0 at every iteration.

    Equals reference-free SPIN with lam = alpha: l(alpha * (lp(y) - lp(y'))). ``proto_logps``
    is still taken so that its advantage and reward are recorded like T-SPIN's.
    """
    return tspin_loss(annotated_logps, synthetic_logps, proto_logps, alpha=alpha, beta=0.0)


def tspin_ref_loss(
    annotated_logps: torch.Tensor,
    synthetic_logps: torch.Tensor,
    proto_logps: torch.Tensor,
    ref_annotated_logps: torch.Tensor,
    ref_synthetic_logps: torch.Tensor,
    ref_proto_logps: torch.Tensor,
    *,
    lam: float,
    beta: float,
    historical_mask: torch.Tensor | None = None,
) -> TripletLossOutput:
    """T-SPIN_ref ablation: the T-SPIN form with SPIN's reward lam * (lp - ref_lp).

    u = (lp(y) - ref(y)) - (lp(y') - ref(y')), v = (lp(y') - ref(y')) - (lp(y0) - ref(y0)),
    L = l(lam*u) + beta * mask * l(lam*v). The paper does not print this formula; this is our
    reading. The reference log-probs (frozen pi_t) are detached. With all reference log-probs
    0 it equals ``tspin_loss`` with alpha = lam.

    Raises:
        ValueError: lam <= 0, beta < 0, inputs not 1-D of one shape, or a bad mask.
    """
    lam = _check_scalar("lam", lam, allow_zero=False)
    beta = _check_scalar("beta", beta, allow_zero=True)
    _check_logps(
        annotated_logps=annotated_logps,
        synthetic_logps=synthetic_logps,
        proto_logps=proto_logps,
        ref_annotated_logps=ref_annotated_logps,
        ref_synthetic_logps=ref_synthetic_logps,
        ref_proto_logps=ref_proto_logps,
    )
    mask = _check_mask(historical_mask, annotated_logps)
    return _triplet(
        annotated_logps - ref_annotated_logps.detach(),
        synthetic_logps - ref_synthetic_logps.detach(),
        proto_logps - ref_proto_logps.detach(),
        scale=lam,
        beta=beta,
        mask=mask,
    )


# ---------------------------------------------------------------------------------------------
# Pair loss (SPIN) and SFT
# ---------------------------------------------------------------------------------------------


def spin_loss(
    annotated_logps: torch.Tensor,
    synthetic_logps: torch.Tensor,
    ref_annotated_logps: torch.Tensor,
    ref_synthetic_logps: torch.Tensor,
    *,
    lam: float,
) -> PairLossOutput:
    """SPIN loss per example (eq. 4.7): l(lam * [(lp(y) - ref(y)) - (lp(y') - ref(y'))]).

    The reference is the frozen previous-iteration policy pi_t; its log-probs are detached.
    At the start of an iteration (policy == reference) every reward is 0 and the loss is log 2.

    Raises:
        ValueError: lam <= 0 or inputs not 1-D of one shape.
    """
    lam = _check_scalar("lam", lam, allow_zero=False)
    _check_logps(
        annotated_logps=annotated_logps,
        synthetic_logps=synthetic_logps,
        ref_annotated_logps=ref_annotated_logps,
        ref_synthetic_logps=ref_synthetic_logps,
    )
    annotated = annotated_logps - ref_annotated_logps.detach()  # log-ratio of y, (B,)
    synthetic = synthetic_logps - ref_synthetic_logps.detach()  # log-ratio of y', (B,)
    margin = annotated - synthetic
    losses = logistic_loss(lam * margin)
    with torch.no_grad():
        return PairLossOutput(
            losses=losses,
            annotated_rewards=lam * annotated,
            synthetic_rewards=lam * synthetic,
            current_advantage=margin.detach(),
            reward_margin=lam * margin,
            current_weight=torch.sigmoid(-lam * margin),
        )


def sft_loss(annotated_logps: torch.Tensor, annotated_token_counts: torch.Tensor) -> SFTLossOutput:
    """SFT loss per example: the mean token negative log-likelihood -lp(y) / n_tokens(y).

    ``annotated_token_counts`` holds the number of response tokens (incl. EOS) summed into
    ``annotated_logps``; every count must be > 0.

    Raises:
        ValueError: shapes differ or are not 1-D, or a count is <= 0.
    """
    _check_logps(annotated_logps=annotated_logps)
    counts = annotated_token_counts
    if not isinstance(counts, torch.Tensor) or counts.shape != annotated_logps.shape:
        raise ValueError(
            f"annotated_token_counts must be a tensor of shape {tuple(annotated_logps.shape)}, "
            f"got {tuple(getattr(counts, 'shape', ()))}"
        )
    if bool((counts <= 0).any()):
        raise ValueError("annotated_token_counts must be > 0 everywhere")
    return SFTLossOutput(losses=-annotated_logps / counts.to(annotated_logps.dtype))


# ---------------------------------------------------------------------------------------------
# Proposition 1 helpers (finite candidate set, last dimension = candidates)
# ---------------------------------------------------------------------------------------------


def opponent_distribution(confidences: torch.Tensor, alpha: float) -> torch.Tensor:
    """Proposition 1's optimal opponent: softmax(c / alpha) over the last dimension.

    It maximises sum(p * c) + alpha * H(p) over the simplex; alpha -> 0 tends to the argmax
    one-hot, alpha -> infinity to uniform.

    >>> opponent_distribution(torch.tensor([0.0, 0.0]), alpha=1.0).tolist()
    [0.5, 0.5]
    """
    alpha = _check_scalar("alpha", alpha, allow_zero=False)
    return torch.softmax(confidences / alpha, dim=-1)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last dimension, with 0 * log 0 = 0.

    >>> round(entropy(torch.tensor([0.5, 0.5, 0.0])).item(), 6)  # log 2
    0.693147
    """
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


def entropy_regularised_objective(probs: torch.Tensor, confidences: torch.Tensor, alpha: float) -> torch.Tensor:
    """The opponent's objective: sum(p * c) + alpha * H(p) over the last dimension.

    Its maximum over the simplex is alpha * logsumexp(c / alpha), reached at
    ``opponent_distribution(c, alpha)``. alpha >= 0 (alpha = 0 is the plain expectation).
    """
    alpha = _check_scalar("alpha", alpha, allow_zero=True)
    if probs.shape != confidences.shape:
        raise ValueError(
            f"probs and confidences must have one shape, got {tuple(probs.shape)} and {tuple(confidences.shape)}"
        )
    return (probs * confidences).sum(dim=-1) + alpha * entropy(probs)
