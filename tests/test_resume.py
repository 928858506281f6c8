"""Resume: a run killed with SIGKILL at any phase ends identical to an uninterrupted one; damaged or foreign
run directories give errors that name the file or the field, and change nothing."""

from __future__ import annotations

import copy
import json
import logging
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
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


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


# ----------------------------------------------------------------------------- checkpoints inside the train phase


class Interrupt(Exception):
    pass


def checkpoint_examples(pi0, toy_world):
    """16 toy prompts with y, and wrong answers of the same shape as y' and y0 (as in test_training)."""
    from tspin_kit.training import build_examples

    _model, tok = pi0
    rows = toy_world[0][:16]
    ex = build_examples(tok, [r["prompt"] for r in rows], [r["response"] for r in rows])
    ex.synthetic_ids = ex.annotated_ids[1:] + ex.annotated_ids[:1]
    ex.proto_ids = ex.annotated_ids[2:] + ex.annotated_ids[:2]
    return ex


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_train_iteration_interrupted_then_called_again_continues_from_its_checkpoint(
    pi0, toy_world, tmp_path, caplog, schedule
):
    """Interrupted after step 5 of 8 (checkpoint at step 3), then called again on a fresh copy of pi_0 (as a
    new process would): it continues from step 4 and ends with the weights, losses and loss terms of one
    uninterrupted call; the checkpoint folder is gone at the end. A constant schedule is past its warm-up at the
    checkpoint (train_iteration no longer steps it): its learning rate comes back from the schedule, even from an
    optimiser state that brings none back (DeepSpeed's elastic ZeRO checkpoints; simulated by a wrong one)."""
    from tspin_kit.config import MethodConfig, TrainConfig
    from tspin_kit.training import train_iteration

    ex = checkpoint_examples(pi0, toy_world)
    # warmup (2 steps) + linear decay or constant, clipping and AdamW: the scheduler's and optimiser's state both matter
    train = TrainConfig(
        optimizer="adamw",
        lr=1e-3,
        epochs=2,
        batch_size=4,
        warmup_ratio=0.25,
        schedule=schedule,
        weight_decay=0.01,
        checkpoint_every=3,
    )
    kw = {"method": MethodConfig(name="tspin"), "train": train, "iteration": 1, "seed": 0, "cpu": True}

    ref_model = copy.deepcopy(pi0[0])
    ref = train_iteration(ref_model, ex, **kw)
    assert ref.steps == 8

    folder = tmp_path / "train_checkpoint"
    seen = []

    def interrupt(done, total, label):
        seen.append(done)
        if done == 5:
            # the step-3 checkpoint is complete; nothing half-written is left in the folder
            assert sorted(p.name for p in folder.iterdir()) == ["step_000003"]
            raise Interrupt

    with pytest.raises(Interrupt):
        train_iteration(copy.deepcopy(pi0[0]), ex, checkpoint_dir=folder, progress=interrupt, **kw)
    assert (folder / "step_000003" / "state.pt").is_file()
    if schedule == "constant":
        state = torch.load(folder / "step_000003" / "state.pt", weights_only=True)
        for group in state["optimizer"]["param_groups"]:
            assert group["lr"] == pytest.approx(1e-3)
            group["lr"] = 0.5  # a restore that does not bring the learning rate back
        torch.save(state, folder / "step_000003" / "state.pt")

    seen.clear()
    model = copy.deepcopy(pi0[0])
    with caplog.at_level(logging.INFO, logger="tspin_kit.training"):
        res = train_iteration(model, ex, checkpoint_dir=folder, progress=lambda d, t, label: seen.append(d), **kw)
    assert seen == [4, 5, 6, 7, 8]  # steps 1-3 were not taken again
    assert "resuming train it1 (tspin) from step 3 of 8" in caplog.text
    assert not folder.exists()
    assert res.steps == ref.steps and res.step_losses == ref.step_losses and res.step_terms == ref.step_terms
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6), name
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref_model.parameters()))  # on CPU: bitwise


def test_train_checkpoint_of_another_phase_is_not_applied(pi0, toy_world, tmp_path, caplog):
    """A checkpoint left by another iteration is ignored with a warning: training starts from step 0."""
    from tspin_kit.config import MethodConfig, TrainConfig
    from tspin_kit.training import train_iteration

    ex = checkpoint_examples(pi0, toy_world)
    train = TrainConfig(optimizer="adamw", lr=1e-3, epochs=1, batch_size=4, warmup_ratio=0.0, checkpoint_every=2)
    folder = tmp_path / "train_checkpoint"

    def interrupt(done, total, label):
        if done == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_iteration(
            copy.deepcopy(pi0[0]),
            ex,
            method=MethodConfig(name="tspin"),
            train=train,
            iteration=1,
            seed=0,
            cpu=True,
            checkpoint_dir=folder,
            progress=interrupt,
        )
    assert (folder / "step_000002").is_dir()
    seen = []
    with caplog.at_level(logging.WARNING, logger="tspin_kit.training"):
        train_iteration(
            copy.deepcopy(pi0[0]),
            ex,
            method=MethodConfig(name="tspin"),
            train=train,
            iteration=2,
            seed=0,
            cpu=True,
            checkpoint_dir=folder,
            progress=lambda d, t, label: seen.append(d),
        )
    assert seen == [1, 2, 3, 4] and "train checkpoint of another phase" in caplog.text


