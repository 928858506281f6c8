"""benchmarks/bench_gpu.py: its CPU smoke mode (`--quick`: tiny fp32 model) runs and prints a JSON line with
train and generation tokens/s, MFU null with "no GPU"; the peak table matches the device names it is meant for.
The GPU numbers (an H200, once) are in benchmarks/results/gpu.txt. benchmarks/gpu_real_model.py (the real-model path
end to end, run on that H200) runs here at toy size (`--tiny`) so that it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"


NAMES = {  # torch.cuda.get_device_name() -> the peak table's key (None: "peak unknown")
    "NVIDIA H100 80GB HBM3": "H100 SXM",
    "NVIDIA H200": "H200",
    "NVIDIA H100 PCIe": None,
    "NVIDIA H100 NVL": None,
    "NVIDIA H200 NVL": None,
    "NVIDIA A100-SXM4-80GB": None,
}


def test_peak_table():
    # in a subprocess: importing the script (through benchmarks/_common.py) silences logging and warnings
    code = "import json, sys, bench_gpu; print(json.dumps([bench_gpu.peak_for(n) for n in json.loads(sys.argv[1])]))"
    p = subprocess.run(
        [sys.executable, "-c", code, json.dumps(list(NAMES))], capture_output=True, text=True, cwd=SCRIPT.parent
    )
    assert p.returncode == 0, p.stderr[-3000:]
    for (name, key), (got_key, peak) in zip(NAMES.items(), json.loads(p.stdout)):
        assert got_key == key, name
        assert peak == (989.0 if key else None), name


@pytest.mark.slow  # about 10 s on 2 loaded cores, mostly imports
def test_quick_runs_on_cpu():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.splitlines()[0])
    assert res["benchmark"] == "gpu"
    assert res["settings"]["dtype"] == "float32" and res["settings"]["device"] == "cpu"
    assert res["train"]["tokens_per_s"]["median"] > 0
    assert res["generate"]["hf"]["tokens_per_s"]["median"] > 0
    assert res["train"]["mfu"] is None and res["train"]["mfu_note"] == "no GPU"
    assert res["mfu_target"]["met"] is None and res["met"] is None and res["targets"] == []
    assert not res["generate"]["vllm"]["measured"]
    assert "fsdp2.yaml" in res["launch"]["fsdp2"] and "accelerate launch" in res["launch"]["fsdp2"]
    assert "deepspeed_zero3.yaml" in res["launch"]["deepspeed_zero3"]


@pytest.mark.slow  # about 10-20 s on 2 cores
def test_real_model_check_runs_at_toy_size_on_cpu(tmp_path):
    out = tmp_path / "real.json"
    p = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_real_model.py"),
            "--tiny",
            "--examples",
            "16",
            "--new-tokens",
            "8",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        timeout=600,
    )
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    result = json.loads(out.read_text())
    runs = {r["run"]: r for r in result["runs"]}
    assert set(runs) == {"lora", "full"} and result["ok"]
    assert runs["lora"]["weights"] and all(w.endswith("adapter_model.safetensors") for w in runs["lora"]["weights"])
    assert all(w.endswith("/model.safetensors") for w in runs["full"]["weights"])
    for r in runs.values():
        assert r["iterations"] == [0, 1] and r["logps_finite"] and r["device"] == "cpu"
