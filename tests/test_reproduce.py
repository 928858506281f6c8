"""`tspin reproduce` end to end (quick mode), and the committed results that README/docs are made from."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from tspin_kit import claims as C
from tspin_kit.reproduce import ALL_ARMS, FINDINGS
from tspin_kit.reproduce_render import RESULT_FILES, render_markdown, render_section, replace_section

COMMITTED = REPO / "docs" / "reproduce" / "reproduce.json"
VERDICTS = {C.REPRODUCED, C.NOT_REPRODUCED, C.INCONCLUSIVE}


def test_committed_result_is_a_full_run():
    result = json.loads(COMMITTED.read_text())
    assert result["command"].startswith("tspin reproduce")
    assert len(result["settings"]["seeds"]) >= 3 and result["settings"]["iterations"] == 10
    assert not result["settings"]["quick"]
    # made from committed code, so the commit named in it can be checked out and rerun
    assert result["code"]["commit"] and result["code"]["dirty"] is False
    assert set(result["scores"]) == set(ALL_ARMS)
    assert {f["id"] for f in result["findings"]} == set(FINDINGS)
    assert result["alarms"]["table"] and all("alarm" in row for row in result["alarms"]["table"])
    assert {c["id"] for c in result["claims"]} >= {"a", "b", "c", "d", "e", "f1", "f2", "f3", "f4"}
    assert all(c["verdict"] in VERDICTS for c in result["claims"])
    assert result["pi0"]["source"] == "shipped"
    for key in ("cpu", "cores", "threads", "torch", "transformers"):
        assert key in result["machine"]


def test_committed_tables_are_what_the_renderer_makes_of_the_committed_json():
    """No hand-written number: README.md, docs/results.md and claims.md equal their rendering."""
    result = json.loads(COMMITTED.read_text())
    assert (COMMITTED.parent / "claims.md").read_text() == render_markdown(result)
    for name, prefix in RESULT_FILES.items():
        text = (REPO / name).read_text()
        assert replace_section(text, render_section(result), docs_prefix=prefix) == text, (
            f"{name}: its results block differs from `tspin render-results`"
        )


@pytest.mark.slow
@pytest.mark.multiproc
def test_reproduce_quick_end_to_end(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "tspin_kit.cli", "-q", "reproduce", "--quick", "--out", str(out), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**__import__("os").environ, "TSPIN_PROGRESS": "0"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reproduce: 18 runs (9 arms x 2 seeds x 2 iterations)" in proc.stdout
    result = json.loads((out / "reproduce.json").read_text())
    assert result["settings"]["quick"] and result["settings"]["iterations"] == 2
    assert {c["id"] for c in result["claims"]} == {"a", "b", "c", "d", "e", "f1", "f2", "f3", "f4"}
    for c in result["claims"]:
        assert c["verdict"] in VERDICTS
        assert f"({c['id']}) {c['text']}: {c['verdict'].upper()}" in proc.stdout
        for p in c["parts"]:
            if p["low"] is not None:
                assert p["low"] <= p["estimate"] + 1e-9 and p["estimate"] <= p["high"] + 1e-9 or c["id"] == "a"
    assert {f["id"] for f in result["findings"]} == set(FINDINGS)
    assert (out / "claims.md").read_text() == render_markdown(result)
    page = (out / "reproduce.html").read_text()
    # self-contained: plotly.js inlined, nothing loaded from elsewhere (plotly.js itself mentions its CDN in
    # strings such as the topojson URL, which a page without maps never fetches)
    assert "Plotly.newPlot" in page and "<script src=" not in page and "<link" not in page
    # the records behind it: per-problem scores that add up to the recorded scores, machine and pi_0 in the manifest
    from tspin_kit import load_run

    r = load_run(out / "runs" / "seed1" / "spin")
    means = r.heldout.groupby("iteration")["value"].mean()
    assert means.loc[-1] == pytest.approx(r.initial["score"])
    assert np.allclose(means.loc[[0, 1]].to_numpy(), r.metrics["score_after"].to_numpy())
    assert r.manifest["pi0"]["source"] == "shipped" and r.manifest["machine"]["cores"] >= 1
    assert r.manifest["config"]["seed"] == 1 and r.manifest["config"]["model"]["toy_pi0_seed"] == 0
    # every arm of a seed started from the one shipped pi_0
    starts = {load_run(out / "runs" / "seed0" / a).initial["score"] for a in ALL_ARMS}
    assert len(starts) == 1
