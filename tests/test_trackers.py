"""report_to (issue 12, item 1): a toy run reports to trackio (local store), TensorBoard (event files) and
W&B (offline), and the values read back equal the run's records. The trackers are in the `dev` extra, so
these tests import them plainly: a missing tracker fails here, it never skips."""

from __future__ import annotations

import json

import pytest
from conftest import small_config

from tspin_kit import trackers as T
from tspin_kit.session import SelfPlaySession


def test_triplet_tables_are_top_and_bottom_k(stepped_run):
    rec = stepped_run.session.records().iteration(1)
    tables = T.triplet_tables(rec, k=3)
    u = tables["current_advantage"]
    assert u["rank"].tolist() == ["top 1", "top 2", "top 3", "bottom 1", "bottom 2", "bottom 3"]
    ordered = rec["current_advantage_after"].sort_values()
    assert (
        u["current_advantage_after"].iloc[0] == ordered.iloc[-1]
        and u["current_advantage_after"].iloc[3] == ordered.iloc[0]
    )
    assert {"prompt", "annotated", "synthetic", "proto", "synthetic_logp_after"} <= set(u.columns)
    assert "historical_advantage" in tables


def test_missing_tracker_names_the_extra():
    from tspin_kit.config import ConfigError

    with pytest.raises(
        ConfigError, match=r"wandb_not_installed_here is not installed: pip install 'tspin-kit\[wandb\]'"
    ):
        T._need("wandb_not_installed_here", "wandb")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, stepped_run):
    root = tmp_path_factory.mktemp("trackers")
    mp = pytest.MonkeyPatch()
    mp.setenv("TRACKIO_DIR", str(root / "trackio"))
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("WANDB_DIR", str(root / "wandb"))
    import trackio.utils

    mp.setattr(trackio.utils, "TRACKIO_DIR", root / "trackio", raising=False)
    cfg = small_config(root / "run", report_to=["trackio", "tensorboard", "wandb"])
    s = SelfPlaySession(cfg)
    rec = s.run()
    yield root, s, rec
    mp.undo()


def step_terms(run_dir) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for t in range(2):
        info = json.loads((run_dir / "iterations" / f"iter_{t:03d}" / "train.json").read_text())
        for k, v in info["step_terms"].items():
            out.setdefault(k, []).extend(v)
    return out


def step_losses(run_dir) -> list[float]:
    out = []
    for t in range(2):
        out += json.loads((run_dir / "iterations" / f"iter_{t:03d}" / "train.json").read_text())["step_losses"]
    return out


@pytest.mark.slow
def test_tensorboard_values_equal_the_records(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _, rec = tracked
    ea = EventAccumulator(str(root / "run" / "trackers" / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    for col in (
        "score_after",
        "current_advantage_after_mean",
        "historical_advantage_after_q90",
        "misaligned_share",
        "share_synthetic_equals_annotated",
        "synthetic_token_entropy",
        "seconds_train",
        "loss_mean",
    ):
        got = [(e.step, e.value) for e in ea.Scalars(f"iteration/{col}")]
        assert [g[0] for g in got] == [0, 1]
        assert [g[1] for g in got] == pytest.approx(rec.metrics[col].tolist(), rel=1e-6), col
    from tspin_kit.alarms import ALARM_NAMES, find_alarms

    fired = {(a.name, a.iteration): a.severity for a in find_alarms(rec)}
    for name in ALARM_NAMES:
        got = [(e.step, e.value) for e in ea.Scalars(f"iteration/alarm_{name}")]
        want = [(t, {"warning": 1.0, "critical": 2.0}.get(fired.get((name, t)), 0.0)) for t in (0, 1)]
        assert got == want, name
    losses = [e.value for e in ea.Scalars("train/loss")]
    assert losses == pytest.approx(step_losses(root / "run"), rel=1e-6)
    terms = step_terms(root / "run")
    assert set(terms) == {"current_term", "historical_term", "current_weight", "historical_weight"}  # T-SPIN
    for name, values in terms.items():
        assert [e.value for e in ea.Scalars(f"train/{name}")] == pytest.approx(values, rel=1e-6), name
    # the loss of T-SPIN is its current plus its historical term, step by step
    assert [c + h for c, h in zip(terms["current_term"], terms["historical_term"])] == pytest.approx(losses, rel=1e-5)
    assert all(0.0 <= w <= 1.0 for w in terms["current_weight"])
    text = ea.Tensors("triplets/current_advantage/text_summary")[-1].tensor_proto.string_val[0].decode()
    it1 = rec.iteration(1)
    best = it1.loc[it1["current_advantage_after"].idxmax()]
    assert str(best["prompt"]) in text and "top 1" in text


@pytest.mark.slow
def test_trackio_values_equal_the_records(tracked):
    from trackio.sqlite_storage import SQLiteStorage

    root, _, rec = tracked
    runs = SQLiteStorage.get_runs("tspin-kit")
    name = next(r for r in runs if "run" in str(r))
    logs = SQLiteStorage.get_logs("tspin-kit", name)
    it_rows = [r for r in logs if "iteration/score_after" in r]
    assert [r["step"] for r in it_rows] == [0, 1]
    for col in ("score_after", "current_advantage_after_mean", "historical_advantage_after_mean", "misaligned_share"):
        assert [r[f"iteration/{col}"] for r in it_rows] == pytest.approx(rec.metrics[col].tolist(), rel=1e-9), col
    losses = [r["train/loss"] for r in sorted(logs, key=lambda r: r["step"]) if "train/loss" in r]
    assert losses == pytest.approx(step_losses(root / "run"), rel=1e-9)
    assert any("triplets/historical_advantage" in r for r in it_rows)


def wandb_history(path) -> list[dict]:
    """History rows of an offline W&B run file (`run-*.wandb`): LevelDB-log framing of protobuf records
    (7-byte file header; per chunk crc32, length, type; 32 KiB blocks), as wandb's own datastore writes it."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, out, buf = path.read_bytes(), 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):  # block trailer / padding
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: one whole record
            r = pb.Record()
            r.ParseFromString(buf)
            buf = b""
            if r.WhichOneof("record_type") == "history":
                out.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
    return out


@pytest.mark.slow
def test_wandb_offline_values_equal_the_records(tracked):
    root, _, rec = tracked
    files = list((root / "run" / "trackers" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, "wandb wrote no offline run"
    rows = wandb_history(files[0])
    it_rows = [r for r in rows if "iteration/iteration" in r]
    assert [r["iteration/iteration"] for r in it_rows] == [0, 1]
    for col in ("score_after", "current_advantage_after_mean", "historical_advantage_after_q10", "misaligned_share"):
        assert [r[f"iteration/{col}"] for r in it_rows] == pytest.approx(rec.metrics[col].tolist(), rel=1e-9), col
    assert [r["train/loss"] for r in rows if "train/loss" in r] == pytest.approx(step_losses(root / "run"), rel=1e-6)
    assert all(any(k.startswith("triplets/current_advantage") for k in r) for r in it_rows)
