"""Tests for tspin_kit.figures: valid plotly, one colour per role, units on axes, data that moves.

figures.py builds figures without plotly's per-property validation (for slider speed); every test
here re-validates with ``go.Figure(fig.to_dict())`` so a misspelt property still fails.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from tspin_kit import analysis as A
from tspin_kit import figures as F
from tspin_kit.synthetic import build_records


@pytest.fixture(scope="module")
def runs():
    return {
        "T-SPIN": build_records("tspin", n_examples=60, n_iterations=3),
        "SPIN": build_records("spin", n_examples=60, n_iterations=3, seed=1),
    }


def validated(fig: go.Figure) -> go.Figure:
    """Re-build ``fig`` with validation on (raises ValueError on any invalid property); return ``fig``."""
    go.Figure(data=[dict(t._props) for t in fig.data], layout=dict(fig.layout._props))
    return fig


def axis_titles(fig: go.Figure) -> list[str]:
    d = fig.layout._props
    return [v["title"]["text"] for k, v in d.items() if k.startswith(("xaxis", "yaxis")) and "title" in v]


def test_role_colours_are_distinct_and_named():
    assert set(F.ROLE_COLORS) == {"annotated", "synthetic", "proto"}
    assert len(set(F.ROLE_COLORS.values())) == 3
    # every method of the table has its own colour, used by the figures
    from tspin_kit import methods as M

    colours = [F.method_color(n) for n in M.names()]
    assert len(set(colours)) == len(colours) and F.method_color("tspin") == M.get("tspin").color


def test_advantage_decay(runs):
    summaries = {k: (A.advantage_summary(r.examples), A.run_settings(r)["method"]) for k, r in runs.items()}
    fig = validated(F.advantage_decay(summaries, marker_iteration=1))
    assert len(fig.data) == 2 * 2 * 2  # runs x panels x (band, mean)
    means = [t for t in fig.data if t.mode == "lines+markers"]
    assert {t.line.color for t in means} == {F.method_color("tspin"), F.method_color("spin")}
    assert all("nats" in t for t in axis_titles(fig) if t.startswith("advantage"))
    assert "iteration t" in axis_titles(fig)
    tsp = [t for t in means if t.name == "T-SPIN" and t.xaxis == "x"][0]
    expected = summaries["T-SPIN"][0].query("advantage == 'current'")["mean"].to_numpy()
    assert np.asarray(tsp.y) == pytest.approx(expected)
    assert len(fig.layout.shapes) == 2


def test_degenerate_scores_entropy(runs):
    m = {k: A.run_settings(r)["method"] for k, r in runs.items()}
    deg = validated(F.degenerate_shares({k: (A.degenerate_shares(r.examples), m[k]) for k, r in runs.items()}))
    assert len(deg.data) == 4 and deg.layout.yaxis.tickformat == ".0%"
    sc = validated(F.scores({k: (A.policy_scores(r.metrics), m[k]) for k, r in runs.items()}, marker_iteration=0))
    assert list(sc.data[0].x) == [0, 1, 2, 3]
    assert "accuracy" in sc.layout.yaxis.title.text
    assert "nats" in F.scores({}, score_name="logp_per_token").layout.yaxis.title.text
    ent = validated(F.token_entropy({k: (A.token_entropy_table(r.metrics, r.examples), m[k]) for k, r in runs.items()}))
    assert "nats/token" in ent.layout.yaxis.title.text


def test_vanishing_advantages_and_reward_margins(runs):
    sft = build_records("sft", n_examples=60, n_iterations=3, seed=2)
    all_runs = {"SFT": sft, **runs}
    m = {k: A.run_settings(r)["method"] for k, r in all_runs.items()}
    u = {k: (A.current_advantage_split(r.examples), m[k]) for k, r in all_runs.items()}
    fig = validated(F.vanishing_advantages(u, A.historical_advantage_table(all_runs), marker_iteration=1))
    left = [t for t in fig.data if t.xaxis == "x" and t.mode == "lines+markers"]
    assert [(t.name, t.line.dash) for t in left] == [(k, d) for k in all_runs for d in ("solid", "dash")]
    spin_nd = next(t for t in left if t.name == "SPIN" and t.line.dash == "solid")
    expected = u["SPIN"][0].query("subset == 'non-degenerate'")["mean"].to_numpy()
    assert np.asarray(spin_nd.y) == pytest.approx(expected)
    right = {t.name: t for t in fig.data if t.xaxis == "x2"}
    assert set(right) == {"SFT (SFT control)", "SPIN", "T-SPIN"}
    assert (
        right["SFT (SFT control)"].line.color == F.method_color("sft")
        and right["SFT (SFT control)"].line.dash == "dash"
    )
    assert {t.name for t in fig.data if t.showlegend} == set(all_runs)
    assert len(fig.layout.shapes) == 2
    margins = validated(F.reward_margins({k: (A.reward_margin_split(r.examples), m[k]) for k, r in all_runs.items()}))
    assert {t.name for t in margins.data if t.showlegend} == {"SPIN", "T-SPIN"}  # SFT has no reward: left out
    assert "nats" in margins.layout.yaxis.title.text
    validated(F.vanishing_advantages({}))
    validated(F.reward_margins({}))


def test_misalignment_titles_carry_the_share(runs):
    tables = {k: (A.misalignment_table(r.examples, 1), A.run_settings(r)["method"]) for k, r in runs.items()}
    fig = validated(F.misalignment(tables, 1))
    share = tables["SPIN"][0]["misaligned"].mean()
    titles = [a.text for a in fig.layout.annotations]
    assert any(f"{share:.1%} misaligned" in t for t in titles)
    assert any("0.0% misaligned" in t for t in titles)  # T-SPIN: zero by construction
    assert all("nats" in t for t in axis_titles(fig) if t.startswith("log"))
    red = [t for t in fig.data if t.name == "misaligned"]
    assert sum(len(t.x) for t in red) == tables["SPIN"][0]["misaligned"].sum()


def test_token_logps_and_history_use_role_colours(runs):
    ex = runs["T-SPIN"].examples
    fig = validated(F.token_logps(A.token_shading(ex, 1, 2)))
    assert [t.line.color for t in fig.data] == [F.ROLE_COLORS[r] for r in A.ROLES]
    assert fig.layout.yaxis.title.text == "log-prob (nats)"
    hist = validated(F.synthetic_history(A.synthetic_history(ex, 2), 2))
    assert hist.data[0].line.color == F.ROLE_COLORS["synthetic"]


def test_gradient_weights_follow_alpha(runs):
    inputs = A.loss_inputs(runs["T-SPIN"].examples, 2)
    figs = {}
    for alpha in (0.2, 2.0):
        table = A.recompute_losses(inputs, kind="tspin", alpha=alpha, beta=0.3)
        figs[alpha] = validated(F.gradient_weights(table, kind="tspin", scale=alpha, beta=0.3))
        pts = figs[alpha].data[0]
        assert np.asarray(pts.y) == pytest.approx(1 / (1 + np.exp(alpha * np.asarray(pts.x))))
    assert not np.allclose(figs[0.2].data[0].y, figs[2.0].data[0].y)
    assert "α = 0.2" in figs[0.2].layout.title.text
    assert "current advantage u (nats)" in axis_titles(figs[0.2])


def test_large_scatter_is_subsampled():
    rec = build_records("tspin", n_examples=6000, n_iterations=1, token_lists=False)
    table = A.recompute_losses(A.loss_inputs(rec.examples, 0), kind="tspin", alpha=1.0, beta=0.1)
    fig = F.gradient_weights(table, kind="tspin", scale=1.0, beta=0.1)
    assert len(fig.data[0].x) == F.MAX_POINTS
    assert "6,000 examples" in fig.layout.title.text


def test_landscape_drivers_opponent(runs):
    inputs = A.loss_inputs(runs["T-SPIN"].examples, 1)
    land = A.loss_landscape(inputs, kind="tspin", scales=np.geomspace(0.1, 5, 5), betas=np.linspace(0, 1, 3))
    heat = validated(F.loss_landscape(land, kind="tspin", scale=1.0, beta=0.1))
    assert heat.data[0].type == "heatmap" and np.asarray(heat.data[0].z).shape == (3, 5)
    assert (heat.data[1].x[0], heat.data[1].y[0]) == (1.0, 0.1)
    line = validated(F.loss_landscape(land, kind="spin", scale=0.5, beta=0.0))
    assert line.data[0].type == "scatter" and "λ" in line.layout.xaxis.title.text
    top = A.top_drivers(A.recompute_losses(inputs, kind="tspin", alpha=1.0, beta=0.1), k=5)
    bars = validated(F.top_drivers(top))
    assert list(bars.data[0].y) == [f"#{e}" for e in top["example_id"]]
    cands = A.candidate_confidences(runs["T-SPIN"].examples, 1, 3, alpha_run=A.opponent_alpha(runs["T-SPIN"]))
    opp = validated(
        F.opponent(A.opponent_table(cands, 0.5), A.opponent_entropy_curve(cands, np.geomspace(0.05, 20, 10)), 0.5, 1.0)
    )
    assert "c = 1·log π(z|x)" in opp.layout.title.text
    assert list(opp.data[0].marker.color) == [F.ROLE_COLORS[r] for r in cands["role"]]
    assert "entropy (nats)" in axis_titles(opp)


def test_empty_inputs_still_make_figures():
    for fig in (F.advantage_decay({}), F.misalignment({}), F.scores({}), F.degenerate_shares({}), F.token_entropy({})):
        validated(fig)


def test_run_comparison_and_report_figures(runs, tmp_path):
    table = A.comparison_table(runs)
    fig = validated(F.run_comparison(table, ["score", "misaligned_share"]))
    assert len(fig.data) == 4 and fig.layout.yaxis2.tickformat == ".0%"
    figs = F.report_figures(runs)
    assert set(figs) == {
        "advantage_decay",
        "degenerate_shares",
        "scores",
        "token_entropy",
        "misalignment",
        "run_comparison",
        "vanishing_advantages",
        "reward_margins",
    }
    for name, f in figs.items():
        validated(f)
        path = tmp_path / f"{name}.html"
        f.write_html(path, include_plotlyjs=False, full_html=False)
        assert path.stat().st_size > 500


def test_weight_curves_come_from_the_objective():
    """The drawn curves are Theorem 1's weights: sigmoid(-s*u) and beta*sigmoid(-s*v); 0 without a history term."""
    table = pd.DataFrame(
        {
            "example_id": [0, 1],
            "current_advantage": [-1.0, 2.0],
            "historical_advantage": [0.5, -0.5],
            "weight_current": [0.7, 0.1],
            "weight_historical": [0.03, 0.06],
        }
    )
    fig = F.gradient_weights(table, kind="tspin", scale=2.0, beta=0.3)
    cur, hist = [t for t in fig.data if t.name == "weight curve"]
    x = np.asarray(cur.x)
    np.testing.assert_allclose(cur.y, 1 / (1 + np.exp(2.0 * x)), atol=1e-12)
    np.testing.assert_allclose(hist.y, 0.3 / (1 + np.exp(2.0 * np.asarray(hist.x))), atol=1e-12)
    spin = F.gradient_weights(table, kind="spin", scale=0.5, beta=0.3)
    assert np.all(np.asarray([t for t in spin.data if t.name == "weight curve"][1].y) == 0)
