"""`compare.run_parallel`: the demo's and `tspin reproduce`'s runner of independent runs as worker processes
(threads split, one progress display), and which SFT runs make y'/y0 records."""

from __future__ import annotations

import numpy as np
import pytest

from tspin_kit import compare
from tspin_kit.config import RunConfig
from tspin_kit.store import load_run

from conftest import small_config


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
    cfgs = {m: small_config(tmp_path / "par" / m, iterations=1, method={"name": m}, data={"num_examples": 24})
            for m in ("tspin", "spin")}
    finished = []
    seconds = compare.run_parallel([(m, c, m) for m, c in cfgs.items()], workers=2,
                                   on_done=lambda n, total, key, s: finished.append((n, total, key)))
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