def test_sampling_interrupted_then_called_again_reuses_its_finished_chunks(pi0, toy_world, tmp_path):
    """sample_responses with chunk_dir, interrupted after 2 of 4 chunks, then called again: the 2 saved chunks
    are read back (generate() runs only for the other 2) and the output equals one uninterrupted call; a saved
    chunk of another seed is sampled again."""
    from tspin_kit.generation import sample_responses
    from tspin_kit.templates import encode_prompt

    model, tok = pi0
    prompts = [encode_prompt(tok, r["prompt"], "auto") for r in toy_world[0][:16]]
    kw = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 8, "batch_size": 4, "seed": 7}
    ref = sample_responses(model, tok, prompts, **kw)
    folder = tmp_path / "chunks"

    def interrupt(done, total, label):
        if done == 8:
            raise Interrupt

    with pytest.raises(Interrupt):
        sample_responses(model, tok, prompts, chunk_dir=folder, progress=interrupt, **kw)
    assert sorted(p.name for p in folder.iterdir()) == ["chunk_000000.json", "chunk_000001.json"]

    calls = []
    generate = model.generate
    model.generate = lambda *a, **k: (calls.append(1), generate(*a, **k))[1]
    try:
        assert sample_responses(model, tok, prompts, chunk_dir=folder, **kw) == ref
        assert len(calls) == 2  # chunks 2 and 3 only
        calls.clear()
        other = sample_responses(model, tok, prompts, chunk_dir=folder, **{**kw, "seed": 8})
        assert len(calls) == 4 and other == sample_responses(model, tok, prompts, **{**kw, "seed": 8})
    finally:
        del model.generate


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
    pd.testing.assert_frame_equal(pd.read_parquet(a / "proto.parquet"), pd.read_parquet(b / "proto.parquet"))

    def drop_seconds(d):
        return {k: v for k, v in d.items() if not k.startswith("seconds")}

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
            assert drop_seconds(json.loads((ia / f).read_text())) == drop_seconds(json.loads((ib / f).read_text())), (
                f"{t} {f}"
            )
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
        assert "train:1" not in at_kill and "train:1" not in done(run_dir)  # killed inside the train phase
        assert (run_dir / "weights" / "policy_001").is_dir() and not (run_dir / "weights" / "policy_002").exists()

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


def train_checkpoints(run_dir: Path, t: int) -> list[int]:
    """Steps of the complete mid-train checkpoints of iteration t (unfinished writes are `.tmp-*` folders)."""
    folder = run_dir / "iterations" / f"iter_{t:03d}" / "train_checkpoint"
    return sorted(int(p.name[5:]) for p in folder.glob("step_*")) if folder.is_dir() else []


@pytest.mark.slow
@pytest.mark.multiproc
def test_sigkill_mid_train_resumes_from_the_train_checkpoint(tmp_path, stepped_run):
    """`tspin run` with train.checkpoint_every 2 is SIGKILLed inside iteration 1's train phase once a
    checkpoint of it exists; `tspin resume` continues from that checkpoint's step (its log says so), not from
    step 0, and the run ends equal to an uninterrupted run without checkpoints."""
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    killed_cfg = kill_config(run_dir)
    killed_cfg["train"]["checkpoint_every"] = 2  # 16 steps per iteration: checkpoints at steps 2, 4, ..., 14
    ref = start("run", "--config", str(write_yaml(tmp_path / "ref.yaml", kill_config(ref_dir))), cwd=tmp_path)
    proc = start("run", "--config", str(write_yaml(tmp_path / "killed.yaml", killed_cfg)), cwd=tmp_path)
    try:
        at_kill = kill_when(proc, run_dir, lambda d: "generate:1" in d and bool(train_checkpoints(run_dir, 1)))
        assert "train:1" not in at_kill and "train:1" not in done(run_dir)  # killed inside the train phase
        steps = train_checkpoints(run_dir, 1)
        assert steps and 2 <= steps[-1] < 16, steps
        assert not (run_dir / "weights" / "policy_002").exists()
        assert not train_checkpoints(run_dir, 0)  # iteration 0's checkpoint went when its phase completed

        final = subprocess.run(  # without -q: the log says where training continued
            [PYTHON, "-m", "tspin_kit.cli", "resume", str(run_dir)],
            cwd=tmp_path,
            env=subprocess_env(),
            check=False,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert final.returncode == 0, final.stderr[-3000:]
        assert f"resuming train it1 (tspin) from step {steps[-1]} of 16" in final.stderr, final.stderr[-3000:]
        _out, err = ref.communicate(timeout=240)
        assert ref.returncode == 0, err[-3000:]
    finally:
        for p in (proc, ref):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert done(run_dir)[-1] == "evaluate:2"
    assert not any((run_dir / "iterations" / f"iter_{t:03d}" / "train_checkpoint").exists() for t in range(3))
    compare_runs(ref_dir, run_dir, iterations=3)
