"""SPPO's squared loss on SPIN's pairs, with hard win probabilities (docs/methods/sppo_hard.md).

Self-Play Preference Optimization (Wu et al., 2024, arXiv 2405.00675) regresses each response's log-ratio to
the previous policy onto its estimated win rate: (log(π(z)/π_t(z)) − η·(P(z ≻ π_t) − 1/2))². Without a
preference model, SPIN's premise gives the win rates: the annotated y wins (P = 1), the synthetic y' loses
(P = 0)::

    L = (log π(y)/π_t(y) − η/2)² + (log π(y')/π_t(y') + η/2)²
"""

from __future__ import annotations

import math

import torch

from ..methods import PAIR, Knobs, LogProbs, Terms, knob, register

knob(
    "eta",
    1.0,
    "η",
    "SPPO's step size: the log-ratio target is +eta/2 for y (wins) and -eta/2 for y' (loses)",
    slider=(0.05, 20.0),
)


@register(
    name="sppo_hard",
    label="SPPO (hard wins)",
    color="#a6761d",
    roles=PAIR,
    knobs=("eta",),
    reference=True,
    scale="eta",
    doc="docs/methods/sppo_hard.md",
    formula="L = (log π(y)/π_t(y) − η/2)² + (log π(y')/π_t(y') + η/2)²",
    summary="SPPO's squared log-ratio regression with y winning and y' losing",
)
def sppo_hard(lp: LogProbs, k: Knobs) -> Terms:
    ra = lp.annotated - lp.need("ref_annotated").detach()  # log-ratio of y to pi_t
    rs = lp.synthetic - lp.need("ref_synthetic").detach()
    losses = (ra - k.eta / 2) ** 2 + (rs + k.eta / 2) ** 2
    with torch.no_grad():
        zeros = torch.zeros_like(ra)
        rp = lp.proto_ratio(ra)
        v = rs - rp
        return Terms(
            losses=losses,
            current_term=losses.detach(),
            historical_term=zeros,
            annotated_rewards=ra.detach(),
            synthetic_rewards=rs.detach(),
            proto_rewards=rp.detach(),
            current_advantage=(ra - rs).detach(),
            historical_advantage=v.detach(),
            reward_margin=(ra - rs).detach(),
            current_weight=torch.full_like(ra, math.nan),
            historical_weight=zeros,
        )
