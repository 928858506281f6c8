"""tspin_kit.sharding: which accelerate launches the engine trains under (the 2-process FSDP2 runs themselves are
in test_multiproc.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType

from tspin_kit.sharding import check_supported, uses_fsdp


def fake(kind: DistributedType, fsdp_version: int | None = None):
    plugin = SimpleNamespace(fsdp_version=fsdp_version) if fsdp_version else None
    return SimpleNamespace(state=SimpleNamespace(distributed_type=kind, fsdp_plugin=plugin))


def test_the_launch_decides():
    assert uses_fsdp(fake(DistributedType.FSDP, 2)) is True
    for kind in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        assert uses_fsdp(fake(kind)) is False
        check_supported(fake(kind))
    assert uses_fsdp(None) is False
    check_supported(fake(DistributedType.FSDP, 2))


def test_fsdp1_stops_with_a_message():
    with pytest.raises(ValueError, match="fsdp_version: 2"):
        check_supported(fake(DistributedType.FSDP, 1))


def deepspeed(zero3_init_flag: bool):
    plugin = SimpleNamespace(zero3_init_flag=zero3_init_flag)
    return SimpleNamespace(state=SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, deepspeed_plugin=plugin))


def test_deepspeed_trains_but_not_with_zero3_init():
    from tspin_kit.config import TrainConfig

    check_supported(deepspeed(False), TrainConfig(checkpoint_every=5))  # its checkpoints are the engine's own
    check_supported(fake(DistributedType.FSDP, 2), TrainConfig(checkpoint_every=5))  # FSDP2 checkpoints are sharded
    with pytest.raises(NotImplementedError, match="zero3_init_flag: false"):
        check_supported(deepspeed(True), TrainConfig())


def test_a_real_single_process_accelerator_is_not_fsdp():
    from accelerate import Accelerator

    assert uses_fsdp(Accelerator(cpu=True)) is False
