"""Two CPU processes (torchrun + Accelerator(cpu=True) -> gloo DDP) give the run one process gives:
the same y' texts (generation is seeded per chunk, not per process) and the same weights up to float
reduction order."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import (
    REPO,
    read_safetensors,
    small_config,
    small_config_dict,
    subprocess_env,
    write_yaml,
)

from tspin_kit.session import SelfPlaySession
from tspin_kit.store import load_run

SCRIPT = """
import sys
from accelerate import Accelerator
from tspin_kit.config import RunConfig
from tspin_kit.session import SelfPlaySession

accelerator = Accelerator(cpu=True)
cfg = RunConfig.from_yaml(sys.argv[1])
records = SelfPlaySession(cfg).run()
print(f"rank {accelerator.process_index} of {accelerator.num_processes}: {len(records.examples)} rows", flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.multiproc
def test_two_processes_match_one(tmp_path, stepped_run):
    # (stepped_run is requested so the cached pi_0 exists before two processes look for it)
    # lr 1e-4: AdamW's first steps are about lr * sign(g), so an element whose gradient is ~0 can step by
    # +-lr depending on the reduction order; with lr = 1e-3 one element in ~16k then differs by 1.4e-5.
    over = {"iterations": 2, "train": {"lr": 1e-4}}
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    SelfPlaySession(small_config(one_dir, **over)).run()

    script = tmp_path / "run_session.py"
    script.write_text(SCRIPT)
    cfg = write_yaml(tmp_path / "two.yaml", small_config_dict(two_dir, **over))
    torchrun = Path(REPO / ".venv" / "bin" / "torchrun")
    cmd = [
        str(torchrun) if torchrun.exists() else "torchrun",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(script),
        str(cfg),
    ]
    out = subprocess.run(
        cmd,
        check=False,
        capture_output=True,
        text=True,
        timeout=400,
        env=subprocess_env(),
        cwd=tmp_path,
    )
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-4000:])
    assert "rank 0 of 2: 128 rows" in out.stdout and "rank 1 of 2: 128 rows" in out.stdout

    one, two = load_run(one_dir), load_run(two_dir)
    # generation is chunk-seeded: identical samples whatever the number of processes
    assert list(one.examples["proto"]) == list(two.examples["proto"])
    assert list(one.examples["synthetic"]) == list(two.examples["synthetic"])
    pd.testing.assert_series_equal(one.examples["annotated"], two.examples["annotated"])
    # training splits each global batch over the processes; the gradient is the same global mean
    for t in (1, 2):
        w1, w2 = (
            read_safetensors(one_dir / "weights" / f"policy_{t:03d}"),
            read_safetensors(two_dir / "weights" / f"policy_{t:03d}"),
        )
        assert w1.keys() == w2.keys()
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], atol=1e-5, rtol=0, msg=k)
    pd.testing.assert_series_equal(
        one.examples["annotated_logp_after"],
        two.examples["annotated_logp_after"],
        atol=1e-3,
        rtol=0,
    )
    a = pd.read_json(one_dir / "iterations" / "iter_001" / "train.json", typ="series")
    b = pd.read_json(two_dir / "iterations" / "iter_001" / "train.json", typ="series")
    assert a["num_train_examples"] == b["num_train_examples"] and a["steps"] == b["steps"]
    torch.testing.assert_close(
        torch.tensor(b["step_losses"]), torch.tensor(a["step_losses"]), atol=1e-5, rtol=0
    )
    # only the main process wrote: no stray temporary files from the other rank
    assert not [p for p in two_dir.rglob("*") if ".tmp" in p.name]
