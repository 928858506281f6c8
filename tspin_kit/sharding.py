"""FSDP2 through accelerate, inside the train phase only.

The launch decides: ``accelerate launch --config_file configs/accelerate/fsdp2.yaml ...`` makes accelerate's
state ``distributed_type == FSDP`` (`uses_fsdp`); the run config has no switch for it. Then each multi-process
train phase (`training.train_iteration`) trains a sharded copy of the policy and gathers it back:

1. `prepare_training`: a deep copy of the plain model is handed to ``accelerator.prepare`` together with the
   optimiser. accelerate's FSDP2 path applies ``fully_shard`` to every transformer block (the model's
   ``_no_split_modules``), to the embedding/final-norm/head group and to the root, and re-points the optimiser at
   the shards (it maps them by storage, so the optimiser is first pointed at the copy's parameters).
2. The step loop runs on the shards: forward/backward all-gather a block's parameters when it runs and
   reduce-scatter its gradients; AdamW, gradient clipping and the scheduler act on the local shards (DTensor).
   The lean log-probs (`logprobs.final_hidden`) apply the head outside the model's forward and leave the model's
   own last-position logits out of the loss; under FSDP2 a zero gradient is routed to those logits so FSDP's
   pre-backward hooks on them run (without it the backward read freed parameter memory and crashed).
3. `release_training`: every trainable parameter is gathered (``DTensor.full_tensor``, one at a time, in the
   same order on every process) and copied into the plain model; accelerate's references are dropped.

Why not keep the model sharded for the whole run: generation and scoring split prompt chunks round-robin over
processes (generation.py), so processes run different numbers of forwards, and ``generate`` stops early on EOS;
a sharded model needs every process to run the same forwards (each one all-gathers). Gathering back once per
iteration keeps generation, scoring, `store.save_weights` (consolidated safetensors of each pi_t, adapters only
under LoRA) and `load_run` exactly as they are for one process and DDP.

Memory (per process): the plain model (its ``model.dtype``) stays whole for generation and scoring, and the
train phase adds 1/world of the trained weights, their gradients and the optimiser state (fp32 master weights
under bf16 mixed precision: accelerate upcasts trainable parameters before sharding). Preparing briefly holds
the copy whole (fp32 under mixed precision) before it is sharded. DDP instead holds the whole model, its
gradients and its optimiser state on every process. For full fine-tuning of a 7B model (bf16) with AdamW that
is about 14 GB (the replica) + 112 GB / world (fp32 weights, gradients, two moments): 28 GB on 8 processes,
peaking near 14 + 28 GB while the copy is prepared; DDP needs 56 GB (all in bf16) to 112 GB (fp32) on each, plus
activations in both cases. (Estimates, not measured on a GPU.) A model whose replica alone does not fit one
device is out of reach of this design. The fp32 master weights live for one iteration: pi_{t+1} is stored in
``model.dtype``.

Mid-phase checkpoints (``train.checkpoint_every``) under FSDP2 keep the state sharded: every process writes its
own shard of the trainable parameters and of the optimiser state with torch.distributed.checkpoint
(`save_sharded`, `load_sharded`; the run directory is shared by the processes, as for the rest of `tspin resume`),
frozen weights (the LoRA base) are not written. No process ever holds the whole optimiser state, and DCP reshards
on load, so a phase killed on N processes may be resumed on another number. The phase's position, scheduler, RNG
and partial TrainResult sit beside the shards in the main process's ``state.pt`` (training.py).

Tested on 2 CPU processes with gloo (tests/test_multiproc.py): accelerate 1.15 sets up FSDP only for GPU-like
backends, so on CPU the test script sets the accelerate state as a GPU launch would, and the rest runs unchanged.
"""

from __future__ import annotations

import torch


def uses_fsdp(accelerator) -> bool:
    """Whether the launch configured accelerate with FSDP (``distributed_type: FSDP``). FSDP2 only
    (``fsdp_version: 2``); version 1 is an error."""
    if accelerator is None:
        return False
    from accelerate.utils import DistributedType

    state = accelerator.state
    if state.distributed_type != DistributedType.FSDP:
        return False
    version = getattr(getattr(state, "fsdp_plugin", None), "fsdp_version", None)
    if version != 2:
        raise ValueError(
            f"accelerate is configured with FSDP version {version}; tspin-kit trains with FSDP2 only: "
            f"set `fsdp_version: 2` in the accelerate config (as configs/accelerate/fsdp2.yaml does)"
        )
    return True


