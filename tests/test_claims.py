"""The claim statistics and verdict rules of tspin_kit.claims, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from tspin_kit import claims as C
from tspin_kit.reproduce import evaluate


def test_verdict_rules():
    assert C.verdict_positive(0.1, 3.0, 1.0) == C.REPRODUCED
    assert C.verdict_positive(-2.0, 0.5, 1.0) == C.NOT_REPRODUCED  # rules out an effect of 1 point
    assert C.verdict_positive(-2.0, 1.5, 1.0) == C.INCONCLUSIVE
    assert C.verdict_positive(-2.0, -0.5, 0.0) == C.NOT_REPRODUCED
    assert C.verdict_positive(float("nan"), 1.0, 1.0) == C.INCONCLUSIVE
    assert C.verdict_noninferior(-1.5, 3.0, 2.0) == C.REPRODUCED
    assert C.verdict_noninferior(-6.0, -2.5, 2.0) == C.NOT_REPRODUCED
    assert C.verdict_noninferior(-3.0, 1.0, 2.0) == C.INCONCLUSIVE
    assert C.combine([C.REPRODUCED, C.REPRODUCED]) == C.REPRODUCED
    assert C.combine([C.REPRODUCED, C.INCONCLUSIVE]) == C.INCONCLUSIVE
    assert C.combine([C.INCONCLUSIVE, C.NOT_REPRODUCED]) == C.NOT_REPRODUCED
    assert C.combine([]) == C.INCONCLUSIVE


def test_first_draw_is_the_data_and_interval_uses_the_rest():
    rs = C.draws(3, {"problems": 5}, 4, seed=1)
    assert rs[0].seeds.tolist() == [0, 1, 2] and rs[0].units["problems"].tolist() == [0, 1, 2, 3, 4]
    assert len(rs) == 4 and all(len(r.seeds) == 3 and len(r.units["problems"]) == 5 for r in rs)
    values = np.array([5.0] + list(range(1, 42)))  # point estimate 5, bootstrap 1..41
    est, lo, hi = C.interval(values)
    assert est == 5.0
    assert lo == pytest.approx(np.quantile(np.arange(1, 42), 0.025)) == pytest.approx(2.0)
    assert hi == pytest.approx(40.0)


def test_curve_and_masked_curve_literal():
    cube = np.array(
        [[[1, 0, 1, 0], [1, 1, 1, 0]], [[0, 0, 0, 0], [1, 1, 1, 1]]], dtype=float
    )  # (2 seeds, 2 times, 4 units)
    r = C.Resample(np.array([0, 1]), {"problems": np.array([0, 1, 2, 3])})
    assert C.curve(cube, r).tolist() == [0.25, 0.875]
    r2 = C.Resample(np.array([0, 0]), {"problems": np.array([3, 3, 0, 0])})
    assert C.curve(cube, r2).tolist() == [0.5, 0.5]
    mask = np.array(
        [
            [[True, True, False, False], [True, False, False, False]],
            [[False, False, False, False], [True, True, True, True]],
        ]
    )
    r3 = C.Resample(np.array([0, 1]), {"examples": np.arange(4)})
    # time 0: values where mask: seed0 units 0,1 -> (1 + 0) / 2; time 1: seed0 unit 0 (1), seed1 all (4) -> 5 / 5
    assert C.masked_curve(cube, mask, r3, "examples").tolist() == [0.5, 1.0]
    empty = np.zeros_like(mask)
    assert np.isnan(C.masked_curve(cube, empty, r3, "examples")).all()


def test_peak_drop_is_cross_fitted():
    # 1 seed; pi_0 + 3 iterations; 4 problems; halves: problems 0,1 -> half 0, problems 2,3 -> half 1
    halves = np.array([0, 0, 1, 1])
    cube = np.array(
        [
            [
                [0, 0, 0, 0],  # pi_0 (ignored)
                [0, 0, 1, 1],  # Iter0
                [1, 1, 0, 1],  # Iter1
                [0, 1, 0, 0],
            ]
        ],
        float,
    )  # Iter2 (last)
    r = C.Resample(np.array([0]), {"problems": np.arange(4)})
    # pick on half 0 (problems 0,1): curve [0, 1, 0.5] -> Iter1; measure on half 1: [1, 0.5, 0] -> 0.5 - 0 = 0.5
    # pick on half 1 (problems 2,3): curve [1, 0.5, 0] -> Iter0; measure on half 0: [0, 1, 0.5] -> 0 - 0.5 = -0.5
    assert C.peak_drop(cube, r, halves) == pytest.approx(0.0)
    assert C.peak_iteration(cube) == 1  # on all problems: [0.5, 0.75, 0.25]
    # a curve that really peaks in both halves
    cube2 = np.array([[[0] * 4, [0.5] * 4, [1] * 4, [0] * 4]], float)
    assert C.peak_drop(cube2, r, halves) == pytest.approx(1.0)


def _fake_arms(n_seeds=3, iters=4, problems=200, examples=50, seed=0):
    """Scores where T-SPIN is 20 points above its ablation and SPIN peaks at Iter0 and falls 30 points."""
    rng = np.random.default_rng(seed)

    def cube(curve):
        p = np.asarray(curve)[None, :, None] * np.ones((n_seeds, iters + 1, problems))
        return (rng.random(p.shape) < p).astype(float)

    scores = {
        "sft": cube([0.5, 0.6, 0.6, 0.6, 0.6]),
        "spin": cube([0.5, 0.8, 0.7, 0.6, 0.5]),
        "tspin": cube([0.5, 0.6, 0.65, 0.7, 0.7]),
        "tspin_no_history": cube([0.5, 0.5, 0.5, 0.5, 0.5]),
    }
    shape = (n_seeds, iters, examples)
    pairs = {}
    for arm in ("sft", "spin", "tspin"):
        deg = (rng.random(shape) < np.linspace(0.2, 0.6, iters)[None, :, None]).astype(float)
        pairs[arm] = {
            "misaligned": ((rng.random(shape) < 0.1) & (arm == "spin")).astype(float),
            "synthetic_equals_annotated": deg,
            "reward_margin": np.broadcast_to(np.linspace(0.4, 0.1, iters)[None, :, None], shape).copy()
            if arm == "spin"
            else np.full(shape, np.nan),
            "current_advantage_before": np.where(deg > 0, 0.0, 2.0),
            "current_advantage_after": np.where(deg > 0, 0.0, 2.0),
            "historical_advantage_before": np.zeros(shape),
            "historical_advantage_after": np.full(shape, 0.5 if arm == "tspin" else 0.1),
            "annotated_logp_after": np.full(shape, -1.0),
        }
    return scores, pairs


def test_evaluate_gives_the_verdicts_the_data_carry():
    scores, pairs = _fake_arms()
    res = evaluate(scores, pairs, n_boot=300)
    v = {c["id"]: c for c in res["claims"]}
    assert v["a"]["verdict"] == C.REPRODUCED  # SPIN 0.8 -> 0.5, T-SPIN rising
    assert v["b"]["verdict"] == C.REPRODUCED and v["b"]["parts"][0]["estimate"] == pytest.approx(
        100 * (scores["tspin"][:, -1].mean() - scores["tspin_no_history"][:, -1].mean())
    )
    assert v["e"]["verdict"] == C.REPRODUCED
    assert v["f1"]["verdict"] == C.REPRODUCED and v["f1"]["parts"][0]["estimate"] == pytest.approx(0.3)
    assert v["f2"]["verdict"] == C.REPRODUCED
    assert v["f3"]["verdict"] == C.NOT_REPRODUCED  # u over y' != y is exactly 2.0 throughout: 0 change
    assert v["f4"]["verdict"] == C.REPRODUCED and v["f4"]["parts"][0]["estimate"] == pytest.approx(0.4)
    assert "c" not in v and "d" not in v  # their arms are absent: no claim, no made-up verdict
    assert res["scores"]["spin"]["peak_iteration"] == 0
    assert res["vanishing"]["spin"]["reward_margin_after"] == pytest.approx([0.4, 0.3, 0.2, 0.1])


def test_evaluate_says_not_reproduced_when_the_opposite_holds():
    scores, pairs = _fake_arms()
    scores["tspin"], scores["tspin_no_history"] = scores["tspin_no_history"], scores["tspin"]
    v = {c["id"]: c for c in evaluate(scores, pairs, n_boot=300)["claims"]}
    assert v["b"]["verdict"] == C.NOT_REPRODUCED
