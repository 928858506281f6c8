"""Tests for tspin_kit.narrate: literal records in, the exact sentences out.

Three runs of two iterations over four prompts, numbers picked so every mean is exact:

              share y'==y    u over y'!=y   u over all    reward margin   v (mean)      score pi_0, Iter0, Iter1
    SFT       0%, 0%         2.0, 2.0       2.0, 2.0      NaN             0.3, 0.5      0.60, 0.61, 0.60
    SPIN      25%, 50%       2.0, 2.5       1.5, 1.25     0.3, 0.1        0.2, 0.3      0.60, 0.70, 0.65
    T-SPIN    0%, 25%        1.5, 1.0       1.5, 0.75     (not SPIN's)    0.1, 0.5      0.60, 0.62, 0.68
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tspin_kit import narrate
from tspin_kit.synthetic import BuiltRecords


def literal_run(method, same, u, v, margin, scores, *, seed=0, eval_size=500):
    """``same``/``u``/``v``/``margin``: one list of four per iteration; ``scores``: pi_0, Iter0, Iter1."""
    frames = []
    for t, (s, uu, vv, m) in enumerate(zip(same, u, v, margin)):
        frames.append(
            pd.DataFrame(
                {
                    "iteration": t,
                    "example_id": range(4),
                    "synthetic_equals_annotated": s,
                    "proto_equals_annotated": False,
                    "synthetic_equals_proto": False,
                    "current_advantage_before": np.asarray(uu, dtype=float),
                    "historical_advantage_before": np.asarray(vv, dtype=float),
                    "reward_margin": np.asarray(m, dtype=float),
                }
            )
        )
    metrics = pd.DataFrame(
        {"iteration": [0, 1], "score_name": "accuracy", "score_before": scores[:2], "score_after": scores[1:]}
    )
    manifest = {
        "config": {"method": {"name": method, "alpha": 1.0}, "seed": seed, "data": {"eval_size": eval_size}},
        "eval_size": eval_size,
    }
    return BuiltRecords(pd.concat(frames, ignore_index=True), metrics, manifest)


F, T, NAN = False, True, math.nan
SFT = literal_run(
    "sft",
    [[F, F, F, F], [F, F, F, F]],
    [[2] * 4, [2] * 4],
    [[0.3] * 4, [0.5] * 4],
    [[NAN] * 4, [NAN] * 4],
    [0.60, 0.61, 0.60],
)
SPIN = literal_run(
    "spin",
    [[T, F, F, F], [T, T, F, F]],
    [[0, 2, 1, 3], [0, 0, 3, 2]],
    [[0, 0.2, 0.4, 0.2], [0.4, 0.4, 0.2, 0.2]],
    [[0, 0.4, 0.2, 0.6], [0, 0, 0.1, 0.3]],
    [0.60, 0.70, 0.65],
)
TSPIN = literal_run(
    "tspin",
    [[F, F, F, F], [T, F, F, F]],
    [[1, 1, 2, 2], [0, 1, 1, 1]],
    [[0.1] * 4, [0.5] * 4],
    [[1, 1, 2, 2], [0, 1, 1, 1]],
    [0.60, 0.62, 0.68],
)


def test_describe_runs_literal():
    assert narrate.describe_runs({"SFT": SFT, "SPIN": SPIN, "T-SPIN": TSPIN}) == [
        "SFT stayed at pi_0's 0.600",
        "SFT peaked at Iter0 (0.610) and ended at 0.600 (Iter1)",
        "SPIN rose from pi_0's 0.600 to 0.650 (+5.0 points)",
        "SPIN peaked at Iter0 (0.700) and ended at 0.650 (Iter1)",
        "T-SPIN rose from pi_0's 0.600 to 0.680 (+8.0 points)",
        "T-SPIN's best score was its last, Iter1 (0.680)",
        "In SFT, the share of degenerate pairs (y' == y) went from 0% to 0% (Iter0 to Iter1)",
        (
            "In SFT, mean u at generation over non-degenerate pairs went from 2.00 to 2.00 "
            "(unchanged at two decimals); over all pairs from 2.00 to 2.00"
        ),
        "In SPIN, the share of degenerate pairs (y' == y) went from 25% to 50% (Iter0 to Iter1)",
        (
            "In SPIN, mean u at generation over non-degenerate pairs went from 2.00 to 2.50 (it did not shrink); "
            "over all pairs from 1.50 to 1.25"
        ),
        "In SPIN, the mean reward margin after training went from 0.30 at Iter0 to 0.10 at Iter1 (it shrank)",
        "In T-SPIN, the share of degenerate pairs (y' == y) went from 0% to 25% (Iter0 to Iter1)",
        (
            "In T-SPIN, mean u at generation over non-degenerate pairs went from 1.50 to 1.00 (it shrank); "
            "over all pairs from 1.50 to 0.75"
        ),
        "SPIN's v at generation averaged +0.25 against +0.40 for SFT, the SFT control, over 2 iterations",
        "T-SPIN's v at generation averaged +0.30 against +0.40 for SFT, the SFT control, over 2 iterations",
        # final scores 0.60, 0.65, 0.68: mean p = 0.6433, sqrt(p (1 - p) / 500) = 0.0214
        (
            "One seed: differences of a few points are within noise "
            "(one standard error of a 500-problem score near 0.64 is about 2.1 points)"
        ),
    ]


def test_without_a_control_or_a_second_iteration():
    one_iter = BuiltRecords(TSPIN.examples[TSPIN.examples["iteration"] == 0], TSPIN.metrics.iloc[:1], TSPIN.manifest)
    # one trained policy: no peak sentence; one iteration: no "went from" sentences; no SFT run: no v sentence
    assert narrate.describe_runs({"T-SPIN": one_iter}) == [
        "T-SPIN rose from pi_0's 0.600 to 0.620 (+2.0 points)",
        # sqrt(0.62 * 0.38 / 500) = 0.0217
        (
            "One seed: differences of a few points are within noise "
            "(one standard error of a 500-problem score near 0.62 is about 2.2 points)"
        ),
    ]


def test_several_seeds_and_standard_error():
    other_seed = literal_run(
        "tspin",
        [[F] * 4, [F] * 4],
        [[1] * 4, [1] * 4],
        [[0] * 4, [0] * 4],
        [[1] * 4, [1] * 4],
        [0.60, 0.60, 0.60],
        seed=1,
    )
    sentences = narrate.describe_runs({"T-SPIN s0": TSPIN, "T-SPIN s1": other_seed})
    assert sentences[-1] == (
        "2 seeds: compare the seeds before reading a trend "
        "(one standard error of a 500-problem score near 0.64 is about 2.1 points)"
    )
    assert "T-SPIN s1 stayed at pi_0's 0.600" in sentences
    assert narrate.score_standard_error(0.5, 100) == pytest.approx(0.05)  # sqrt(0.25 / 100)
    zero = literal_run(
        "tspin", [[F] * 4, [F] * 4], [[1] * 4, [1] * 4], [[0] * 4, [0] * 4], [[1] * 4, [1] * 4], [0.0, 0.0, 0.0]
    )
    # a score of 0 has no spread: the largest standard error, sqrt(0.25 / 500) = 2.2 points
    assert narrate.describe_runs({"T-SPIN": zero})[-1] == (
        "One seed: differences of a few points are within noise "
        "(one standard error of a 500-problem score is at most 2.2 points)"
    )
    assert narrate.score_standard_error(1.0, 100) == 0.0


def test_each_seed_gets_its_own_control():
    sft1 = literal_run(
        "sft",
        [[F] * 4, [F] * 4],
        [[2] * 4, [2] * 4],
        [[0.9] * 4, [0.9] * 4],
        [[NAN] * 4, [NAN] * 4],
        [0.60, 0.60, 0.60],
        seed=1,
    )
    tspin1 = literal_run(
        "tspin",
        [[F] * 4, [F] * 4],
        [[1] * 4, [1] * 4],
        [[0.1] * 4, [0.1] * 4],
        [[1] * 4, [1] * 4],
        [0.60, 0.60, 0.60],
        seed=1,
    )
    runs = {"SFT s0": SFT, "SFT s1": sft1, "T-SPIN s0": TSPIN, "T-SPIN s1": tspin1}
    v = [s for s in narrate.describe_runs(runs) if " v at generation " in s]
    assert v == [
        "T-SPIN s0's v at generation averaged +0.30 against +0.40 for SFT s0, the SFT control, over 2 iterations",
        "T-SPIN s1's v at generation averaged +0.10 against +0.90 for SFT s1, the SFT control, over 2 iterations",
    ]
