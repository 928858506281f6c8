"""Instability alarms (tspin_kit.alarms) on literal records: two or three examples per iteration, with
the expected alarms worked out by hand in each test; validation against literal score curves; and the
alarms in `tspin report` and the HTML report (records built without training)."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from tspin_kit import methods as M
from tspin_kit.alarms import (
    ALARM_NAMES,
    AlarmThresholds,
    find_alarms,
    validate_alarms,
)
from tspin_kit.synthetic import build_records, write_run_dir


def literal(method: str, iterations: list[dict], label: str | None = None):
    """Records of ``method`` from per-iteration dicts of per-example lists:
    ``margin`` (reward_margin), ``before``/``after`` (annotated_logp_before/_after),
    ``equal`` (y' == y), ``misaligned``, and ``score`` (score_after of that iteration)."""
    frames, rows = [], []
    for t, it in enumerate(iterations):
        n = len(it["after"])
        frames.append(
            pd.DataFrame(
                {
                    "iteration": t,
                    "example_id": range(n),
                    "reward_margin": it.get("margin", [float("nan")] * n),
                    "annotated_logp_before": it.get("before", it["after"]),
                    "annotated_logp_after": it["after"],
                    "synthetic_equals_annotated": it.get("equal", [False] * n),
                    "misaligned": it.get("misaligned", [False] * n),
                }
            )
        )
        rows.append({"iteration": t, "score_before": float("nan"), "score_after": it.get("score", float("nan"))})
    manifest = {"config": {"method": {"name": method}}}
    if label:
        manifest["label"] = label
    return SimpleNamespace(examples=pd.concat(frames, ignore_index=True), metrics=pd.DataFrame(rows), manifest=manifest)


# Three iterations of SPIN over two examples (ids 0 and 1):
#   mean reward margin       0.30 -> 0.08 (ratio 0.27 <= 0.3: warning) -> 0.00 (ratio 0 <= 0.1: critical)
#   mean log pi(y) policies  pi_0 -5.0, pi_1 -4.0, pi_2 -4.2 (-0.2 from the best: quiet), pi_3 -5.0 (-1.0: warning)
#   share y' == y            0, 0, 1.0 (>= 0.95: critical)
#   misaligned share         0, 0.5 (+0.50 over it0's 0: critical), 0 (no rise)
SPIN_TROUBLE = [
    {"margin": [0.4, 0.2], "before": [-4.0, -6.0], "after": [-3.0, -5.0]},
    {"margin": [0.1, 0.06], "before": [-3.0, -5.0], "after": [-3.2, -5.2], "misaligned": [True, False]},
    {"margin": [0.0, 0.0], "before": [-3.2, -5.2], "after": [-3.5, -6.5], "equal": [True, True]},
]


def test_spin_run_in_trouble_fires_every_flag_at_the_hand_computed_iterations():
    alarms = find_alarms(literal("spin", SPIN_TROUBLE, label="SPIN s0"))
    got = [(a.iteration, a.name, a.severity, a.example_ids) for a in alarms]
    assert got == [
        (1, "reward_margin_collapse", "warning", (1, 0)),  # smallest margin first: 0.06 (id 1), 0.1 (id 0)
        (1, "misalignment_rising", "critical", (0,)),
        (2, "reward_margin_collapse", "critical", (0, 1)),  # both 0.0: by id
        (2, "likelihood_displacement", "warning", (1, 0)),  # vs pi_1: id 1 fell 1.5 nats, id 0 0.5
        (2, "degenerate_share", "critical", (0, 1)),
    ]
    assert all(a.run == "SPIN s0" for a in alarms)
    assert alarms[0].message == "it1: SPIN's reward margin after training fell to 0.08 (from 0.30 at it0, 27% of it)"
    assert (alarms[0].value, alarms[0].baseline) == pytest.approx((0.08, 0.3))
    assert alarms[1].message == "it1: reward/log pi misalignment rose to 50% of examples (from 0% at it0, +50 points)"
    assert alarms[3].message == (
        "it2: mean log pi(y) of annotated responses after training fell to -5.00 nats (from -4.00 under pi_1, -1.00)"
    )
    assert alarms[4].message == "it2: y' == y for 100% of pairs (2 of 2; threshold 80%)"
    assert str(alarms[4]).startswith("[critical] SPIN s0: it2: y' == y")


def test_which_methods_each_flag_watches():
    # T-SPIN's margin is alpha * u, not a reference-based reward: no collapse flag; the rest as for SPIN.
    names = [(a.iteration, a.name) for a in find_alarms(literal("tspin", SPIN_TROUBLE))]
    assert names == [(1, "misalignment_rising"), (2, "likelihood_displacement"), (2, "degenerate_share")]
    assert {a.name for a in find_alarms(literal("tspin_ref", SPIN_TROUBLE))} == set(ALARM_NAMES)
    # SFT: y' is not in its loss and it has no reward; only log pi(y) is watched.
    assert [a.name for a in find_alarms(literal("sft", SPIN_TROUBLE))] == ["likelihood_displacement"]


def test_a_healthy_run_raises_no_alarm():
    healthy = [  # margin grows, log pi(y) rises, y' != y, misalignment falls
        {"margin": [0.3, 0.3], "before": [-6.0, -6.0], "after": [-5.0, -5.0], "misaligned": [True, False]},
        {"margin": [0.4, 0.3], "after": [-4.5, -4.0], "equal": [True, False]},
        {"margin": [0.2, 0.1], "after": [-4.4, -4.3], "equal": [True, False]},  # ratio 0.5 > 0.3; -0.1 nats: quiet
    ]
    for method in M.names():
        assert find_alarms(literal(method, healthy)) == [], method
    empty = SimpleNamespace(examples=pd.DataFrame(), metrics=pd.DataFrame(), manifest={})
    assert find_alarms(empty) == []


def test_thresholds_move_the_flags():
    # With a 50% degenerate threshold a 50% share at it1 fires (ids: the y' == y one).
    healthy_equal = [{"after": [-5.0, -5.0]}, {"after": [-4.5, -4.0], "equal": [True, False]}]
    th = AlarmThresholds(degenerate_share=0.5)
    alarms = find_alarms(literal("spin", healthy_equal), th)
    assert [(a.iteration, a.name, a.severity, a.example_ids) for a in alarms] == [
        (1, "degenerate_share", "warning", (0,))
    ]
    # A displacement threshold above the 1.0-nat drop silences it; the margin needs a baseline > 0.
    assert "likelihood_displacement" not in {
        a.name
        for a in find_alarms(
            literal("spin", SPIN_TROUBLE), AlarmThresholds(displacement_nats=1.5, displacement_nats_critical=3)
        )
    }
    no_baseline = [{"margin": [0.0, 0.0], "after": [-5.0, -5.0]}, {"margin": [-0.1, 0.0], "after": [-5.0, -5.0]}]
    assert find_alarms(literal("spin", no_baseline)) == []
    # top_examples caps the ranked lists
    first = find_alarms(literal("spin", SPIN_TROUBLE), AlarmThresholds(top_examples=1))[0]
    assert first.example_ids == (1,)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"margin_collapse_ratio_critical": 0.5}, "margin_collapse_ratio_critical"),
        ({"degenerate_share": 1.5, "degenerate_share_critical": 1.6}, "degenerate_share"),
        ({"displacement_nats_critical": 0.1}, "displacement_nats_critical"),
        ({"top_examples": 0}, "top_examples"),
    ],
)
def test_bad_thresholds_fail_at_construction(kwargs, field):
    with pytest.raises(ValueError, match=field):
        AlarmThresholds(**kwargs)


