"""T-SPIN + NLL anchor (tspin_kit/objectives/tspin_nll.py) on hand-computed values."""

import math

import torch

from tspin_kit import methods as M


def test_tspin_nll_literal_values_and_gradient():
    # lp(y) = -2, lp(y') = -3, lp(y0) = -4, n_tokens(y) = 4; alpha 1, beta 0.5, anchor 0.1
    a = torch.tensor([-2.0], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([-3.0], dtype=torch.float64, requires_grad=True)
    p = torch.tensor([-4.0], dtype=torch.float64, requires_grad=True)
    lp = M.LogProbs(annotated=a, synthetic=s, proto=p, annotated_tokens=torch.tensor([4.0], dtype=torch.float64))
    out = M.get("tspin_nll").loss(lp, {"alpha": 1.0, "beta": 0.5, "anchor": 0.1})
    l1 = math.log(1 + math.exp(-1.0))  # l(u) = l(v) = l(1) = 0.31326169
    assert out.losses.item() == pytest_approx(l1 + 0.5 * l1 + 0.1 * 2.0 / 4)  # 0.51989254
    assert out.current_term.item() == pytest_approx(l1) and out.historical_term.item() == pytest_approx(0.5 * l1)
    out.losses.sum().backward()
    sig = 1 / (1 + math.exp(1.0))  # sigmoid(-1) = 0.26894142
    assert a.grad.item() == pytest_approx(-sig - 0.1 / 4)  # T-SPIN's -alpha*w_cur, plus -anchor/n
    assert s.grad.item() == pytest_approx(sig - 0.5 * sig)
    assert p.grad.item() == pytest_approx(0.5 * sig)


def test_tspin_nll_with_no_anchor_is_tspin():
    g = torch.Generator().manual_seed(0)
    a, s, p = (torch.randn(6, generator=g, dtype=torch.float64) for _ in range(3))
    lp = M.LogProbs(annotated=a, synthetic=s, proto=p, annotated_tokens=torch.full((6,), 3.0, dtype=torch.float64))
    got = M.get("tspin_nll").loss(lp, {"alpha": 0.7, "beta": 0.2, "anchor": 0.0})
    want = M.get("tspin").loss(lp, {"alpha": 0.7, "beta": 0.2})
    torch.testing.assert_close(got.losses, want.losses, rtol=0, atol=1e-12)


def pytest_approx(x):
    import pytest

    return pytest.approx(x, abs=1e-9)
