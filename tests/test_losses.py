"""Tests for tspin_kit.losses: literal values, the method's invariants (each test below names one), Theorem 1.

Inputs are chosen so that the logistic loss l(x) = log(1 + exp(-x)) lands on exact numbers:
l(0) = log 2, l(ln 3) = log(1 + 1/3) = log(4/3), l(-ln 3) = log(1 + 3) = log 4,
sigmoid(0) = 1/2, sigmoid(-ln 3) = 1/4, sigmoid(ln 3) = 3/4.
"""

from __future__ import annotations

import math

import pytest
import torch

from tspin_kit.losses import (
    PairLossOutput,
    SFTLossOutput,
    TripletLossOutput,
    entropy,
    entropy_regularised_objective,
    logistic_loss,
    opponent_distribution,
    sft_loss,
    spin_loss,
    tspin_loss,
    tspin_ref_loss,
    tspin_without_history_loss,
)

LOG2 = math.log(2.0)
LN3 = math.log(3.0)
F64 = torch.float64


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def close(actual: torch.Tensor, expected, atol: float = 1e-12) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# ---------------------------------------------------------------------------------------------
# Literal values
# ---------------------------------------------------------------------------------------------


def test_logistic_loss_literal_values():
    # l(0) = log 2; l(ln 3) = log(4/3); l(-ln 3) = log 4; l(1000) ~ 0 and l(-1000) = 1000 (no inf).
    close(logistic_loss(t(0.0, LN3, -LN3)), [LOG2, math.log(4 / 3), math.log(4)])
    close(logistic_loss(t(1000.0, -1000.0)), [0.0, 1000.0])


def test_tspin_loss_literal_values():
    """alpha = 2, beta = 0.5, three examples.

    row 0: lp(y) = lp(y') = lp(y0) = -4        -> u = 0, v = 0
        current = l(0) = log 2, historical = 0.5 * log 2, total 1.5 log 2
        w_cur = sigmoid(0) = 1/2, w_hist = 0.5 * 1/2 = 1/4
    row 1: lp(y) = -3, lp(y') = -3 - ln3/2, lp(y0) = -3
        u = ln3/2 -> alpha*u = ln 3:  current = log(4/3),  w_cur = sigmoid(-ln 3) = 1/4
        v = -ln3/2 -> alpha*v = -ln 3: historical = 0.5 * log 4 = log 2,
                                      w_hist = 0.5 * sigmoid(ln 3) = 0.5 * 3/4 = 3/8
    row 2 (mask False): lp(y) = -6 - ln3/2, lp(y') = -6, lp(y0) = -10
        u = -ln3/2 -> alpha*u = -ln 3: current = log 4, w_cur = 3/4
        historical dropped: term 0, weight 0; v = 4 is still reported.
    """
    annotated = t(-4.0, -3.0, -6.0 - LN3 / 2)
    synthetic = t(-4.0, -3.0 - LN3 / 2, -6.0)
    proto = t(-4.0, -3.0, -10.0)
    mask = torch.tensor([True, True, False])
    out = tspin_loss(annotated, synthetic, proto, alpha=2.0, beta=0.5, historical_mask=mask)

    assert isinstance(out, TripletLossOutput)
    close(out.current_term, [LOG2, math.log(4 / 3), math.log(4)])
    close(out.historical_term, [0.5 * LOG2, LOG2, 0.0])
    close(out.losses, [1.5 * LOG2, math.log(4 / 3) + LOG2, math.log(4)])
    close(out.current_advantage, [0.0, LN3 / 2, -LN3 / 2])
    close(out.historical_advantage, [0.0, -LN3 / 2, 4.0])
    close(out.reward_margin, [0.0, LN3, -LN3])  # alpha * u
    close(out.current_weight, [1 / 2, 1 / 4, 3 / 4])
    close(out.historical_weight, [1 / 4, 3 / 8, 0.0])
    # rewards are alpha * lp
    close(out.annotated_rewards, 2.0 * annotated)
    close(out.synthetic_rewards, 2.0 * synthetic)
    close(out.proto_rewards, 2.0 * proto)
    assert out.historical_mask.tolist() == [True, True, False]