def prepare_training(accelerator, model, opt, params: list):
    """``(model to train, optimiser, its trainable parameters)`` for one multi-process train phase.

    DDP: accelerate wraps ``model`` itself and its parameters are trained in place. FSDP2: a sharded copy (see
    the module docstring); the returned parameters are its shards, for clipping and the optimiser.
    """
    if not uses_fsdp(accelerator):
        wrapped, opt = accelerator.prepare(model, opt)
        return wrapped, opt, params
    import copy

    work = copy.deepcopy(model)  # same parameter names (tied weights stay tied), same train/eval mode
    name_of = {id(p): name for name, p in model.named_parameters()}
    copied = dict(work.named_parameters())
    for group in opt.param_groups:  # accelerate finds each optimiser parameter's shard through the model it prepares
        group["params"] = [copied[name_of[id(p)]] for p in group["params"]]
    sharded, opt = accelerator.prepare(work, opt)
    return sharded, opt, [p for p in sharded.parameters() if p.requires_grad]


def release_training(accelerator, model, trained) -> None:
    """End a multi-process train phase: under FSDP2 gather the trained shards into ``model`` (on every process);
    then drop accelerate's references to the wrapped model and optimiser."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(trained, FSDPModule):
        from torch.distributed.tensor import DTensor

        shards = dict(trained.named_parameters())
        with torch.no_grad():
            for name, p in model.named_parameters():  # the same order on every process: each gather is collective
                if p.requires_grad:
                    q = shards[name]
                    p.copy_(q.full_tensor() if isinstance(q, DTensor) else q)
    accelerator.free_memory()


def check_supported(accelerator) -> None:
    """Fail at the start of a run, not at its first train phase, on a launch the engine cannot train under:
    FSDP version 1 (`uses_fsdp`); DeepSpeed (ZeRO-3 would partition the policy that generation, scoring and
    saving use, and accelerate's DeepSpeed path wants a dataloader or a fixed micro-batch the engine does not
    give it: not adapted yet)."""
    from accelerate.utils import DistributedType

    if accelerator is None:
        return
    if accelerator.state.distributed_type == DistributedType.DEEPSPEED:
        raise NotImplementedError(
            "accelerate is configured with DeepSpeed: tspin-kit does not train under DeepSpeed/ZeRO-3 yet; launch "
            "with configs/accelerate/fsdp2.yaml (sharded) or configs/accelerate/ddp.yaml instead"
        )
    uses_fsdp(accelerator)  # raises on FSDP version 1


def _state_dicts(model, opt):
    """The sharded model (trainable parameters only) and optimiser state dicts of a prepared FSDP2 model, keyed by
    parameter name: what `save_sharded` writes and `load_sharded` fills."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(ignore_frozen_params=True)  # under LoRA the frozen base does not change
    # a fresh optimiser has no state yet: get_state_dict makes it (one step at lr 0), so the load has tensors to fill
    model_sd, optim_sd = get_state_dict(model, _raw_optimizer(opt), options=options)
    return {"model": model_sd, "optim": optim_sd}, options


def _raw_optimizer(opt):
    return getattr(opt, "optimizer", opt)  # accelerate's AcceleratedOptimizer wraps the torch optimiser


def save_sharded(folder, model, opt) -> None:
    """Write every process's shard of the trainable parameters and optimiser state into ``folder`` (collective:
    every process calls it; the main process writes DCP's metadata once all shards are written)."""
    import torch.distributed.checkpoint as dcp

    state, _ = _state_dicts(model, opt)
    dcp.save(state, checkpoint_id=str(folder))


def load_sharded(folder, model, opt) -> None:
    """Read `save_sharded`'s folder into a prepared FSDP2 model and its optimiser (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state, options = _state_dicts(model, opt)
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(
        model, _raw_optimizer(opt), model_state_dict=state["model"], optim_state_dict=state["optim"], options=options
    )
