"""Two CPU processes give the run one process gives: the same y' texts (generation is seeded per chunk, not
per process) and the same weights up to float reduction order. Once with gloo DDP (torchrun +
Accelerator(cpu=True)), once with FSDP2 (`accelerate launch` with an FSDP2 config, gloo)."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import (
    REPO,
    read_safetensors,
    small_config,
    small_config_dict,
    subprocess_env,
    write_yaml,
)

from tspin_kit import toy
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

# The end of both sharded scripts: run (argv[1] a config file) or resume (argv[1] a run directory, logging at INFO
# so the resume point shows); with KILL_AFTER_CHECKPOINT the main process dies right after that checkpoint.
RUN_AND_MAYBE_DIE = """
if len(sys.argv) > 3:  # logits of this many elements per chunk: the head runs on many chunks, each recomputed
    import tspin_kit.logprobs as LP

    LP.CHUNK_ELEMENTS = int(sys.argv[3])
if os.environ.get("KILL_AFTER_CHECKPOINT"):  # "T:K": the main process SIGKILLs itself once iteration T's step-K
    import tspin_kit.training as TR  # checkpoint is complete (renamed into place); the launcher then stops rank 1

    kill_it, kill_step = map(int, os.environ["KILL_AFTER_CHECKPOINT"].split(":"))
    save = TR._save_train_checkpoint

    def save_then_die(folder, step, fingerprint, *args, **kwargs):
        save(folder, step, fingerprint, *args, **kwargs)
        if accelerator.is_main_process and (fingerprint["iteration"], step) == (kill_it, kill_step):
            os.kill(os.getpid(), signal.SIGKILL)

    TR._save_train_checkpoint = save_then_die
target = Path(sys.argv[1])
if target.is_dir():  # `tspin resume` of a run directory
    logging.basicConfig(level=logging.INFO)
    session = SelfPlaySession.resume(target)
else:
    session = SelfPlaySession(RunConfig.from_yaml(target))
records = session.run()
print(f"rank {accelerator.process_index} of {accelerator.num_processes}: {len(records.examples)} rows", flush=True)
"""

# Under `accelerate launch --config_file <FSDP2 config>`. accelerate 1.15 turns FSDP on for GPU-like backends only
# (state.py, AcceleratorState: the FSDP branch is reached for MULTI_GPU/MULTI_XPU/..., never MULTI_CPU), so on CPU
# `Accelerator(cpu=True)` sets up gloo DDP although `accelerate launch` exported the FSDP settings
# (ACCELERATE_USE_FSDP, FSDP_VERSION, FSDP_*). The script does what AcceleratorState does with them on GPUs: the
# plugin from those variables, distributed_type FSDP (in AcceleratorState and PartialState). From there on the
# engine runs unchanged: accelerate's own FSDP2 preparation (fully_shard per decoder layer, the embedding/norm/head
# group, the root) on gloo.
FSDP_SCRIPT = (
    """
import json
import logging
import os
import signal
import sys
from pathlib import Path
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.tensor import DTensor

import tspin_kit.sharding as T
from tspin_kit.config import RunConfig
from tspin_kit.session import SelfPlaySession

accelerator = Accelerator(cpu=True)
state = accelerator.state
print(f"rank {accelerator.process_index}: accelerate chose {state.distributed_type.value}", flush=True)
assert state.distributed_type == DistributedType.MULTI_CPU and not accelerator.is_fsdp2
state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables of `accelerate launch`
if state.mixed_precision != "no":
    state.fsdp_plugin.set_mixed_precision(state.mixed_precision)
state.distributed_type = DistributedType.FSDP
PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # AcceleratorState does this too
assert accelerator.is_fsdp2 and T.uses_fsdp(accelerator)

prepare = T.prepare_training


def spy(*args, **kwargs):  # evidence that training ran sharded, one JSON line per train phase and rank
    model, opt, params = prepare(*args, **kwargs)
    seen = {"class": type(model).__name__, "all_dtensor": all(isinstance(p, DTensor) for p in params),
            "held": sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params),
            "total": sum(p.numel() for p in params)}
    with open(f"{sys.argv[2]}/prepared_rank{accelerator.process_index}.jsonl", "a") as f:
        f.write(json.dumps(seen) + "\\n")
    return model, opt, params


