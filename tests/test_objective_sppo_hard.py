"""SPPO with hard wins (tspin_kit/objectives/sppo_hard.py) on hand-computed values."""

import pytest
import torch

from tspin_kit import methods as M


def test_sppo_hard_literal_values_and_gradient():
    # log-ratios to pi_t: y: -2 - (-2.5) = 0.5, y': -3 - (-2.8) = -0.2; eta = 1
    a = torch.tensor([-2.0], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([-3.0], dtype=torch.float64, requires_grad=True)
    ref = dict(
        ref_annotated=torch.tensor([-2.5], dtype=torch.float64), ref_synthetic=torch.tensor([-2.8], dtype=torch.float64)
    )
    out = M.get("sppo_hard").loss(M.LogProbs(annotated=a, synthetic=s, **ref), {"eta": 1.0})
    assert out.losses.item() == pytest.approx((0.5 - 0.5) ** 2 + (-0.2 + 0.5) ** 2, abs=1e-12)  # 0.09
    assert out.reward_margin.item() == pytest.approx(0.7, abs=1e-12)
    assert out.historical_term.item() == 0.0 and torch.isnan(out.current_weight).all()
    out.losses.sum().backward()
    assert a.grad.item() == pytest.approx(0.0, abs=1e-12)  # y sits at its target +eta/2
    assert s.grad.item() == pytest.approx(2 * 0.3, abs=1e-12)  # y' is 0.3 above its target -eta/2: pushed down


def test_sppo_hard_reads_the_reference():
    lp = M.LogProbs(annotated=torch.zeros(2, dtype=torch.float64), synthetic=torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="ref_annotated"):
        M.get("sppo_hard").loss(lp, {"eta": 1.0})
    with pytest.raises(ValueError, match="eta must be a finite number > 0"):
        M.get("sppo_hard").loss(lp, {"eta": -1.0})