def test_spin_loss_literal_values():
    """lam = 0.5, two examples.

    row 0: log-ratios y: -1 - (-3) = 2, y': -5 - (-5) = 0 -> margin 2, lam*margin = 1
        loss = l(1) = log(1 + e^-1), rewards 0.5*2 = 1 and 0, weight sigmoid(-1)
    row 1: y: -2 - (-2) = 0, y': -4 - (-4 - 2 ln 3) = 2 ln 3 -> margin -2 ln 3, lam*margin = -ln 3
        loss = l(-ln 3) = log 4, rewards 0 and ln 3, weight sigmoid(ln 3) = 3/4
    """
    out = spin_loss(t(-1.0, -2.0), t(-5.0, -4.0), t(-3.0, -2.0), t(-5.0, -4.0 - 2 * LN3), lam=0.5)
    assert isinstance(out, PairLossOutput)
    close(out.losses, [math.log(1 + math.exp(-1)), math.log(4)])
    close(out.annotated_rewards, [1.0, 0.0])
    close(out.synthetic_rewards, [0.0, LN3])
    close(out.current_advantage, [2.0, -2 * LN3])
    close(out.reward_margin, [1.0, -LN3])
    close(out.current_weight, [1 / (1 + math.e), 3 / 4])


def test_tspin_ref_loss_literal_values():
    """lam = 1, beta = 0.5, one example with a non-zero reference.

    log-ratios: y: -2 - (-2 - ln 3) = ln 3;  y': -3 - (-3) = 0;  y0: -1 - (-1 - ln 3) = ln 3
    u = ln 3 - 0 = ln 3 -> current l(ln 3) = log(4/3), w_cur = 1/4
    v = 0 - ln 3 = -ln 3 -> historical 0.5 * l(-ln 3) = 0.5 * log 4 = log 2, w_hist = 3/8
    rewards: ln 3, 0, ln 3
    """
    out = tspin_ref_loss(t(-2.0), t(-3.0), t(-1.0), t(-2.0 - LN3), t(-3.0), t(-1.0 - LN3), lam=1.0, beta=0.5)
    close(out.losses, [math.log(4 / 3) + LOG2])
    close(out.current_advantage, [LN3])
    close(out.historical_advantage, [-LN3])
    close(out.annotated_rewards, [LN3])
    close(out.synthetic_rewards, [0.0])
    close(out.proto_rewards, [LN3])
    close(out.current_weight, [1 / 4])
    close(out.historical_weight, [3 / 8])


def test_sft_loss_literal_values():
    # -(-6)/3 = 2 and -(-3)/2 = 1.5; d loss / d lp = -1/n = -1/3 and -1/2.
    lp = t(-6.0, -3.0).requires_grad_()
    out = sft_loss(lp, torch.tensor([3, 2]))
    assert isinstance(out, SFTLossOutput)
    close(out.losses, [2.0, 1.5])
    out.losses.sum().backward()
    close(lp.grad, [-1 / 3, -1 / 2])


# ---------------------------------------------------------------------------------------------
# The six invariants of the method (beta = 0 is reference-free SPIN, ...), one test each
# ---------------------------------------------------------------------------------------------


def _random_triplet(seed: int = 0, n: int = 6) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(-20 * torch.rand(n, generator=g, dtype=F64) for _ in range(3))


def test_invariant1_beta_zero_is_reference_free_spin():
    annotated, synthetic, proto = _random_triplet()
    out = tspin_loss(annotated, synthetic, proto, alpha=0.7, beta=0.0)
    zeros = torch.zeros_like(annotated)
    spin = spin_loss(annotated, synthetic, zeros, zeros, lam=0.7)
    close(out.losses, spin.losses)
    close(out.losses, -torch.nn.functional.logsigmoid(0.7 * (annotated - synthetic)))
    close(out.historical_term, zeros)
    close(out.historical_weight, zeros)
    # the named "w/o H-A" ablation is the same thing
    close(tspin_without_history_loss(annotated, synthetic, proto, alpha=0.7).losses, out.losses)


