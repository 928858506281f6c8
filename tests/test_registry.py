"""The table of methods (issue 9): existing methods record the same numbers as before the registry (golden
records made at the commit before it, tests/golden/), and a throwaway objective needs only its registration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tspin_kit import methods as M
from tspin_kit.records import method_columns

GOLDEN = Path(__file__).parent / "golden"
META = json.loads((GOLDEN / "golden.json").read_text())
ROLES = ("annotated", "synthetic", "proto")


def numeric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c])]


# The golden records were made on an Intel Xeon. Another CPU rounds float32 in another order (SIMD width, GEMM
# blocking): on an AMD EPYC every sampled response, flag and accuracy was the same, and every number within 1.2e-5 of
# the golden one. Every number of a record is computed from summed log-probs of magnitude up to ~43 (their float32
# ulp: 3.8e-6), and a difference of two of them (an advantage, a reward against the reference) keeps their rounding,
# not its own magnitude's: the AMD's largest difference, 1.1e-5, is 2.3 ulps of the largest log-prob. So a run that
# computes the numbers again is compared to `ULPS` ulps of the largest golden log-prob (~8e-5): any CPU's float32
# rounding, and far below any change of what a method computes. (A bare 1e-6 was below one ulp of a log-prob of 16:
# it held on the golden records' own CPU only.)
ULPS = 16


def float32_tolerance(examples: pd.DataFrame, ulps: int = ULPS) -> float:
    """``ulps`` float32 ulps of the largest summed log-prob in a golden run's examples."""
    logps = examples[[c for c in examples.columns if "_logp" in c and c in numeric_columns(examples)]].to_numpy(float)
    return ulps * float(np.finfo(np.float32).eps) * float(np.abs(logps[np.isfinite(logps)]).max(initial=1.0))


def assert_frames_close(got: pd.DataFrame, want: pd.DataFrame, what: str, skip=(), atol: float = 1e-6) -> None:
    assert sorted(set(want.columns) - set(got.columns)) == [], f"{what}: columns lost"
    for c in want.columns:
        if c in skip:
            continue
        a, b = got[c], want[c]
        if c in numeric_columns(want):
            np.testing.assert_allclose(
                a.to_numpy(float), b.to_numpy(float), rtol=0, atol=atol, equal_nan=True, err_msg=f"{what}: column {c}"
            )
        elif len(b) and isinstance(b.iloc[0], (list, np.ndarray)):
            for i, (x, y) in enumerate(zip(a, b)):
                if isinstance(y, (list, np.ndarray)) and len(y) and not isinstance(y[0], str):
                    np.testing.assert_allclose(
                        np.asarray(x, float), np.asarray(y, float), atol=atol, err_msg=f"{what}: {c} row {i}"
                    )
                else:
                    assert list(x) == list(y), f"{what}: {c} row {i}"
        else:
            assert a.tolist() == b.tolist(), f"{what}: column {c}"


def test_golden_comparison_takes_float32_rounding_and_nothing_more():
    """The run-vs-golden tolerance: 16 float32 ulps of the largest log-prob (-42 here: 8.0e-5). A difference of 3
    ulps (what another CPU gave) passes, in a log-prob and in a small reward computed from such log-probs; 1e-4 off
    does not, nor a changed response or a flipped flag."""
    want = pd.DataFrame(
        {
            "synthetic_logp_before": [-42.0, -16.379274368286133, -3.5],
            "reward_synthetic": [-0.10173606872558594, 0.5, 0.0],
            "token_logps": [[-5.0, -0.25], [-1.0], [-2.0]],
            "synthetic": ["12", "7", "30"],
            "correct": [True, False, True],
        }
    )
    tol = float32_tolerance(want)
    assert tol == pytest.approx(16 * 2**-23 * 42)
    ulp = 2**-18  # float32 spacing in [32, 64)
    rounded = want.assign(
        synthetic_logp_before=[-42.0 + 3 * ulp, -16.379274368286133, -3.5],
        reward_synthetic=[-0.10173606872558594 + 3 * ulp, 0.5, 0.0],
        token_logps=[[-5.0 + 9.5e-7, -0.25], [-1.0], [-2.0]],
    )
    assert_frames_close(rounded, want, "rounded", atol=tol)
    with pytest.raises(AssertionError):
        assert_frames_close(rounded, want, "rounded, against the old 1e-6")
    for column, value in [
        ("synthetic_logp_before", -42.0001),
        ("reward_synthetic", 0.5001),
        ("token_logps", [-5.0001, -0.25]),
        ("synthetic", "13"),
    ]:
        changed = want.copy()
        changed.at[1 if column == "reward_synthetic" else 0, column] = value
        with pytest.raises(AssertionError):
            assert_frames_close(changed, want, f"changed {column}", atol=tol)
    with pytest.raises(AssertionError):
        assert_frames_close(want.assign(correct=[False, False, True]), want, "flipped flag", atol=tol)