T.prepare_training = spy
"""
    + RUN_AND_MAYBE_DIE
)

# Under `accelerate launch` with a DeepSpeed config (use_cpu: false) and DS_ACCELERATOR=cpu: DeepSpeed's CPU
# accelerator. Without a GPU accelerate picks no process-group backend and every process would believe it is
# alone (num_processes 1): the script asks for gloo, which DeepSpeed's CPU accelerator also falls back to.
DEEPSPEED_SCRIPT = (
    """
import json
import logging
import os
import signal
import sys
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs

import tspin_kit.sharding as T
from tspin_kit.config import RunConfig
from tspin_kit.session import SelfPlaySession

accelerator = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
assert accelerator.num_processes == 2 and T.uses_deepspeed(accelerator), accelerator.state
prepare = T.prepare_training


def spy(*args, **kwargs):  # evidence that training ran partitioned, one JSON line per train phase and rank
    model, opt, params = prepare(*args, **kwargs)
    seen = {"class": type(model).__name__, "all_partitioned": all(hasattr(p, "ds_id") for p in params),
            "held": sum(p.ds_tensor.numel() for p in params), "total": sum(p.ds_numel for p in params),
            "stage": model.zero_optimization_stage(), "grad_accum": model.gradient_accumulation_steps(),
            "clipping": model.gradient_clipping()}
    with open(f"{sys.argv[2]}/prepared_rank{accelerator.process_index}.jsonl", "a") as f:
        f.write(json.dumps(seen) + "\\n")
    return model, opt, params