def test_invariant2_synthetic_equals_proto_gives_constant_historical_term():
    # y' and y0 are the same sequence, so their log-probs are one function of theta:
    # v = 0 for every theta, the historical term is beta * log 2 and contributes no gradient.
    theta = torch.tensor([0.3, -1.2], dtype=F64, requires_grad=True)
    annotated = -3.0 + 2.0 * theta
    same = -5.0 + theta**2  # lp(y') == lp(y0)
    out = tspin_loss(annotated, same, same, alpha=1.5, beta=0.4)
    close(out.historical_term, [0.4 * LOG2] * 2)
    close(out.historical_advantage, [0.0, 0.0])
    (grad_full,) = torch.autograd.grad(out.losses.sum(), theta, retain_graph=True)
    no_history = tspin_loss(annotated, same, same, alpha=1.5, beta=0.0)
    (grad_current,) = torch.autograd.grad(no_history.losses.sum(), theta)
    close(grad_full, grad_current)
    close(out.losses, no_history.losses + 0.4 * LOG2)


def test_invariant3_synthetic_equals_annotated():
    # y' == y: SPIN's argument is 0 for every theta (constant log 2, zero gradient);
    # T-SPIN keeps log 2 + beta * l(alpha * (lp(y) - lp(y0))) and a non-zero gradient.
    theta = torch.tensor([0.5, -0.25], dtype=F64, requires_grad=True)
    same = -4.0 + 3.0 * theta  # lp(y) == lp(y')
    ref = t(-4.0, -4.0)
    spin = spin_loss(same, same, ref, ref, lam=0.1)
    close(spin.losses, [LOG2, LOG2])
    (spin_grad,) = torch.autograd.grad(spin.losses.sum(), theta, retain_graph=True)
    close(spin_grad, [0.0, 0.0])

    proto = -6.0 - theta
    out = tspin_loss(same, same, proto, alpha=1.0, beta=0.1)
    expected = LOG2 + 0.1 * logistic_loss(same - proto)
    close(out.losses, expected)
    (grad,) = torch.autograd.grad(out.losses.sum(), theta)
    assert (grad.abs() > 1e-3).all()


@pytest.mark.parametrize("loss", ["tspin", "tspin_ref"])
def test_invariant4_shift_invariance(loss):
    # Adding one constant per example to all three log-probs changes no loss or advantage.
    annotated, synthetic, proto = _random_triplet(seed=1)
    shift = t(-7.0, 0.0, 3.0, 11.0, -0.5, 100.0)
    refs = _random_triplet(seed=2)

    def run(a, s, p):
        if loss == "tspin":
            return tspin_loss(a, s, p, alpha=0.9, beta=0.3)
        return tspin_ref_loss(a, s, p, *refs, lam=0.9, beta=0.3)

    base = run(annotated, synthetic, proto)
    shifted = run(annotated + shift, synthetic + shift, proto + shift)
    for name in ("losses", "current_advantage", "historical_advantage", "current_weight"):
        close(getattr(shifted, name), getattr(base, name), atol=1e-10)
    close(shifted.annotated_rewards - base.annotated_rewards, 0.9 * shift, atol=1e-10)


def test_invariant5_spin_at_start_of_iteration():
    # policy == reference: every reward 0, loss log 2, weight 1/2; still trainable because
    # d loss / d lp(y) = -lam/2 (the two sequences are different functions of theta).
    annotated, synthetic, _ = _random_triplet(seed=3)
    annotated.requires_grad_()
    out = spin_loss(annotated, synthetic, annotated.detach(), synthetic.clone(), lam=0.1)
    close(out.losses, torch.full_like(synthetic, LOG2))
    close(out.annotated_rewards, torch.zeros_like(synthetic))
    close(out.synthetic_rewards, torch.zeros_like(synthetic))
    close(out.reward_margin, torch.zeros_like(synthetic))
    close(out.current_weight, torch.full_like(synthetic, 0.5))
    out.losses.sum().backward()
    close(annotated.grad, torch.full_like(synthetic, -0.05))


def _maximise_objective(c: torch.Tensor, alpha: float) -> torch.Tensor:
    """Numerical ascent over the simplex (L-BFGS on softmax logits, started at uniform).

    This is the search the closed form softmax(c / alpha) should agree with.
    """
    logits = torch.zeros_like(c, requires_grad=True)
    opt = torch.optim.LBFGS(
        [logits],
        lr=1.0,
        max_iter=500,
        tolerance_grad=1e-14,
        tolerance_change=1e-16,
        line_search_fn="strong_wolfe",
    )

    def negative_objective():
        opt.zero_grad()
        value = -entropy_regularised_objective(torch.softmax(logits, -1), c, alpha)
        value.backward()
        return value

    opt.step(negative_objective)
    return torch.softmax(logits.detach(), -1)


