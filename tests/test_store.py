"""tspin_kit.store: atomic writes, readable errors for damaged files, weights, state, load_run."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import REPO, read_safetensors

from tspin_kit import toy
from tspin_kit.store import (
    RunDirError,
    RunStore,
    load_run,
    load_weights,
    read_json,
    read_parquet,
    save_weights,
    write_json,
    write_parquet,
)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if ".tmp" in p.name or ".old" in p.name)


def test_write_json_replaces_atomically(tmp_path):
    path = tmp_path / "state.json"
    write_json(path, {"done": ["prepare"]})
    write_json(path, {"done": ["prepare", "generate:0"]})
    assert read_json(path) == {"done": ["prepare", "generate:0"]}
    assert leftovers(tmp_path) == []
    # numpy scalars and paths are written as plain JSON
    import numpy as np

    write_json(path, {"a": np.int64(3), "b": np.float32(0.5), "c": np.bool_(True), "d": Path("x/y")})
    assert read_json(path) == {"a": 3, "b": 0.5, "c": True, "d": "x/y"}


def test_failed_write_leaves_the_old_content(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"ok": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_json(path, {"bad": object()})
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


KILL_WRITER = r"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("store", sys.argv[1])
store = importlib.util.module_from_spec(spec); sys.modules["store"] = store; spec.loader.exec_module(store)
from pathlib import Path
path = Path(sys.argv[2])
big = {"payload": "x" * 2_000_000}
i = 0
print("ready", flush=True)
while True:
    store.write_json(path, {"i": i, **big})
    i += 1
"""


def test_kill_during_writes_leaves_a_whole_file(tmp_path):
    """SIGKILL a process that rewrites a 2 MB JSON file in a loop: the file is always one whole version."""
    path = tmp_path / "big.json"
    write_json(path, {"i": -1})
    # load store.py by path: the writer needs pandas, not torch
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_WRITER, str(REPO / "tspin_kit" / "store.py"), str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    seen = []
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20
        # a reader running next to the writer only ever sees whole versions
        while time.monotonic() < deadline and (not seen or seen[-1] < 3):
            seen.append(json.loads(path.read_text())["i"])
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert seen[-1] >= 3, seen[-5:]
    data = json.loads(path.read_text())
    assert data["i"] >= seen[-1] and data["payload"] == "x" * 2_000_000
    # a kill mid-write can leave the writer's temporary file, never a half-written target
    assert all(name.startswith(".big.json.tmp") for name in leftovers(tmp_path))


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(RunDirError, match=r"nope.json: missing"):
        read_json(tmp_path / "nope.json")
    bad = tmp_path / "manifest.json"
    bad.write_text('{"config": {')
    with pytest.raises(RunDirError, match=r"manifest.json: corrupt JSON"):
        read_json(bad)
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(RunDirError, match=r"manifest.json: corrupt JSON"):
        read_json(bad)


def test_parquet_round_trip_and_errors(tmp_path):
    df = pd.DataFrame({"example_id": [0, 1], "synthetic_ids": [[5, 6], []], "x": [0.5, float("nan")]})
    write_parquet(tmp_path / "g.parquet", df)
    back = read_parquet(tmp_path / "g.parquet")
    assert [list(x) for x in back["synthetic_ids"]] == [[5, 6], []]
    assert back["example_id"].tolist() == [0, 1]
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(RunDirError, match=r"bad.parquet: unreadable Parquet"):
        read_parquet(tmp_path / "bad.parquet")
    with pytest.raises(RunDirError, match=r"none.parquet: missing"):
        read_parquet(tmp_path / "none.parquet")


def _tiny_model(seed=0):
    tok = toy.build_tokenizer()
    return toy.build_model(
        tok,
        toy.ToyModelSize(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        seed=seed,
    )


def test_save_and_load_weights(tmp_path):
    a, b = _tiny_model(0), _tiny_model(1)
    folder = tmp_path / "weights" / "policy_001"
    save_weights(a, folder)
    save_weights(a, folder)  # overwriting an existing folder swaps it in whole
    assert (folder / "model.safetensors").is_file() and leftovers(folder.parent) == []
    load_weights(b, folder)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert b.lm_head.weight.data_ptr() == b.model.embed_tokens.weight.data_ptr()  # still tied
    assert set(read_safetensors(folder)) <= set(a.state_dict())


def test_load_weights_errors(tmp_path):
    with pytest.raises(RunDirError, match="no .safetensors weights found"):
        load_weights(_tiny_model(), tmp_path)
    save_weights(_tiny_model(), tmp_path / "small")
    other = toy.build_model(
        toy.build_tokenizer(),
        toy.ToyModelSize(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2),
    )
    with pytest.raises(RunDirError, match=r"small: weights do not match the model \(missing"):
        load_weights(other, tmp_path / "small")
    (tmp_path / "small" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(RunDirError, match=r"model.safetensors: unreadable weights"):
        load_weights(_tiny_model(), tmp_path / "small")


def test_run_store_state(tmp_path):
    st = RunStore(tmp_path / "run")
    assert not st.exists() and st.read_state() == {"done": []}
    st.mark_done("prepare")
    st.mark_done("generate", 0)
    assert st.is_done("prepare") and st.is_done("generate", 0) and not st.is_done("train", 0)
    assert json.loads(st.state_path.read_text()) == {"done": ["prepare", "generate:0"]}
    assert st.iter_dir(3).name == "iter_003" and st.policy_dir(12).name == "policy_012"
    st.state_path.write_text('["prepare"]')
    with pytest.raises(RunDirError, match=r"state.json: corrupt"):
        st.read_state()


def test_load_run_errors(tmp_path):
    with pytest.raises(RunDirError, match="no such run directory"):
        load_run(tmp_path / "missing")
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(RunDirError, match=r"manifest.json: missing"):
        load_run(run)
    (run / "manifest.json").write_text("{not json")
    with pytest.raises(RunDirError, match=r"run/manifest.json: corrupt JSON"):
        load_run(run)
    write_json(run / "manifest.json", {"label": "x"})
    with pytest.raises(RunDirError, match=r"manifest.json: corrupt \(no 'config' key\)"):
        load_run(run)
    write_json(run / "manifest.json", {"config": {"method": {"name": "spin"}}})
    rec = load_run(run)  # prepared, no iteration finished yet
    assert rec.method == "spin" and rec.examples.empty and rec.metrics.empty and rec.initial == {}


def test_load_run_names_a_damaged_iteration_file(stepped_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(stepped_run.run_dir, run)
    (run / "iterations" / "iter_001" / "examples.parquet").write_bytes(b"")
    with pytest.raises(RunDirError, match=r"iter_001/examples.parquet: unreadable Parquet"):
        load_run(run)
    (run / "iterations" / "iter_000" / "metrics.json").write_text("{")
    with pytest.raises(RunDirError, match=r"iter_000/metrics.json: corrupt JSON"):
        load_run(run)


def test_store_module_loads_standalone():
    """store.py imports nothing heavy at module level (the kill test above relies on it)."""
    spec = importlib.util.spec_from_file_location("store_alone", REPO / "tspin_kit" / "store.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["store_alone"] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules["store_alone"]
    assert hasattr(mod, "write_json")