T.prepare_training = spy
"""
    + RUN_AND_MAYBE_DIE
)

# lr 1e-4: AdamW's first steps are about lr * sign(g), so an element whose gradient is ~0 can step by
# +-lr depending on the reduction order; with lr = 1e-3 one element in ~16k then differs by 1.4e-5.
OVER = {"iterations": 2, "train": {"lr": 1e-4}}


# the venv's `accelerate launch` (any on PATH otherwise)
_ACCELERATE = REPO / ".venv" / "bin" / "accelerate"
ACCELERATE_LAUNCH = [str(_ACCELERATE) if _ACCELERATE.exists() else "accelerate", "launch"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_process_runs(tmp_path_factory, stepped_run):
    """The reference run of one process for a LoRA rank (0: full fine-tuning), made once per module."""
    # (stepped_run is requested so the cached pi_0 exists before two processes look for it)
    made: dict[int, Path] = {}

    def get(lora_r: int = 0) -> Path:
        if lora_r not in made:
            made[lora_r] = tmp_path_factory.mktemp(f"one_lora{lora_r}") / "run"
            SelfPlaySession(small_config(made[lora_r], **OVER, model={"lora_r": lora_r})).run()
        return made[lora_r]

    return get


def run_two(cmd: list[str], tmp_path: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=600, env=env or subprocess_env(), cwd=tmp_path
    )
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-4000:])
    assert "rank 0 of 2: 128 rows" in out.stdout and "rank 1 of 2: 128 rows" in out.stdout
    return out


def max_weight_difference(one_dir: Path, two_dir: Path) -> float:
    """Asserts the two runs' pi_1 and pi_2 safetensors have the same keys and agree to 1e-5; returns the largest
    absolute difference."""
    worst = 0.0
    for t in (1, 2):
        w1, w2 = (
            read_safetensors(one_dir / "weights" / f"policy_{t:03d}"),
            read_safetensors(two_dir / "weights" / f"policy_{t:03d}"),
        )
        assert w1.keys() == w2.keys()
        for k in w1:
            assert w2[k].shape == w1[k].shape and w2[k].dtype == w1[k].dtype, k
            torch.testing.assert_close(w2[k], w1[k], atol=1e-5, rtol=0, msg=k)
            worst = max(worst, float((w2[k] - w1[k]).abs().max()))
    return worst


def assert_same_run(one_dir: Path, two_dir: Path) -> float:
    one, two = load_run(one_dir), load_run(two_dir)
    # generation is chunk-seeded: identical samples whatever the number of processes
    assert list(one.examples["proto"]) == list(two.examples["proto"])
    assert list(one.examples["synthetic"]) == list(two.examples["synthetic"])
    pd.testing.assert_series_equal(one.examples["annotated"], two.examples["annotated"])
    # training splits each global batch over the processes; the gradient is the same global mean
    worst = max_weight_difference(one_dir, two_dir)
    pd.testing.assert_series_equal(
        one.examples["annotated_logp_after"], two.examples["annotated_logp_after"], atol=1e-3, rtol=0
    )
    for t in (0, 1):
        a = pd.read_json(one_dir / "iterations" / f"iter_{t:03d}" / "train.json", typ="series")
        b = pd.read_json(two_dir / "iterations" / f"iter_{t:03d}" / "train.json", typ="series")
        assert a["num_train_examples"] == b["num_train_examples"] and a["steps"] == b["steps"]
        torch.testing.assert_close(torch.tensor(b["step_losses"]), torch.tensor(a["step_losses"]), atol=1e-5, rtol=0)
    # only the main process wrote: no stray temporary files from the other rank
    assert not [p for p in two_dir.rglob("*") if ".tmp" in p.name]
    return worst


@pytest.mark.slow
@pytest.mark.multiproc
def test_two_processes_match_one(tmp_path, one_process_runs):
    two_dir = tmp_path / "two"
    script = tmp_path / "run_session.py"
    script.write_text(SCRIPT)
    cfg = write_yaml(tmp_path / "two.yaml", small_config_dict(two_dir, **OVER))
    torchrun = Path(REPO / ".venv" / "bin" / "torchrun")
    run_two(
        [
            str(torchrun) if torchrun.exists() else "torchrun",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            str(script),
            str(cfg),
        ],
        tmp_path,
    )
    assert_same_run(one_process_runs(0), two_dir)


def cpu_fsdp2_config(path: Path) -> Path:
    """configs/accelerate/fsdp2.yaml (its fsdp_config section as shipped) for 2 CPU processes in full precision."""
    cfg = yaml.safe_load((REPO / "configs" / "accelerate" / "fsdp2.yaml").read_text())
    cfg.pop("gpu_ids", None)
    cfg.update(
        use_cpu=True, num_processes=2, mixed_precision="no", main_process_ip="127.0.0.1", main_process_port=free_port()
    )
    return write_yaml(path, cfg)


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize(
    "lora_r,checkpointing", [(0, False), (4, True)], ids=["full", "lora-gradient-checkpointing-chunked-head"]
)
def test_two_fsdp2_processes_match_one(tmp_path, one_process_runs, lora_r, checkpointing):
    """FSDP2 on 2 CPU processes: full fine-tuning; and LoRA with gradient checkpointing on and the output layer
    applied in chunks of 4 positions, each recomputed in the backward (the one-process reference has neither:
    they change no number, and the saved adapters are the same)."""
    two_dir = tmp_path / "two"
    script = tmp_path / "run_session_fsdp.py"
    script.write_text(FSDP_SCRIPT)
    model = {"lora_r": lora_r, "gradient_checkpointing": checkpointing}
    cfg = write_yaml(tmp_path / "two.yaml", small_config_dict(two_dir, **OVER, model=model))
    launch_cfg = cpu_fsdp2_config(tmp_path / "accelerate_fsdp2_cpu.yaml")
    run_two(
        [
            *ACCELERATE_LAUNCH,
            "--config_file",
            str(launch_cfg),
            str(script),
            str(cfg),
            str(tmp_path),
            *([str(4 * len(toy.build_tokenizer()))] if lora_r else []),
        ],
        tmp_path,
    )
    # both iterations trained a sharded copy: each rank held about half of every trainable tensor
    model_class = "FSDPPeftModelForCausalLM" if lora_r else "FSDPLlamaForCausalLM"
    for rank in (0, 1):
        seen = [json.loads(x) for x in (tmp_path / f"prepared_rank{rank}.jsonl").read_text().splitlines()]
        assert len(seen) == 2, seen
        for s in seen:
            assert s["class"] == model_class and s["all_dtensor"] and s["held"] < 0.6 * s["total"], s
    if lora_r:  # adapters only, as one process saves them
        assert (two_dir / "weights" / "policy_001" / "adapter_model.safetensors").is_file()
    worst = assert_same_run(one_process_runs(lora_r), two_dir)
    print(f"FSDP2 x2 ({lora_r=}, {checkpointing=}) vs one process: largest weight difference {worst:.3g}")


def shards_written(folder: Path, launch: str) -> bool:
    """Whether a step folder holds both processes' shards: DCP's files (FSDP2) or DeepSpeed's ZeRO partitions."""
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    if launch == "fsdp2":
        return {".metadata", "__0_0.distcp", "__1_0.distcp"} <= names
    return all(any(n.startswith("engine/") and f"zero_pp_rank_{r}_" in n for n in names) for r in (0, 1))


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize(
    "launch,lora_r", [("fsdp2", 0), ("fsdp2", 4), ("deepspeed", 0)], ids=["fsdp2", "fsdp2-lora", "deepspeed"]
)
def test_killed_mid_train_resumes_from_its_sharded_checkpoint(tmp_path, one_process_runs, launch, lora_r):
    """FSDP2 (full and LoRA: frozen weights are not in the checkpoint) / DeepSpeed ZeRO-3 on 2 CPU processes with
    train.checkpoint_every 1: the main process is SIGKILLed
    right after iteration 1's step-2 checkpoint (of 4 steps) is in place; the checkpoint holds both processes'
    shards; resuming under the same launch logs that training continues from step 2, and the run ends equal (to
    1e-5, as the uninterrupted 2-process runs) to the uninterrupted one-process run."""
    run_dir = tmp_path / "killed"
    script = tmp_path / "run_session.py"
    script.write_text(FSDP_SCRIPT if launch == "fsdp2" else DEEPSPEED_SCRIPT)
    launch_config = cpu_fsdp2_config if launch == "fsdp2" else cpu_deepspeed_config
    env = subprocess_env() if launch == "fsdp2" else {**subprocess_env(), "DS_ACCELERATOR": "cpu"}
    cfg = write_yaml(
        tmp_path / "killed.yaml",
        small_config_dict(
            run_dir, **{**OVER, "train": {**OVER["train"], "checkpoint_every": 1}, "model": {"lora_r": lora_r}}
        ),
    )
    command = [*ACCELERATE_LAUNCH, "--config_file"]
    (tmp_path / "killed_spy").mkdir()
    killed = subprocess.run(
        [*command, str(launch_config(tmp_path / "a1.yaml")), str(script), str(cfg), str(tmp_path / "killed_spy")],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "KILL_AFTER_CHECKPOINT": "1:2"},
        cwd=tmp_path,
    )
    assert killed.returncode != 0 and "rank 0 of 2" not in killed.stdout, killed.stderr[-3000:]
    state = json.loads((run_dir / "state.json").read_text())["done"]
    assert "generate:1" in state and "train:1" not in state, state  # killed inside iteration 1's train phase
    ckpt = run_dir / "iterations" / "iter_001" / "train_checkpoint"
    assert sorted(p.name for p in ckpt.iterdir()) == ["step_000002"]  # step 1's was dropped, no .tmp- left
    assert shards_written(ckpt / "step_000002", launch), sorted(p.name for p in (ckpt / "step_000002").rglob("*"))
    saved = torch.load(ckpt / "step_000002" / "state.pt", weights_only=True)
    assert saved["step"] == 2 and "params" not in saved and "optimizer" not in saved and saved["sharded_params"]
    assert saved["layout"] == ("dcp" if launch == "fsdp2" else "deepspeed/2")
    assert not (run_dir / "iterations" / "iter_000" / "train_checkpoint").exists()  # its phase completed

    (tmp_path / "resumed_spy").mkdir()
    resumed = run_two(
        [*command, str(launch_config(tmp_path / "a2.yaml")), str(script), str(run_dir), str(tmp_path / "resumed_spy")],
        tmp_path,
        env=env,
    )
    assert "resuming train it1 (tspin) from step 2 of 4" in resumed.stderr, resumed.stderr[-3000:]
    for rank in (0, 1):  # the resumed phase trained sharded too
        lines = (tmp_path / "resumed_spy" / f"prepared_rank{rank}.jsonl").read_text().splitlines()
        assert len(lines) == 1 and json.loads(lines[0])["held"] < 0.6 * json.loads(lines[0])["total"], lines
    assert not ckpt.exists()
    worst = assert_same_run(one_process_runs(lora_r), run_dir)
    print(
        f"{launch} (lora_r={lora_r}) x2 killed at iteration 1 step 2 and resumed vs one process: "
        f"largest weight difference {worst:.3g}"
    )