@pytest.mark.parametrize("case", list(META["cases"]))
def test_record_builder_reproduces_golden_columns(case):
    """records.method_columns, from the golden run's own log-probs, gives its recorded method columns (pure: no
    model, so this holds on any machine)."""
    ex = pd.read_parquet(GOLDEN / f"{case}_examples.parquet")
    cfg_method = M.get(META["cases"][case]["name"])
    from conftest import small_config

    method = small_config(method=META["cases"][case]).method
    for t, part in ex.groupby("iteration"):
        logps = {w: {r: part[f"{r}_logp_{w}"].to_numpy(float) for r in ROLES} for w in ("before", "after")}
        mask = ~part["proto_equals_annotated"].to_numpy(bool) if method.mask_proto_equal_annotated else None
        cols = method_columns(
            cfg_method,
            logps["before"],
            logps["after"],
            knobs=method.knobs_at(int(t)),
            annotated_tokens=part["annotated_ntokens"].to_numpy(float),
            historical_mask=mask,
        )
        assert_frames_close(pd.DataFrame(cols), part[list(cols)].reset_index(drop=True), f"{case} it{t}")


@pytest.mark.slow
@pytest.mark.parametrize("case", list(META["cases"]))
def test_short_run_records_equal_the_golden_records(case, tmp_path):
    """A 2-iteration run of each built-in method now records what it recorded before the registry: every response,
    flag and accuracy equal, every number within `ULPS` float32 ulps of the largest log-prob (on any CPU)."""
    import sys

    sys.path.insert(0, str(GOLDEN))
    from make_golden import config_for

    from tspin_kit.session import SelfPlaySession
    from tspin_kit.store import RunStore

    rec = SelfPlaySession(config_for(case, tmp_path / "run")).run()
    want = pd.read_parquet(GOLDEN / f"{case}_examples.parquet")
    tol = float32_tolerance(want)
    assert_frames_close(rec.examples.reset_index(drop=True), want, f"{case} examples", atol=tol)
    mwant = pd.read_parquet(GOLDEN / f"{case}_metrics.parquet")
    seconds = [c for c in mwant.columns if c.startswith("seconds")]
    assert_frames_close(rec.metrics.reset_index(drop=True), mwant, f"{case} metrics", skip=seconds, atol=tol)
    store = RunStore(tmp_path / "run")
    steps = [json.loads((store.iter_dir(t) / "train.json").read_text())["step_losses"] for t in range(2)]
    np.testing.assert_allclose(np.concatenate(steps), np.concatenate(META["step_losses"][case]), rtol=0, atol=tol)


# ----------------------------------------------------------------------------- the table itself

REPO = Path(__file__).resolve().parents[1]


def test_docs_index_holds_the_current_table_and_every_method_has_its_page():
    import re

    text = (REPO / "docs" / "index.md").read_text()
    block = re.search(r"<!-- methods:begin -->\n(.*)\n<!-- methods:end -->", text, re.S)
    assert block and block.group(1) == M.docs_table(), "regenerate with `tspin methods --markdown`"
    for name, m in M.table().items():
        page = REPO / m.doc
        assert page.is_file(), f"{name}: docs page {m.doc} is missing"
        assert re.search(rf"`(method\.name: )?{name}`", page.read_text()), f"{name}: its page does not name it"


def test_aliases_resolve_and_unknown_names_list_the_table():
    from tspin_kit.config import ConfigError, MethodConfig

    assert MethodConfig(name="tspin_without_history").name == "tspin_no_history"
    with pytest.raises(ConfigError, match="method.name = 'dpo'.*one of sft, spin, tspin"):
        MethodConfig(name="dpo")
    with pytest.raises(ConfigError, match="method.params.anchor"):
        MethodConfig(name="tspin", params={"anchor": 0.1})  # not a knob of tspin
    assert MethodConfig(name="tspin_nll", params={"anchor": 0.3}).knobs_at(0) == {
        "alpha": 1.0,
        "beta": 0.0,
        "anchor": 0.3,
    }