def test_invariant6_proposition1_literal():
    # c = [0, ln 2, ln 3], alpha = 1: softmax(c) = [1, 2, 3] / 6,
    # optimum value = alpha * logsumexp(c / alpha) = log(1 + 2 + 3) = log 6.
    c = t(0.0, math.log(2), LN3)
    p = opponent_distribution(c, alpha=1.0)
    close(p, [1 / 6, 2 / 6, 3 / 6])
    close(entropy_regularised_objective(p, c, alpha=1.0), math.log(6))


@pytest.mark.parametrize("alpha", [0.3, 1.0, 4.0])
def test_invariant6_proposition1_matches_numerical_maximum(alpha):
    c = t(1.0, -0.5, 2.0, 0.0)
    closed = opponent_distribution(c, alpha)
    found = _maximise_objective(c, alpha)
    close(found, closed, atol=1e-6)
    best = entropy_regularised_objective(closed, c, alpha)
    close(best, alpha * torch.logsumexp(c / alpha, -1))
    # no random point of the simplex does better
    torch.manual_seed(0)
    rand = torch.distributions.Dirichlet(torch.ones(4, dtype=F64)).sample((5000,))
    assert (entropy_regularised_objective(rand, c.expand_as(rand), alpha) <= best + 1e-12).all()


def test_invariant6_proposition1_limits():
    c = t(1.0, -0.5, 2.0, 0.0)
    close(opponent_distribution(c, alpha=1e-3), [0.0, 0.0, 1.0, 0.0])  # argmax one-hot
    close(opponent_distribution(c, alpha=1e6), [0.25] * 4, atol=1e-6)  # uniform


def test_entropy_values():
    # H(uniform over 4) = log 4; H(one-hot) = 0 (0 log 0 = 0, no nan); batched over rows.
    close(entropy(t(0.25, 0.25, 0.25, 0.25)), math.log(4))
    close(entropy(torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=F64)), [0.0, LOG2])


# ---------------------------------------------------------------------------------------------
# Theorem 1: autograd against the closed-form gradient
# ---------------------------------------------------------------------------------------------


def test_theorem1_gradients_match_closed_form():
    alpha, beta = 1.3, 0.25
    annotated, synthetic, proto = (x.requires_grad_() for x in _random_triplet(seed=4, n=8))
    mask = torch.tensor([True, False] * 4)
    out = tspin_loss(annotated, synthetic, proto, alpha=alpha, beta=beta, historical_mask=mask)
    out.losses.sum().backward()

    u = (annotated - synthetic).detach()
    v = (synthetic - proto).detach()
    w_cur = torch.sigmoid(-alpha * u)
    w_hist = beta * torch.sigmoid(-alpha * v) * mask
    close(out.current_weight, w_cur)
    close(out.historical_weight, w_hist)
    # dL/d lp(y) = -alpha sigmoid(-alpha u); dL/d lp(y0) = +alpha beta sigmoid(-alpha v) (masked);
    # dL/d lp(y') = alpha sigmoid(-alpha u) - alpha beta sigmoid(-alpha v) (masked)
    close(annotated.grad, -alpha * w_cur)
    close(proto.grad, alpha * w_hist)
    close(synthetic.grad, alpha * w_cur - alpha * w_hist)
    # masked-out rows: no gradient on y0 at all
    close(proto.grad[~mask], torch.zeros(4, dtype=F64))


def test_theorem1_gradients_tspin_ref_and_reference_gets_none():
    lam, beta = 0.5, 0.2
    annotated, synthetic, proto = (x.requires_grad_() for x in _random_triplet(seed=5))
    refs = tuple(x.requires_grad_() for x in _random_triplet(seed=6))
    out = tspin_ref_loss(annotated, synthetic, proto, *refs, lam=lam, beta=beta)
    out.losses.sum().backward()
    u = ((annotated - refs[0]) - (synthetic - refs[1])).detach()
    v = ((synthetic - refs[1]) - (proto - refs[2])).detach()
    close(annotated.grad, -lam * torch.sigmoid(-lam * u))
    close(proto.grad, lam * beta * torch.sigmoid(-lam * v))
    close(synthetic.grad, lam * torch.sigmoid(-lam * u) - lam * beta * torch.sigmoid(-lam * v))
    assert all(r.grad is None for r in refs)  # the frozen reference is detached