def cpu_deepspeed_config(path: Path) -> Path:
    """configs/accelerate/deepspeed_zero3.yaml (its deepspeed_config section as shipped) for 2 CPU processes in
    full precision (use_cpu stays false: accelerate's DeepSpeed path runs only then; DS_ACCELERATOR=cpu)."""
    cfg = yaml.safe_load((REPO / "configs" / "accelerate" / "deepspeed_zero3.yaml").read_text())
    cfg.pop("gpu_ids", None)
    cfg.update(num_processes=2, mixed_precision="no", main_process_ip="127.0.0.1", main_process_port=free_port())
    return write_yaml(path, cfg)


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize("lora_r,grad_accum", [(0, 1), (4, 2)], ids=["full", "lora-grad-accum-2-chunked-head"])
def test_two_deepspeed_zero3_processes_match_one(tmp_path, one_process_runs, lora_r, grad_accum):
    """DeepSpeed ZeRO-3 on 2 CPU processes (gloo): full fine-tuning; and LoRA with 2 micro-batches per step (the
    engine's own accumulation), asked to apply the output layer in chunks of 4 positions (under ZeRO-3 it runs in
    one piece: the processes hold different numbers of response tokens and the head gathers its parameters at
    each call). Equal to the one-process run to 1e-5, as DDP and FSDP2 are."""
    two_dir = tmp_path / "two"
    script = tmp_path / "run_session_deepspeed.py"
    script.write_text(DEEPSPEED_SCRIPT)
    over = {**OVER, "train": {**OVER["train"], "grad_accum": grad_accum}, "model": {"lora_r": lora_r}}
    cfg = write_yaml(tmp_path / "two.yaml", small_config_dict(two_dir, **over))
    run_two(
        [
            *ACCELERATE_LAUNCH,
            "--config_file",
            str(cpu_deepspeed_config(tmp_path / "accelerate_deepspeed_cpu.yaml")),
            str(script),
            str(cfg),
            str(tmp_path),
            *([str(4 * len(toy.build_tokenizer()))] if lora_r else []),
        ],
        tmp_path,
        env={**subprocess_env(), "DS_ACCELERATOR": "cpu"},
    )
    for rank in (0, 1):  # both iterations trained a partitioned copy: each rank held about half of the parameters
        seen = [json.loads(x) for x in (tmp_path / f"prepared_rank{rank}.jsonl").read_text().splitlines()]
        assert len(seen) == 2, seen
        for s in seen:
            assert s["class"] == "DeepSpeedEngine" and s["all_partitioned"] and s["stage"] == 3, s
            assert s["held"] < 0.6 * s["total"] and s["grad_accum"] == grad_accum and s["clipping"] == 1.0, s
    if lora_r:
        assert (two_dir / "weights" / "policy_001" / "adapter_model.safetensors").is_file()
    worst = assert_same_run(one_process_runs(lora_r), two_dir)
    print(f"DeepSpeed ZeRO-3 x2 ({lora_r=}, {grad_accum=}) vs one process: largest weight difference {worst:.3g}")