def _flagged(method, scores, equal_at=(), misaligned_at=()):
    """A run whose only alarms are degenerate_share at ``equal_at`` and misalignment_rising at
    ``misaligned_at`` (margins constant, log pi(y) constant), with the given score_after curve."""
    its = []
    for t, s in enumerate(scores):
        its.append(
            {
                "margin": [1.0, 1.0],
                "after": [-5.0, -5.0],
                "score": s,
                "equal": [t in equal_at] * 2,
                "misaligned": [t in misaligned_at, False],
            }
        )
    return literal(method, its)


def test_validate_alarms_counts_hits_misses_and_unforetold_drops():
    # Run A, points (score x100):  50, 52, 49, 49.5, 46.5. Drops of >= 2 within 2 iterations:
    #   d=2 (52 -> 49), d=3 (52 -> 49.5), d=4 (49 -> 46.5, 49.5 -> 46.5).
    #   degenerate at it1: followed by the drop at it2 -> before_drop; at it4: last iteration -> unjudged.
    #   misalignment at it3: 49.5 -> 46.5 at it4 -> before_drop.
    #   caught: d=2, d=3 by degenerate@1; d=4 by misalignment@3.
    a = _flagged("spin", [0.50, 0.52, 0.49, 0.495, 0.465], equal_at=(1, 4), misaligned_at=(3,))
    # Run B, points 60, 61, 58.5, 59.5. Drops: d=2 (61 -> 58.5) only.
    #   degenerate at it0: 60 -> 61, 58.5 (only 1.5 down) -> without_drop. The drop at it2 follows no alarm.
    b = _flagged("tspin", [0.60, 0.61, 0.585, 0.595], equal_at=(0,))
    table = validate_alarms([a, b], drop_points=2.0, horizon=2)
    assert list(table.index) == [*ALARM_NAMES, "any"]
    assert table.loc["degenerate_share"].to_dict() == {
        "fired": 3,
        "before_drop": 1,
        "without_drop": 1,
        "unjudged": 1,
        "drops": 4,
        "drops_caught": 2,
        "drops_missed": 2,
    }
    assert table.loc["misalignment_rising"].to_dict() == {
        "fired": 1,
        "before_drop": 1,
        "without_drop": 0,
        "unjudged": 0,
        "drops": 4,
        "drops_caught": 1,
        "drops_missed": 3,
    }
    assert table.loc["reward_margin_collapse"].to_dict() == {
        "fired": 0,
        "before_drop": 0,
        "without_drop": 0,
        "unjudged": 0,
        "drops": 4,
        "drops_caught": 0,
        "drops_missed": 4,
    }
    assert table.loc["any"].to_dict() == {
        "fired": 4,
        "before_drop": 2,
        "without_drop": 1,
        "unjudged": 1,
        "drops": 4,
        "drops_caught": 3,
        "drops_missed": 1,
    }

    # horizon 1: drops A d=2 (52 -> 49), d=4 (49.5 -> 46.5); B d=2 (61 -> 58.5): 3 drops, B's missed.
    one = validate_alarms([a, b], horizon=1)
    assert one.loc["any"].to_dict() == {
        "fired": 4,
        "before_drop": 2,
        "without_drop": 1,
        "unjudged": 1,
        "drops": 3,
        "drops_caught": 2,
        "drops_missed": 1,
    }
    # In points already (not fractions): the same curve x100 gives the same table.
    a100 = _flagged("spin", [50, 52, 49, 49.5, 46.5], equal_at=(1, 4), misaligned_at=(3,))
    b100 = _flagged("tspin", [60, 61, 58.5, 59.5], equal_at=(0,))
    assert validate_alarms([a100, b100]).equals(table)
    # drops of 2.9 points: A's d=2 (52 -> 49) and d=4 (49.5 -> 46.5), both foretold; B's 2.5 is no longer one
    three = validate_alarms([a100, b100], drop_points=2.9)
    assert three.loc["any"].to_dict() == {
        "fired": 4,
        "before_drop": 2,
        "without_drop": 1,
        "unjudged": 1,
        "drops": 2,
        "drops_caught": 2,
        "drops_missed": 0,
    }
    with pytest.raises(ValueError, match="horizon"):
        validate_alarms([a], horizon=0)


