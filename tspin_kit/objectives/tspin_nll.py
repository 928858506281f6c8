"""T-SPIN with an NLL anchor on the annotated response (docs/methods/tspin_nll.md).

Pairwise self-play and preference losses only ask that y beat y'; both log-probs may fall together, and DPO
and SPIN users report exactly that (log pi(y) drops while the margin grows). A per-token negative
log-likelihood term on y, weighted by ``anchor``, holds log pi(y) up::

    L = l(α·u) + β·mask·l(α·v) + anchor · (−log π(y) / n_tokens(y))
"""

from __future__ import annotations

from .. import losses as L
from ..methods import TRIPLET, Knobs, LogProbs, Terms, knob, register

knob(
    "anchor",
    0.1,
    "γ",
    "weight of the NLL anchor on the annotated response: anchor * (-log pi(y) / n_tokens(y))",
    allow_zero=True,
    log_slider=False,
    slider=(0.0, 1.0),
)


@register(
    name="tspin_nll",
    label="T-SPIN + NLL anchor",
    color="#33a02c",
    roles=TRIPLET,
    knobs=("alpha", "beta", "anchor"),
    history=True,
    scale="alpha",
    logistic=True,
    maskable=True,
    doc="docs/methods/tspin_nll.md",
    formula="L = l(α·u) + β·l(α·v) + γ·(−log π(y) / n_tokens(y))",
    summary="T-SPIN plus a per-token NLL anchor on y, against falling log pi(y)",
)
def tspin_nll(lp: LogProbs, k: Knobs) -> Terms:
    out = Terms.from_triplet(
        L.tspin_loss(
            lp.annotated, lp.synthetic, lp.proto, alpha=k.alpha, beta=k.beta, historical_mask=lp.historical_mask
        )
    )
    nll = -lp.annotated / lp.need("annotated_tokens").to(lp.annotated.dtype)
    # the anchor is its own term: current_term and historical_term stay T-SPIN's, the loss is their sum + it
    return out.replace(losses=out.losses + k.anchor * nll)
