"""Tests for tspin_kit.analysis: records -> tables, with literal cases and the builder's records.

Literal inputs are chosen so the logistic loss lands on exact numbers: with alpha = 1,
u = 0 gives l(0) = log 2 and weight sigmoid(0) = 1/2; u = ln 3 gives weight sigmoid(-ln 3) = 1/4.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from tspin_kit import analysis as A
from tspin_kit import losses
from tspin_kit import records as R
from tspin_kit.synthetic import BuiltRecords, build_records, read_run_dir, write_run_dir

LOG2 = math.log(2.0)
LN3 = math.log(3.0)


@pytest.fixture(scope="module")
def tspin():
    return build_records("tspin", n_examples=80, n_iterations=3, seed=0)


@pytest.fixture(scope="module")
def spin():
    return build_records("spin", n_examples=80, n_iterations=3, seed=1)


def literal_examples() -> pd.DataFrame:
    """Three triplets of one iteration with hand-picked log-probs (T-SPIN, alpha = 1).

    row 0: lp = (-2, -2, -3)      -> u = 0,      v = 1       (y' == y)
    row 1: lp = (-1, -1-ln3, -4)  -> u = ln 3,   v = 3-ln 3
    row 2: lp = (-5, -1, -1)      -> u = -4,     v = 0       (y' == y0)
    """
    a = np.array([-2.0, -1.0, -5.0])
    s = np.array([-2.0, -1.0 - LN3, -1.0])
    p = np.array([-3.0, -4.0, -1.0])
    df = pd.DataFrame(
        {
            "iteration": 0,
            "example_id": [0, 1, 2],
            "prompt": ["1+1=", "2+2=", "3+3="],
            "annotated": ["2", "4", "6"],
            "synthetic": ["2", "5", "7"],
            "proto": ["3", "8", "7"],
            "annotated_logp_before": a,
            "synthetic_logp_before": s,
            "proto_logp_before": p,
            "annotated_logp_after": a + 0.5,
            "synthetic_logp_after": s - 0.5,
            "proto_logp_after": p,
            "annotated_ntokens": [2, 2, 2],
            "synthetic_ntokens": [2, 2, 2],
            "proto_ntokens": [2, 2, 2],
            "annotated_token_logps_before": [[-1.5, -0.5], [-0.5, -0.5], [-4.0, -1.0]],
            "synthetic_token_logps_before": [[-1.5, -0.5], [-1.0, -LN3], [-0.5, -0.5]],
            "proto_token_logps_before": [[-2.0, -1.0], [-3.0, -1.0], [-0.5, -0.5]],
            "ref_annotated_logp": np.nan,
            "ref_synthetic_logp": np.nan,
            "ref_proto_logp": np.nan,
            "current_advantage_before": a - s,
            "historical_advantage_before": s - p,
            "current_advantage_after": (a + 0.5) - (s - 0.5),
            "historical_advantage_after": (s - 0.5) - p,
            "reward_annotated": a + 0.5,
            "reward_synthetic": s - 0.5,
            "reward_proto": p,
            "reward_margin": (a + 0.5) - (s - 0.5),
            "loss_current": 0.0,
            "loss_historical": 0.0,
            "loss": [0.3, 0.2, 0.1],
            "misaligned": False,
            "synthetic_equals_annotated": [True, False, False],
            "proto_equals_annotated": [False, False, False],
            "synthetic_equals_proto": [False, False, True],
            "synthetic_correct": [True, False, False],
            "proto_correct": [False, False, False],
        }
    )
    return df


# --------------------------------------------------------------------------- settings


def test_run_settings_reads_manifest_and_flags_defaults(tspin):
    s = A.run_settings(tspin)
    assert (s["method"], s["alpha"], s["beta"], s["lam"]) == ("tspin", 1.0, 0.1, 1.0)
    assert s["iterations_done"] == 3 and s["defaults_used"] == []
    bare = A.run_settings(type("R", (), {"manifest": {}, "examples": literal_examples()})())
    assert bare["defaults_used"] == ["name", "alpha", "beta", "lam"] and bare["alpha"] == 1.0


def test_run_label_prefers_manifest_label(tspin):
    assert A.run_label(tspin) == "tspin (seed 0)"
    labelled = type("R", (), {"manifest": {"label": "T-SPIN s0", "config": {}}})()
    assert A.run_label(labelled) == "T-SPIN s0"


def test_default_kind_and_stage():
    # the lab starts on the run's own objective; an SFT run (no y' to compare) on a T-SPIN what-if
    assert [A.default_loss_kind(m) for m in ("sft", "spin", "tspin", "tspin_no_history", "tspin_ref")] == [
        "tspin",
        "spin",
        "tspin",
        "tspin_no_history",
        "tspin_ref",
    ]
    assert (A.default_stage("tspin"), A.default_stage("spin"), A.default_stage("tspin_ref")) == (
        "before",
        "after",
        "after",
    )


# --------------------------------------------------------------------------- per-iteration tables


def test_advantage_summary_matches_the_recorded_metrics(tspin):
    table = A.advantage_summary(tspin.examples, "before")
    assert list(table["iteration"].unique()) == [0, 1, 2]
    for _, m in tspin.metrics.iterrows():
        for kind in A.ADVANTAGES:
            row = table[(table["iteration"] == m["iteration"]) & (table["advantage"] == kind)].iloc[0]
            for stat in ("mean", "q10", "q50", "q90"):
                assert row[stat] == pytest.approx(m[f"{kind}_advantage_before_{stat}"])
            assert row["q10"] <= row["q50"] <= row["q90"] and row["n"] == 80


def test_advantage_summary_literal():
    table = A.advantage_summary(literal_examples(), "before").set_index("advantage")
    assert table.loc["current", "mean"] == pytest.approx((0 + LN3 - 4) / 3)
    assert table.loc["current", "q50"] == pytest.approx(0.0)
    assert table.loc["historical", "mean"] == pytest.approx((1 + 3 - LN3 + 0) / 3)
    with pytest.raises(ValueError, match="stage"):
        A.advantage_summary(literal_examples(), "during")


def test_degenerate_shares(tspin):
    shares = A.degenerate_shares(tspin.examples)
    for t, part in tspin.examples.groupby("iteration"):
        row = shares[shares["iteration"] == t].iloc[0]
        assert row["synthetic_equals_annotated"] == pytest.approx(part["synthetic_equals_annotated"].mean())
        assert row["proto_equals_annotated"] == pytest.approx(part["proto_equals_annotated"].mean())
    lit = A.degenerate_shares(literal_examples()).iloc[0]
    assert (lit["synthetic_equals_annotated"], lit["synthetic_equals_proto"]) == pytest.approx((1 / 3, 1 / 3))


def test_degenerate_split_literal():
    """u before = (0, ln 3, -4) with row 0 degenerate (y' == y): all-pairs mean (ln 3 - 4) / 3,
    non-degenerate mean (ln 3 - 4) / 2. Reward margins a - s + 1 = (1, 1 + ln 3, -3)."""
    ex = literal_examples()
    u = A.current_advantage_split(ex, "before").set_index("subset")
    assert u.loc["all", "mean"] == pytest.approx((LN3 - 4) / 3)
    assert u.loc["non-degenerate", "mean"] == pytest.approx((LN3 - 4) / 2)
    assert (u.loc["all", "n"], u.loc["non-degenerate", "n"]) == (3, 2)
    assert u.loc["non-degenerate", "q50"] == pytest.approx((LN3 - 4) / 2)
    rm = A.reward_margin_split(ex).set_index("subset")
    assert rm.loc["all", "mean"] == pytest.approx((1 + 1 + LN3 - 3) / 3)
    assert rm.loc["non-degenerate", "mean"] == pytest.approx((1 + LN3 - 3) / 2)
    sft = A.reward_margin_split(ex.assign(reward_margin=np.nan))  # SFT: no reward
    assert sft["n"].tolist() == [0, 0] and sft["mean"].isna().all()


def test_vanishing_summary_sets_v_against_the_sft_control():
    """Two literal runs of one iteration: T-SPIN (v = 1, 3 - ln 3, 0) and an SFT control with v shifted by +1."""
    ex = literal_examples()
    tsp = BuiltRecords(ex, pd.DataFrame(), {"config": {"method": {"name": "tspin"}}})
    sft_ex = ex.assign(historical_advantage_before=ex["historical_advantage_before"] + 1, reward_margin=np.nan)
    sft = BuiltRecords(sft_ex, pd.DataFrame(), {"config": {"method": {"name": "sft"}}})
    runs = {"T-SPIN": tsp, "SFT": sft}
    assert A.control_label(runs) == "SFT" and A.control_label({"T-SPIN": tsp}) is None
    hist = A.historical_advantage_table(runs)
    assert hist.set_index("run")["control"].to_dict() == {"T-SPIN": False, "SFT": True}
    table = A.vanishing_summary(runs).set_index("run")
    v = (1 + 3 - LN3 + 0) / 3
    assert table.loc["T-SPIN", "share_synthetic_equals_annotated"] == pytest.approx(1 / 3)
    assert table.loc["T-SPIN", "current_advantage_mean"] == pytest.approx((LN3 - 4) / 3)
    assert table.loc["T-SPIN", "current_advantage_mean_nondegenerate"] == pytest.approx((LN3 - 4) / 2)
    assert table.loc["T-SPIN", "n_nondegenerate"] == 2
    assert table.loc["T-SPIN", "historical_advantage_mean"] == pytest.approx(v)
    assert table.loc["T-SPIN", "historical_advantage_mean_control"] == pytest.approx(v + 1)
    assert math.isnan(table.loc["SFT", "reward_margin_mean"])
    assert math.isnan(A.vanishing_summary({"T-SPIN": tsp}).loc[0, "historical_advantage_mean_control"])


def test_policy_scores_lists_pi0_then_each_trained_policy():
    metrics = pd.DataFrame({"iteration": [0, 1], "score_before": [0.2, 0.3], "score_after": [0.3, 0.45]})
    table = A.policy_scores(metrics)
    assert table["policy"].tolist() == [0, 1, 2]
    assert table["score"].tolist() == [0.2, 0.3, 0.45]
    assert A.policy_scores(pd.DataFrame()).empty
    assert A.score_name(metrics) == "accuracy"
    assert A.score_name(metrics.assign(score_name="logp_per_token")) == "logp_per_token"


def test_misalignment_spin_vs_tspin(spin, tspin):
    table = A.misalignment_table(spin.examples, 1)
    part = spin.examples[spin.examples["iteration"] == 1]
    assert table["misaligned"].tolist() == part["misaligned"].tolist()
    assert table["logp_margin"].to_numpy() == pytest.approx(
        (part["annotated_logp_after"] - part["synthetic_logp_after"]).to_numpy()
    )
    shares = A.misalignment_shares(spin.examples)
    assert shares["misaligned_share"].max() > 0.05  # SPIN's reward disagrees with log pi
    # T-SPIN's reward is alpha * log pi: misalignment is zero by construction.
    assert A.misalignment_shares(tspin.examples)["misaligned_share"].eq(0).all()


def test_misalignment_drops_nan_margins():
    sft = build_records("sft", n_examples=10, n_iterations=2)
    assert A.misalignment_table(sft.examples).empty
    assert A.misalignment_shares(sft.examples).empty


def test_token_entropy_from_metrics_or_estimate(tspin):
    from_metrics = A.token_entropy_table(tspin.metrics, tspin.examples)
    assert from_metrics["source"].eq("metrics").all()
    est = A.token_entropy_table(None, tspin.examples)
    assert est["source"].eq("estimate").all()
    # the builder's metric is the same estimate
    assert est["token_entropy"].to_numpy() == pytest.approx(from_metrics["token_entropy"].to_numpy())
    lit = A.token_entropy_table(None, literal_examples())
    assert lit["token_entropy"].iloc[0] == pytest.approx(-(-2.0 - 1.0 - LN3 - 1.0) / 6)


# --------------------------------------------------------------------------- triplets


def test_triplet_table_filters_and_sorts():
    ex = literal_examples()
    assert A.triplet_table(ex, 0)["example_id"].tolist() == [2, 0, 1]  # u: -4, 0, ln 3
    assert A.triplet_table(ex, 0, ascending=False)["example_id"].tolist() == [1, 0, 2]
    assert A.triplet_table(ex, 0, current=(-1, 5))["example_id"].tolist() == [0, 1]
    assert A.triplet_table(ex, 0, historical=(0.5, 10))["example_id"].tolist() == [0, 1]
    assert A.triplet_table(ex, 0, correct=True)["example_id"].tolist() == [0]
    assert A.triplet_table(ex, 0, correct=False)["example_id"].tolist() == [2, 1]
    assert A.triplet_table(ex, 0, synthetic_equals_annotated=False)["example_id"].tolist() == [2, 1]
    assert A.triplet_table(ex, 0, proto_equals_annotated=True).empty
    assert A.triplet_table(ex, 0, sort_by="loss")["example_id"].tolist() == [2, 1, 0]
    after = A.triplet_table(ex, 0, stage="after").set_index("example_id")
    assert after.loc[0, "current_advantage"] == pytest.approx(1.0)
    with pytest.raises(KeyError, match="sort_by"):
        A.triplet_table(ex, 0, sort_by="nope")


def test_triplet_detail_literal():
    d = A.triplet_detail(literal_examples(), 0, 1)
    roles = d["roles"].set_index("role")
    assert list(roles.index) == ["annotated", "synthetic", "proto"]
    assert roles.loc["synthetic", "logp_before"] == pytest.approx(-1 - LN3)
    assert roles.loc["annotated", "logp_per_token_after"] == pytest.approx(-0.25)
    assert d["advantages"]["current_advantage_before"] == pytest.approx(LN3)
    assert d["prompt"] == "2+2="
    with pytest.raises(KeyError, match="example 9"):
        A.triplet_detail(literal_examples(), 0, 9)


def test_token_shading_recovers_characters_and_sums(tspin):
    # records made before runs recorded each token's text (`{role}_tokens`): characters, then EOS
    ex = tspin.examples.drop(columns=[f"{role}_tokens" for role in A.ROLES])
    shading = A.token_shading(ex, 1, 3, stage="after")
    row = ex[(ex["iteration"] == 1) & (ex["example_id"] == 3)].iloc[0]
    for role in A.ROLES:
        part = shading[shading["role"] == role]
        assert "".join(part["token"].iloc[:-1]) == row[role]  # characters, then EOS
        assert part["token"].iloc[-1] == "⟨eos⟩"
        assert part["logp"].sum() == pytest.approx(row[f"{role}_logp_after"])
        assert part["segmentation"].eq("characters").all()


def test_token_shading_reads_the_recorded_tokens(tspin):
    shading = A.token_shading(tspin.examples, 1, 3, stage="after")
    assert shading["segmentation"].eq("tokens").all() and shading["token"].iloc[-1] == "<eos>"


def test_split_tokens_fallbacks():
    assert A._split_tokens("ab", 3) == (["a", "b", "⟨eos⟩"], "characters")
    assert A._split_tokens("hello big world", 4)[1] == "words"
    assert A._split_tokens("xyz", 5) == (["·0", "·1", "·2", "·3", "·4"], "positions")
    assert A._split_tokens("xyz", 2, tokens=["xy", "z"]) == (["xy", "z"], "tokens")


def test_synthetic_history_marks_changes():
    frames = []
    for t, syn in enumerate(["5", "5", "4"]):
        df = literal_examples().assign(iteration=t)
        df.loc[1, "synthetic"] = syn
        df.loc[1, "synthetic_equals_annotated"] = syn == "4"
        frames.append(df)
    hist = A.synthetic_history(pd.concat(frames, ignore_index=True), 1)
    assert hist["synthetic"].tolist() == ["5", "5", "4"]
    assert hist["changed"].tolist() == [False, False, True]
    assert hist["synthetic_equals_annotated"].tolist() == [False, False, True]


# --------------------------------------------------------------------------- loss recomputation


def test_recompute_literal_weights():
    """u = 0 -> w_cur = 1/2, loss l(0) = log 2; u = ln 3 -> w_cur = 1/4; v = 0 -> w_hist = beta/2."""
    inputs = A.loss_inputs(literal_examples(), 0, "before")
    t = A.recompute_losses(inputs, kind="tspin", alpha=1.0, beta=0.2).set_index("example_id")
    assert t.loc[0, "weight_current"] == pytest.approx(0.5)
    assert t.loc[0, "loss_current"] == pytest.approx(LOG2)
    assert t.loc[1, "weight_current"] == pytest.approx(0.25)
    assert t.loc[2, "weight_historical"] == pytest.approx(0.1)
    assert t.loc[2, "loss_historical"] == pytest.approx(0.2 * LOG2)
    assert t["loss"].to_numpy() == pytest.approx((t["loss_current"] + t["loss_historical"]).to_numpy())
    assert t["drive"].to_numpy() == pytest.approx((t["weight_current"] + t["weight_historical"]).to_numpy())
    zero = A.recompute_losses(inputs, kind="tspin", alpha=1.0, beta=0.0)
    assert zero["loss_historical"].eq(0).all() and zero["weight_historical"].eq(0).all()


def test_recompute_weights_are_theorem_1_gradients():
    """dL/d lp(y) = -alpha * w_cur and dL/d lp(y0) = +alpha * w_hist, by autograd."""
    ex = build_records("tspin", n_examples=30, n_iterations=2).examples
    inputs = A.loss_inputs(ex, 1, "before")
    alpha, beta = 0.7, 0.3
    table = A.recompute_losses(inputs, kind="tspin", alpha=alpha, beta=beta)
    a = inputs.annotated.clone().requires_grad_(True)
    p = inputs.proto.clone().requires_grad_(True)
    losses.tspin_loss(a, inputs.synthetic, p, alpha=alpha, beta=beta).losses.sum().backward()
    assert (-a.grad / alpha).numpy() == pytest.approx(table["weight_current"].to_numpy())
    assert (p.grad / alpha).numpy() == pytest.approx(table["weight_historical"].to_numpy())


def test_recompute_reproduces_training_losses(tspin, spin):
    # T-SPIN at iteration 1 trained with the run's beta; the records hold losses at the after log-probs.
    part = tspin.examples[tspin.examples["iteration"] == 1]
    t = A.recompute_losses(A.loss_inputs(tspin.examples, 1, "after"), kind="tspin", alpha=1.0, beta=0.1)
    assert t["loss"].to_numpy() == pytest.approx(part["loss"].to_numpy())
    assert t["loss_historical"].to_numpy() == pytest.approx(part["loss_historical"].to_numpy())
    part = spin.examples[spin.examples["iteration"] == 2]
    t = A.recompute_losses(A.loss_inputs(spin.examples, 2, "after"), kind="spin", lam=1.0)
    assert t["loss"].to_numpy() == pytest.approx(part["loss"].to_numpy())
    assert t["reward_margin"].to_numpy() == pytest.approx(part["reward_margin"].to_numpy())
    assert t["weight_historical"].eq(0).all()


def test_spin_at_the_start_of_an_iteration_is_log2(spin):
    """Policy == reference (stage before): every reward 0, loss log 2, weight 1/2."""
    t = A.recompute_losses(A.loss_inputs(spin.examples, 0, "before"), kind="spin", lam=0.1)
    assert t["loss"].to_numpy() == pytest.approx(np.full(len(t), LOG2))
    assert t["weight_current"].to_numpy() == pytest.approx(np.full(len(t), 0.5))


def test_reference_falls_back_to_before_logps(tspin):
    """A reference-free run stores NaN references; pi_t's log-probs are the *_before columns."""
    inputs = A.loss_inputs(tspin.examples, 1, "after")
    part = tspin.examples[tspin.examples["iteration"] == 1]
    assert inputs.ref_annotated.numpy() == pytest.approx(part["annotated_logp_before"].to_numpy())
    t = A.recompute_losses(inputs, kind="tspin_ref", lam=1.0, beta=0.1)
    assert np.isfinite(t["loss"]).all()


def test_historical_mask_drops_terms_where_proto_equals_annotated():
    ex = literal_examples()
    ex.loc[0, "proto_equals_annotated"] = True
    inputs = A.loss_inputs(ex, 0, "before", mask_proto_equal_annotated=True)
    t = A.recompute_losses(inputs, kind="tspin", alpha=1.0, beta=0.5).set_index("example_id")
    assert t.loc[0, "loss_historical"] == 0 and t.loc[1, "loss_historical"] > 0


def test_loss_summary_and_top_drivers():
    table = pd.DataFrame(
        {
            "example_id": np.arange(10),
            "current_advantage": 0.0,
            "historical_advantage": 0.0,
            "loss": 1.0,
            "loss_current": 0.8,
            "loss_historical": 0.2,
            "weight_current": [0.9] + [0.1] * 9,
            "weight_historical": 0.0,
            "drive": [0.9] + [0.1] * 9,
        }
    )
    s = A.loss_summary(table, top_share=0.1)
    assert s["top_drive_share"] == pytest.approx(0.9 / 1.8)
    assert s["n_driving"] == 1 and s["loss"] == pytest.approx(1.0)
    assert A.top_drivers(table, k=3)["example_id"].tolist() == [0, 1, 2]


def test_top_drivers_matches_a_full_sort_with_ties_and_nans():
    rng = np.random.default_rng(3)
    for n, k in ((50, 15), (5, 15), (2000, 15), (40, 40), (30, 0), (30, 1)):
        drive = rng.choice([0.0, 0.25, 0.5, 1.0, np.nan, -np.inf, np.inf], size=n)  # many ties, NaN and infinities
        table = pd.DataFrame(
            {
                "example_id": rng.integers(0, n // 2 + 1, size=n),  # repeated ids too
                "current_advantage": rng.normal(size=n),
                "historical_advantage": rng.normal(size=n),
                "weight_current": rng.random(n),
                "weight_historical": rng.random(n),
                "drive": drive,
                "loss": rng.random(n),
            }
        )
        want = (
            table.sort_values(["drive", "example_id"], ascending=[False, True], kind="stable")
            .head(k)
            .reset_index(drop=True)[list(A.top_drivers(table, k=k).columns)]
        )
        pd.testing.assert_frame_equal(A.top_drivers(table, k=k), want)


def test_loss_landscape_is_linear_in_beta_and_matches_recompute(tspin):
    inputs = A.loss_inputs(tspin.examples, 2, "before")
    land = A.loss_landscape(inputs, kind="tspin", scales=np.array([0.5, 1.0]), betas=np.array([0.0, 0.5, 1.0]))
    assert len(land) == 6
    for _, r in land.iterrows():
        direct = A.recompute_losses(inputs, kind="tspin", alpha=r["scale"], beta=r["beta"])["loss"].mean()
        assert r["loss"] == pytest.approx(direct)
    spin_land = A.loss_landscape(inputs, kind="spin", scales=np.array([0.1, 1.0]), betas=np.array([0.0, 1.0]))
    assert spin_land.groupby("scale")["loss"].nunique().eq(1).all()  # no beta in SPIN


# --------------------------------------------------------------------------- Proposition 1


def test_candidates_dedup_and_previous_synthetic():
    frames = [literal_examples().assign(iteration=t) for t in (0, 1)]
    frames[0].loc[1, "synthetic"] = "9"
    ex = pd.concat(frames, ignore_index=True)
    c = A.candidate_confidences(ex, 1, 1, "before", alpha_run=1.0)
    assert c["candidate"].tolist() == ["y", "y'_1", "y'_0", "y0"]
    assert c["role"].tolist() == ["annotated", "synthetic", "synthetic", "proto"]
    c0 = A.candidate_confidences(ex, 1, 0, "before", alpha_run=1.0)  # y' == y: listed once
    assert c0["candidate"].tolist() == ["y", "y0"]


def test_confidences_scale_with_the_runs_alpha():
    """c = alpha_run * log pi; the opponent softmax(c/alpha) is the policy itself at alpha = alpha_run.

    Row 1 at iteration 0, before: log pi = (-1, -1 - ln 3, -4) for y, y'_0, y0; alpha_run = 2 gives
    c = (-2, -2 - 2 ln 3, -8).
    alpha = 2: softmax(log pi) is proportional to (1, 1/3, e^-3), so p = (3, 1, 3 e^-3) / (4 + 3 e^-3)
      = (0.723003, 0.241001, 0.035996).
    alpha = 1: softmax(2 log pi) is proportional to (1, 1/9, e^-6), so p = (1, 1/9, e^-6) / (10/9 + e^-6)
      = (0.897997, 0.099777, 0.002226). (c = log pi, the old view, would give these at alpha = 1/2.)
    """
    ex = literal_examples()
    c = A.candidate_confidences(ex, 0, 1, "before", alpha_run=2.0)
    assert c["candidate"].tolist() == ["y", "y'_0", "y0"]
    assert c["logp"].to_numpy() == pytest.approx([-1.0, -1.0 - LN3, -4.0])
    assert c["confidence"].to_numpy() == pytest.approx([-2.0, -2.0 - 2 * LN3, -8.0])
    assert A.opponent_table(c, 2.0)["probability"].to_numpy() == pytest.approx([0.723003, 0.241001, 0.035996], abs=1e-6)
    assert A.opponent_table(c, 1.0)["probability"].to_numpy() == pytest.approx([0.897997, 0.099777, 0.002226], abs=1e-6)
    with pytest.raises(ValueError, match="alpha_run"):
        A.candidate_confidences(ex, 0, 1, "before", alpha_run=0.0)


def test_opponent_alpha_is_the_trained_alpha_of_reference_free_tspin():
    assert A.opponent_alpha(build_records("tspin", n_examples=4, n_iterations=1, alpha=0.5)) == 0.5
    assert A.opponent_alpha(build_records("tspin_no_history", n_examples=4, n_iterations=1, alpha=2.0)) == 2.0
    assert (
        A.opponent_alpha(build_records("spin", n_examples=4, n_iterations=1, alpha=0.5)) == 1.0
    )  # alpha unused by SPIN


def test_opponent_distribution_and_entropy():
    cands = pd.DataFrame(
        {
            "candidate": ["a", "b", "c"],
            "role": ["annotated", "synthetic", "proto"],
            "text": ["1", "2", "3"],
            "confidence": [0.0, -LN3, -10.0],
        }
    )
    p = A.opponent_table(cands, 1.0)["probability"].to_numpy()
    assert p.sum() == pytest.approx(1.0)
    assert p[0] / p[1] == pytest.approx(3.0)  # softmax(c / 1): ratio exp(ln 3)
    assert A.opponent_table(cands, 0.01)["probability"].iloc[0] == pytest.approx(1.0, abs=1e-6)  # alpha -> 0: argmax
    curve = A.opponent_entropy_curve(cands, np.geomspace(0.01, 1000, 30))
    assert np.all(np.diff(curve["entropy"]) >= -1e-12)  # more alpha, more entropy
    assert curve["entropy"].iloc[-1] == pytest.approx(math.log(3), abs=1e-3)  # alpha -> inf: uniform
    assert curve["max_entropy"].iloc[0] == pytest.approx(math.log(3))


# --------------------------------------------------------------------------- comparison and run directories


def test_comparison_table_long_format(tspin, spin):
    table = A.comparison_table({"T-SPIN": tspin, "SPIN": spin})
    assert set(table["run"]) == {"T-SPIN", "SPIN"}
    assert set(A.COMPARISON_METRICS) <= set(table["metric"])
    score = table[(table["run"] == "SPIN") & (table["metric"] == "score")]
    assert score["x"].tolist() == [0, 1, 2, 3]


def test_run_directory_round_trip_through_load_run(tmp_path, spin):
    """The builder writes the store's layout; the engine's load_run reads it back for analysis."""
    from tspin_kit import load_run

    write_run_dir(spin, tmp_path / "run")
    rec = load_run(tmp_path / "run")
    assert len(rec.examples) == len(spin.examples)
    assert A.iterations_of(rec.examples) == [0, 1, 2]
    assert A.advantage_summary(rec.examples)["mean"].to_numpy() == pytest.approx(
        A.advantage_summary(spin.examples)["mean"].to_numpy()
    )
    assert read_run_dir(tmp_path / "run").examples.shape == spin.examples.shape
    assert isinstance(rec.examples["annotated_token_logps_after"].iloc[0][0], float)


def test_one_thread_restores_thread_count():
    before = torch.get_num_threads()
    with R.one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