def test_spin_gradient_matches_closed_form():
    lam = 0.1
    annotated, synthetic, ref_a = (x.requires_grad_() for x in _random_triplet(seed=7))
    ref_s = _random_triplet(seed=8)[0]
    out = spin_loss(annotated, synthetic, ref_a, ref_s, lam=lam)
    out.losses.sum().backward()
    w = torch.sigmoid(-lam * ((annotated - ref_a) - (synthetic - ref_s))).detach()
    close(out.current_weight, w)
    close(annotated.grad, -lam * w)
    close(synthetic.grad, lam * w)
    assert ref_a.grad is None


def test_masked_row_with_infinite_proto_logp_stays_finite():
    # A masked-out row must not turn 0 * inf into nan in the loss or its gradient.
    annotated = t(-1.0, -1.0).requires_grad_()
    synthetic = t(-2.0, -2.0).requires_grad_()
    proto = t(-3.0, -math.inf).requires_grad_()
    out = tspin_loss(
        annotated,
        synthetic,
        proto,
        alpha=1.0,
        beta=0.1,
        historical_mask=torch.tensor([True, False]),
    )
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all()
    assert torch.isfinite(synthetic.grad).all() and torch.isfinite(proto.grad).all()


# ---------------------------------------------------------------------------------------------
# Equivalences, outputs, validation
# ---------------------------------------------------------------------------------------------


def test_tspin_ref_with_zero_reference_equals_tspin():
    annotated, synthetic, proto = _random_triplet(seed=9)
    zeros = torch.zeros_like(annotated)
    mask = torch.tensor([True, True, False, True, False, True])
    ref = tspin_ref_loss(annotated, synthetic, proto, zeros, zeros, zeros, lam=0.8, beta=0.3, historical_mask=mask)
    free = tspin_loss(annotated, synthetic, proto, alpha=0.8, beta=0.3, historical_mask=mask)
    for name, value in free.to_dict().items():
        torch.testing.assert_close(ref.to_dict()[name], value, atol=1e-12, rtol=0)


def test_outputs_detached_except_losses_and_to_dict():
    annotated, synthetic, proto = (x.requires_grad_() for x in _random_triplet(seed=10))
    outputs = [
        tspin_loss(annotated, synthetic, proto, alpha=1.0, beta=0.1),
        spin_loss(annotated, synthetic, proto, proto, lam=0.1),
        sft_loss(annotated, torch.full((6,), 4)),
    ]
    for out in outputs:
        d = out.to_dict()
        assert out.losses.requires_grad
        for name, value in d.items():
            assert not value.requires_grad and value.device.type == "cpu"
            assert value.shape == (6,), name
            if name != "losses":
                assert not getattr(out, name).requires_grad, name
    assert set(outputs[0].to_dict()) >= {
        "losses",
        "current_term",
        "historical_term",
        "annotated_rewards",
        "synthetic_rewards",
        "proto_rewards",
        "current_advantage",
        "historical_advantage",
        "current_weight",
        "historical_weight",
    }


def test_float32_inputs_give_float32_outputs():
    x = torch.tensor([-1.0, -2.0])
    out = tspin_loss(x, x - 1, x - 2, alpha=1.0, beta=0.1)
    assert out.losses.dtype == torch.float32 and out.current_weight.dtype == torch.float32


B3 = t(-1.0, -2.0, -3.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0.0, "beta": 0.1}, r"alpha must be a finite number > 0, got 0\.0"),
        ({"alpha": -1.0, "beta": 0.1}, r"alpha must be a finite number > 0"),
        ({"alpha": math.nan, "beta": 0.1}, r"alpha must be a finite number > 0"),
        ({"alpha": 1.0, "beta": -0.1}, r"beta must be a finite number >= 0, got -0\.1"),
        (
            {"alpha": 1.0, "beta": 0.1, "historical_mask": torch.tensor([1, 0, 1])},
            r"historical_mask must be a bool tensor",
        ),
        (
            {"alpha": 1.0, "beta": 0.1, "historical_mask": torch.tensor([True, False])},
            r"historical_mask must have shape \(3,\)",
        ),
    ],
)
def test_tspin_loss_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tspin_loss(B3, B3, B3, **kwargs)