# --------------------------------------------------------------------------- shown in the report and the CLI


@pytest.fixture(scope="module")
def spin_run_dir(tmp_path_factory):
    # build_records' SPIN margin shrinks with iterations: at 4 iterations it collapses below 30% of it0's.
    return write_run_dir(
        build_records("spin", n_examples=60, n_iterations=4, seed=1), tmp_path_factory.mktemp("alarms") / "spin"
    )


def test_tspin_report_prints_and_renders_the_alarms(spin_run_dir, capsys, tmp_path):
    from tspin_kit import load_run
    from tspin_kit.cli import main

    alarms = find_alarms(load_run(spin_run_dir), label="spin")
    assert alarms and {a.name for a in alarms} >= {"reward_margin_collapse"}
    out_html = tmp_path / "r.html"
    assert main(["-q", "report", str(spin_run_dir), "--out", str(out_html)]) == 0
    out = capsys.readouterr().out
    assert f"alarms of spin: {len(alarms)}" in out
    for a in alarms:
        assert f"[{a.severity}] {a.message}" in out
    page = out_html.read_text()
    assert "instability alarms" in page and page.count("class='alarm alarm-") == len(alarms)
    assert alarms[0].message.replace("'", "&#x27;") in page


def test_report_section_says_when_no_alarm_fired():
    from tspin_kit.report import alarms_html

    a = find_alarms(literal("spin", SPIN_TROUBLE), AlarmThresholds(top_examples=1))
    page = alarms_html({"quiet run": [], "SPIN": a})
    assert "No alarm fired." in page and page.count("<li") == 5 and "data-alarm='degenerate_share'" in page


def test_alarm_messages_name_the_method_by_its_label():
    from tspin_kit.alarms import run_label

    rec = literal("tspin_no_history", [{"after": [-5.0, -5.0]}])
    rec.manifest.pop("label", None)
    assert run_label(rec).startswith(M.get("tspin_no_history").label)