def test_no_module_outside_the_table_switches_on_a_method_name():
    """`git grep` for comparisons with, or dict keys of, a registered method name in the engine and the views.
    The table (methods.py, objectives/) may; so may the claims of `reproduce.py`, whose arms are the papers'
    comparisons by definition (which arm, never how a method behaves)."""
    import subprocess

    names = "|".join(M.names())
    pattern = rf"""(==|!=|in \(|in \[)\s*["']({names})["']|^\s*["']({names})["']\s*:"""
    out = subprocess.run(
        [
            "git",
            "grep",
            "-nE",
            pattern,
            "--",
            "tspin_kit",
            "widgets",
            ":!tspin_kit/methods.py",
            ":!tspin_kit/objectives",
            ":!tspin_kit/reproduce.py",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode in (0, 1), out.stderr
    assert out.stdout == "", "method-name switches outside the table of methods:\n" + out.stdout


@pytest.mark.slow
def test_a_throwaway_objective_runs_through_training_records_lab_and_report(tmp_path):
    """One function, one registration, nothing else: it trains an iteration, gets records, is offered and
    recomputed by the objective lab, and appears in the HTML report."""
    import torch
    from conftest import small_config

    from tspin_kit.report import render_report
    from tspin_kit.session import SelfPlaySession

    @M.register(
        name="throwaway",
        label="Throwaway",
        color="#123456",
        roles=M.TRIPLET,
        knobs=("alpha",),
        scale="alpha",
        doc="docs/methods/tspin.md",
        formula="L = softplus(-α·u) + softplus(-α·v)/2",
    )
    def throwaway(lp: M.LogProbs, k: M.Knobs) -> M.Terms:
        u, v = lp.annotated - lp.synthetic, lp.synthetic - lp.proto
        cur, hist = torch.nn.functional.softplus(-k.alpha * u), torch.nn.functional.softplus(-k.alpha * v) / 2
        nan = torch.full_like(u, float("nan")).detach()
        return M.Terms(
            losses=cur + hist,
            current_term=cur.detach(),
            historical_term=hist.detach(),
            annotated_rewards=(k.alpha * lp.annotated).detach(),
            synthetic_rewards=(k.alpha * lp.synthetic).detach(),
            proto_rewards=(k.alpha * lp.proto).detach(),
            current_advantage=u.detach(),
            historical_advantage=v.detach(),
            reward_margin=(k.alpha * u).detach(),
            current_weight=nan,
            historical_weight=nan,
        )

    try:
        rec = SelfPlaySession(
            small_config(tmp_path / "run", method={"name": "throwaway", "alpha": 0.5}, iterations=1)
        ).run()
        ex = rec.examples
        assert len(ex) == 64 and np.isfinite(ex["loss"]).all()
        u = ex["annotated_logp_after"] - ex["synthetic_logp_after"]
        v = ex["synthetic_logp_after"] - ex["proto_logp_after"]
        want = np.logaddexp(0, -0.5 * u) + np.logaddexp(0, -0.5 * v) / 2
        np.testing.assert_allclose(ex["loss"], want, atol=1e-9)  # the records hold its loss at pi_1
        assert rec.metrics["method"].tolist() == ["throwaway"]

        import widgets as Wd

        lab = Wd.ObjectiveLab(tmp_path / "run")
        assert lab.kind.value == "throwaway" and ("Throwaway", "throwaway") in lab.kind.options
        assert not lab.alpha.disabled and lab.beta.disabled and lab.lam.disabled
        lab.alpha.value = 1.0
        np.testing.assert_allclose(
            lab.table["loss"].mean(),
            np.mean(
                np.logaddexp(0, -(ex["annotated_logp_before"] - ex["synthetic_logp_before"]))
                + np.logaddexp(0, -(ex["synthetic_logp_before"] - ex["proto_logp_before"])) / 2
            ),
            atol=1e-9,
        )
        assert lab.table["grad_annotated"].lt(0).all()  # it pushes log pi(y) up on every example
        page = render_report({"throwaway run": rec}, title="throwaway")
        assert "Throwaway" in page or "throwaway" in page
    finally:
        M.unregister("throwaway")