def test_tspin_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"proto_logps must have the shape of annotated_logps"):
        tspin_loss(B3, B3, t(-1.0, -2.0), alpha=1.0, beta=0.1)
    with pytest.raises(ValueError, match=r"annotated_logps must be 1-D"):
        tspin_loss(B3[None], B3[None], B3[None], alpha=1.0, beta=0.1)
    with pytest.raises(ValueError, match=r"synthetic_logps must be a floating-point tensor"):
        tspin_loss(B3, torch.tensor([1, 2, 3]), B3, alpha=1.0, beta=0.1)


def test_spin_ref_and_sft_reject_bad_inputs():
    with pytest.raises(ValueError, match=r"lam must be a finite number > 0"):
        spin_loss(B3, B3, B3, B3, lam=0.0)
    with pytest.raises(ValueError, match=r"ref_synthetic_logps must have the shape"):
        spin_loss(B3, B3, B3, t(0.0), lam=0.1)
    with pytest.raises(ValueError, match=r"lam must be a finite number > 0"):
        tspin_ref_loss(B3, B3, B3, B3, B3, B3, lam=-1.0, beta=0.1)
    with pytest.raises(ValueError, match=r"beta must be a finite number >= 0"):
        tspin_ref_loss(B3, B3, B3, B3, B3, B3, lam=1.0, beta=-1.0)
    with pytest.raises(ValueError, match=r"ref_proto_logps must have the shape"):
        tspin_ref_loss(B3, B3, B3, B3, B3, t(0.0), lam=1.0, beta=0.1)
    with pytest.raises(ValueError, match=r"annotated_token_counts must be a tensor of shape"):
        sft_loss(B3, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"annotated_token_counts must be > 0"):
        sft_loss(B3, torch.tensor([1, 0, 2]))
    with pytest.raises(ValueError, match=r"alpha must be a finite number > 0"):
        opponent_distribution(B3, alpha=0.0)
    with pytest.raises(ValueError, match=r"probs and confidences must have one shape"):
        entropy_regularised_objective(t(0.5, 0.5), B3, alpha=1.0)


# ---------------------------------------------------------------------------------------------
# Smoke test: one optimiser step moves log-probs the expected way
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["tspin", "tspin_without_history", "tspin_ref", "spin", "sft"])
def test_one_step_raises_annotated_logp(method):
    # Rows: lp(y), lp(y'), lp(y0) for two examples, all equal at the start (u = v = 0).
    # T-SPIN: d/d lp(y') = alpha (1/2 - beta/2) > 0 for beta < 1, so lp(y') goes down;
    # d/d lp(y0) = alpha beta / 2 > 0, so lp(y0) goes down too.
    lp = torch.nn.Parameter(torch.full((3, 2), -5.0))
    before = lp.detach().clone()
    ref = torch.full((2,), -5.0)
    opt = torch.optim.SGD([lp], lr=0.1)
    if method == "tspin":
        out = tspin_loss(lp[0], lp[1], lp[2], alpha=1.0, beta=0.1)
    elif method == "tspin_without_history":
        out = tspin_without_history_loss(lp[0], lp[1], lp[2], alpha=1.0)
    elif method == "tspin_ref":
        out = tspin_ref_loss(lp[0], lp[1], lp[2], ref, ref, ref, lam=1.0, beta=0.1)
    elif method == "spin":
        out = spin_loss(lp[0], lp[1], ref, ref, lam=0.1)
    else:
        out = sft_loss(lp[0], torch.tensor([4, 4]))
    out.losses.mean().backward()
    opt.step()
    delta = lp.detach() - before
    assert (delta[0] > 0).all()  # lp(y) goes up
    if method != "sft":
        assert (delta[1] < 0).all()  # lp(y') goes down
    if method in ("tspin", "tspin_ref"):
        assert (delta[2] < 0).all()  # lp(y0) goes down
    else:
        assert (delta[2] == 0).all()
