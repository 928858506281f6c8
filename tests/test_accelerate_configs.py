"""configs/accelerate/*.yaml: each parses with accelerate's own loader (which refuses unknown keys) and has the
keys accelerate needs for its distributed_type. None of them has been run on a GPU (docs/index.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
COMMON = {
    "compute_environment",
    "distributed_type",
    "mixed_precision",
    "num_processes",
    "num_machines",
    "machine_rank",
    "use_cpu",
}
NEEDS = {  # distributed_type -> (required keys, required values of its section)
    "NO": ({"gpu_ids"}, None, {}),
    "MULTI_GPU": ({"gpu_ids"}, None, {}),
    "FSDP": (
        {"fsdp_config"},
        "fsdp_config",
        {
            "fsdp_version": 2,
            "fsdp_reshard_after_forward": True,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        },
    ),
    "DEEPSPEED": ({"deepspeed_config"}, "deepspeed_config", {"zero_stage": 3, "zero3_init_flag": False}),
}


def test_every_kind_is_shipped():
    kinds = {yaml.safe_load(p.read_text())["distributed_type"] for p in CONFIGS}
    assert kinds == set(NEEDS), f"found {sorted(kinds)} in {[p.name for p in CONFIGS]}"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_accelerate_config_parses_and_has_the_keys_of_its_kind(path):
    from accelerate.commands.config.config_args import load_config_from_file

    raw = yaml.safe_load(path.read_text())
    kind = raw["distributed_type"]
    keys, section, values = NEEDS[kind]
    assert COMMON | keys <= raw.keys(), f"{path.name}: missing {sorted((COMMON | keys) - raw.keys())}"
    assert raw["mixed_precision"] == "bf16" and raw["use_cpu"] is False
    assert raw["num_processes"] == (1 if kind == "NO" else 8)
    cfg = load_config_from_file(str(path))  # accelerate's own loader: unknown keys are an error
    assert str(cfg.distributed_type).split(".")[-1] == kind
    if section:
        got = raw[section]
        assert {k: got.get(k) for k in values} == values, f"{path.name}: {section}"


def test_docs_give_a_launch_line_for_every_config_on_one_node_and_several():
    docs = (ROOT / "docs" / "index.md").read_text()
    for path in CONFIGS:
        assert f"--config_file configs/accelerate/{path.name}" in docs, f"no launch line for {path.name}"
    for flag in ("--num_machines", "--machine_rank", "--main_process_ip"):
        assert flag in docs
    # the docs say honestly what ran on a GPU: one process on one H200, none of the multi-process configs
    assert "None of the multi-process configs below has run on a GPU" in docs
    assert "benchmarks/results/gpu.txt" in docs
