"""`compare.run_parallel`: the demo's and `tspin reproduce`'s runner of independent runs as worker processes
(threads split, one progress display), and which SFT runs make y'/y0 records."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import small_config

from tspin_kit import compare
from tspin_kit.config import RunConfig
from tspin_kit.store import load_run


@pytest.mark.slow  # a toy session (trains the toy pi_0 on first use)
def test_drive_reports_every_phase_once_done():
    events = []
    cfg = small_config(None, iterations=1, data={"num_examples": 16})
    compare._drive(cfg, "T-SPIN", lambda *e: events.append(e))
    total = 1 + 3 * cfg.iterations
    assert all(e[2] == total for e in events)
    done = [e[1] for e in events]
    assert done == sorted(done) and done[-1] == total and events[-1][3] == "done"
    assert any("train it0" in e[3] for e in events)  # progress within a phase reaches the display too


@pytest.mark.slow
@pytest.mark.multiproc
def test_parallel_runs_equal_runs_in_this_process(tmp_path):
    """Two worker processes of one thread each give the records a 1-thread run here gives."""
    cfgs = {
        m: small_config(tmp_path / "par" / m, iterations=1, method={"name": m}, data={"num_examples": 24})
        for m in ("tspin", "spin")
    }
    finished = []
    seconds = compare.run_parallel(
        [(m, c, m) for m, c in cfgs.items()],
        workers=2,
        on_done=lambda n, total, key, s: finished.append((n, total, key)),
    )
    assert set(seconds) == {"tspin", "spin"} and all(s > 0 for s in seconds.values())
    assert sorted(n for n, _, _ in finished) == [1, 2] and all(t == 2 for _, t, _ in finished)
    for m, cfg in cfgs.items():
        here = RunConfig.from_dict({**cfg.to_dict(), "run_dir": str(tmp_path / "seq" / m)})
        compare.run_parallel([(m, here, m)], workers=1)
        a, b = load_run(cfg.run_dir), load_run(here.run_dir)
        np.testing.assert_allclose(a.metrics["score_after"], b.metrics["score_after"])
        np.testing.assert_allclose(a.examples["synthetic_logp_after"], b.examples["synthetic_logp_after"], rtol=1e-6)


def test_only_the_control_makes_sft_records():
    from tspin_kit.reproduce import ReproduceConfig, run_configs

    demo = compare.run_configs(compare.ComparisonConfig(base=RunConfig()))
    assert demo[("sft", 0)].sft_records and not demo[("sft_4x", 0)].sft_records  # the report draws the control's v
    grid = run_configs(ReproduceConfig(seeds=1, iterations=1))
    assert grid[("sft", 0)].sft_records and not grid[("sft_4x", 0)].sft_records  # the claims read the control's v


def _records(scores_after: list[float], start: float, method: str):
    """RunRecords with only the metrics the score table reads."""
    import pandas as pd

    from tspin_kit.store import RunRecords

    n = len(scores_after)
    before = [start, *scores_after[:-1]]
    metrics = pd.DataFrame({"iteration": range(n), "score_before": before, "score_after": scores_after})
    return RunRecords(None, {"config": {"method": {"name": method}}}, pd.DataFrame(), metrics, {"score": start})


def test_labels_come_from_the_table_of_methods():
    from tspin_kit import methods

    for name in methods.names():
        want = methods.get(name).label + ("" if methods.get(name).self_play else " (control)")
        assert compare.label(name) == want
    assert compare.label("sft") == "SFT (control)" and compare.is_control("sft") and not compare.is_control("tspin")
    assert compare.label("sft_4x") == compare.PRESETS["sft_4x"].label and not compare.is_control("sft_4x")
    with pytest.raises(ValueError, match="unknown method 'dpo'.*sft_4x"):
        compare.ComparisonConfig(methods=("tspin", "dpo"))


def test_one_score_table_for_grids_and_labelled_runs():
    grid = {
        ("sft", 0): _records([0.5, 0.6], 0.4, "sft"),
        ("sft", 1): _records([0.7, 0.8], 0.4, "sft"),
        ("tspin", 0): _records([0.6, 0.9], 0.4, "tspin"),
        ("tspin", 1): _records([0.6, 0.7], 0.4, "tspin"),
    }
    table = compare.score_table(grid)
    assert list(table.columns) == ["pi_0", "pi_1", "pi_2"]
    assert list(table.index) == ["SFT (control)", "T-SPIN"]  # one row per method, seeds averaged
    np.testing.assert_allclose(table.loc["SFT (control)"], [0.4, 0.6, 0.7])
    np.testing.assert_allclose(table.loc["T-SPIN"], [0.4, 0.6, 0.8])
    by_label = compare.score_table({"T-SPIN s0": grid[("tspin", 0)], "T-SPIN s1": grid[("tspin", 1)]})
    assert list(by_label.index) == ["T-SPIN s0", "T-SPIN s1"]  # one row per run
    np.testing.assert_allclose(by_label.to_numpy(), [[0.4, 0.6, 0.9], [0.4, 0.6, 0.7]])
    lines = compare.verdict(grid)
    assert "T-SPIN beats SFT (control) by 10.0 points at the last iteration." in lines
    assert "T-SPIN per-iteration changes (points): +20.0, +20.0" in lines
    assert not any(line.startswith("SFT (control) per-iteration") for line in lines)  # the control is not compared


@pytest.mark.slow  # toy sessions: trains
def test_run_grid_runs_configs_on_disk_and_in_memory(tmp_path):
    """`presets.run_toy_methods` hands its toy configs to `run_grid`: a run dir is run (then reloaded), None in
    memory."""
    on_disk = small_config(tmp_path / "tspin", iterations=1, data={"num_examples": 16})
    in_memory = small_config(None, iterations=1, method={"name": "sft"}, data={"num_examples": 16})
    records = compare.run_grid({("tspin", 0): on_disk, ("sft", 0): in_memory}, workers=1)
    assert list(records) == [("tspin", 0), ("sft", 0)]
    assert records[("tspin", 0)].run_dir is not None and records[("sft", 0)].run_dir is None
    again = compare.run_grid({("tspin", 0): on_disk}, workers=1)  # finished: reloaded, not trained again
    np.testing.assert_allclose(again[("tspin", 0)].metrics["score_after"], records[("tspin", 0)].metrics["score_after"])
    assert list(compare.score_table(records).index) == ["T-SPIN", "SFT (control)"]
