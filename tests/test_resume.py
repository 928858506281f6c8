"""Resume: a run killed with SIGKILL at any phase ends identical to an uninterrupted one; damaged or foreign
run directories give errors that name the file or the field, and change nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import (
    PYTHON,
    read_safetensors,
    small_config,
    small_config_dict,
    subprocess_env,
    write_yaml,
)

from tspin_kit.session import SelfPlaySession
from tspin_kit.store import RunDirError


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def run_copy(stepped_run, tmp_path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(stepped_run.run_dir, d)
    return d


# ----------------------------------------------------------------------------- errors


def test_different_config_on_existing_run_dir_names_the_field(run_copy):
    before = snapshot(run_copy)
    cfg = small_config(run_copy, method={"beta": 0.3}, train={"lr": 2e-4})
    with pytest.raises(
        RunDirError,
        match=r"different config \(method.beta: 0.1 != 0.3; train.lr: 0.0001 != 0.0002\)",
    ):
        SelfPlaySession(cfg).prepare()
    assert snapshot(run_copy) == before


def test_same_config_continues_a_finished_run(run_copy):
    s = SelfPlaySession(small_config(run_copy))
    s.run()
    assert s.next_phase == "done" and len(s.records().metrics) == 2


def test_resume_through_a_relative_path_or_after_a_move(run_copy, monkeypatch):
    moved = run_copy.parent / "moved"
    shutil.copytree(run_copy, moved)
    monkeypatch.chdir(run_copy.parent)
    for name in ("run", "moved"):
        s = SelfPlaySession.resume(name)
        assert s.next_phase == "done"


def test_resume_missing_path():
    with pytest.raises(RunDirError, match=r"/no/such/run: no such run directory"):
        SelfPlaySession.resume("/no/such/run")


def test_resume_corrupt_manifest_names_the_file(run_copy):
    (run_copy / "manifest.json").write_text('{"config": ')
    with pytest.raises(RunDirError, match=r"run/manifest.json: corrupt JSON"):
        SelfPlaySession.resume(run_copy)


def test_resume_manifest_with_a_bad_config(run_copy):
    m = json.loads((run_copy / "manifest.json").read_text())
    m["config"]["method"]["alpha"] = -1
    (run_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RunDirError, match=r"manifest.json: corrupt config.*method.alpha = -1"):
        SelfPlaySession.resume(run_copy)


def test_resume_corrupt_state_names_the_file(run_copy):
    (run_copy / "state.json").write_text("[]")
    with pytest.raises(RunDirError, match=r"state.json: corrupt"):
        SelfPlaySession.resume(run_copy)


def test_resume_with_missing_weights(run_copy):
    shutil.rmtree(run_copy / "weights" / "policy_002")
    with pytest.raises(RunDirError, match=r"policy_002: missing weights of pi_2"):
        SelfPlaySession.resume(run_copy)


def test_resume_with_a_damaged_proto_file(run_copy):
    (run_copy / "proto.parquet").write_bytes(b"\x00" * 10)
    with pytest.raises(RunDirError, match=r"proto.parquet: unreadable Parquet"):
        SelfPlaySession.resume(run_copy)


# ----------------------------------------------------------------------------- SIGKILL a real run


def kill_config(run_dir: Path) -> dict:
    # 3 iterations; 4 epochs of 4 steps each so the train phase lasts long enough to be caught
    return small_config_dict(run_dir, iterations=3, train={"epochs": 4})


def done(run_dir: Path) -> list[str]:
    try:
        return json.loads((run_dir / "state.json").read_text())["done"]
    except FileNotFoundError:
        return []


def start(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, "-m", "tspin_kit.cli", "-q", *args],
        cwd=cwd,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_when(proc: subprocess.Popen, run_dir: Path, cond, timeout: float = 240) -> list[str]:
    """Poll state.json every 10 ms; SIGKILL the process as soon as cond(done) holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = done(run_dir)
        if cond(state):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            return state
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended before the kill point (rc {proc.returncode}): {proc.stderr.read()[-3000:]}"
            )
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"kill point not reached in {timeout} s; state {done(run_dir)}")


def compare_runs(a: Path, b: Path, iterations: int) -> None:
    """Same weights (bitwise), records, generated samples, metrics (timing columns aside) and state."""
    for t in range(iterations + 1):
        wa, wb = (
            read_safetensors(a / "weights" / f"policy_{t:03d}"),
            read_safetensors(b / "weights" / f"policy_{t:03d}"),
        )
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"pi_{t} differs"
    pd.testing.assert_frame_equal(
        pd.read_parquet(a / "proto.parquet"), pd.read_parquet(b / "proto.parquet")
    )
    drop_seconds = lambda d: {k: v for k, v in d.items() if not k.startswith("seconds")}
    for t in range(iterations):
        ia, ib = a / "iterations" / f"iter_{t:03d}", b / "iterations" / f"iter_{t:03d}"
        pd.testing.assert_frame_equal(
            pd.read_parquet(ia / "examples.parquet"), pd.read_parquet(ib / "examples.parquet")
        )
        pd.testing.assert_frame_equal(
            pd.read_parquet(ia / "generated.parquet").drop(columns="seconds"),
            pd.read_parquet(ib / "generated.parquet").drop(columns="seconds"),
        )
        for f in ("metrics.json", "train.json"):
            assert drop_seconds(json.loads((ia / f).read_text())) == drop_seconds(
                json.loads((ib / f).read_text())
            ), f"{t} {f}"
    assert done(a) == done(b)
    ia, ib = (
        json.loads((a / "initial.json").read_text()),
        json.loads((b / "initial.json").read_text()),
    )
    assert drop_seconds(ia) == drop_seconds(ib)


@pytest.mark.slow
@pytest.mark.multiproc
def test_sigkill_during_training_and_after_training_then_resume(tmp_path, stepped_run):
    """`tspin run` is SIGKILLed while iteration 1 trains (generate:1 done, train:1 not), resumed with
    `tspin resume`, SIGKILLed again right after iteration 2's training, resumed to the end; the result equals
    an uninterrupted `tspin run` of the same config in another directory."""
    # (stepped_run is requested so the cached pi_0 exists: the subprocesses only load it)
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    ref = start(
        "run",
        "--config",
        str(write_yaml(tmp_path / "ref.yaml", kill_config(ref_dir))),
        cwd=tmp_path,
    )
    proc = start(
        "run",
        "--config",
        str(write_yaml(tmp_path / "killed.yaml", kill_config(run_dir))),
        cwd=tmp_path,
    )
    try:
        at_kill = kill_when(proc, run_dir, lambda d: "generate:1" in d)
        assert "train:1" not in at_kill and "train:1" not in done(
            run_dir
        )  # killed inside the train phase
        assert (run_dir / "weights" / "policy_001").is_dir() and not (
            run_dir / "weights" / "policy_002"
        ).exists()

        proc = start("resume", str(run_dir), cwd=tmp_path)
        kill_when(proc, run_dir, lambda d: "train:2" in d)
        assert "evaluate:2" not in done(run_dir)

        final = subprocess.run(
            [PYTHON, "-m", "tspin_kit.cli", "-q", "resume", str(run_dir)],
            cwd=tmp_path,
            env=subprocess_env(),
            check=False,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert final.returncode == 0, final.stderr[-3000:]
        assert "score_after" in final.stdout
        _out, err = ref.communicate(timeout=240)
        assert ref.returncode == 0, err[-3000:]
    finally:
        for p in (proc, ref):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert done(run_dir)[-1] == "evaluate:2"
    compare_runs(ref_dir, run_dir, iterations=3)
