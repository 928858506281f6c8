"""FSDP2 and DeepSpeed ZeRO-3 through accelerate, inside the train phase only.

DeepSpeed (``configs/accelerate/deepspeed_zero3.yaml``, `uses_deepspeed`) follows the same design as FSDP2 below:
a copy is prepared (accelerate builds a DeepSpeedEngine: ZeRO-3 partitions the copy's parameters, gradients and
optimiser state), the engine does backward, clipping (``gradient_clipping`` from ``train.max_grad_norm``) and the
optimiser step (`deepspeed_backward`; batch and accumulation written into its config by `_deepspeed_settings`),
and `release_training` gathers each parameter's fp32 master weights back (``safe_get_full_fp32_param``).
`keep_policy_whole` stops transformers from loading the policy partitioned. Mid-phase checkpoints use the engine's own
save_checkpoint/load_checkpoint (each process its ZeRO partition; resumed by the same number of processes).
Tested on 2 CPU processes (DS_ACCELERATOR=cpu, gloo; tests/test_multiproc.py), full and LoRA with accumulation.

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
on load, so a phase killed on N processes may be resumed by an FSDP2 launch of another number (one process or
DDP train the phase from step 0). The phase's position, scheduler, RNG
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


def uses_deepspeed(accelerator) -> bool:
    """Whether the launch configured accelerate with DeepSpeed (``distributed_type: DEEPSPEED``)."""
    if accelerator is None:
        return False
    from accelerate.utils import DistributedType

    return accelerator.state.distributed_type == DistributedType.DEEPSPEED


def prepare_training(accelerator, model, opt, params: list, train=None):
    """``(model to train, optimiser, its trainable parameters)`` for one multi-process train phase.

    DDP: accelerate wraps ``model`` itself and its parameters are trained in place. FSDP2 and DeepSpeed: a sharded
    copy (see the module docstring); the returned parameters are its shards (FSDP2) or its partitioned parameters
    (DeepSpeed, whose engine clips and steps them itself: `deepspeed_backward`; ``train`` is required there).
    """
    fsdp, deepspeed = uses_fsdp(accelerator), uses_deepspeed(accelerator)
    if not (fsdp or deepspeed):
        wrapped, opt = accelerator.prepare(model, opt)
        return wrapped, opt, params
    import copy

    if deepspeed:
        _deepspeed_settings(accelerator, train)
    work = copy.deepcopy(model)  # same parameter names (tied weights stay tied), same train/eval mode
    name_of = {id(p): name for name, p in model.named_parameters()}
    copied = dict(work.named_parameters())
    for group in opt.param_groups:  # accelerate finds each optimiser parameter's shard through the model it prepares
        group["params"] = [copied[name_of[id(p)]] for p in group["params"]]
    sharded, opt = accelerator.prepare(work, opt)
    return sharded, opt, [p for p in sharded.parameters() if p.requires_grad]


def _deepspeed_settings(accelerator, train) -> None:
    """The DeepSpeed config's batch, accumulation and clipping entries from the run's TrainConfig (the run config
    decides, whatever the accelerate config says): no dataloader is prepared, so accelerate cannot fill its
    "auto" values, and the engine clips inside its step, so the clipping norm must be in its config."""
    world = accelerator.num_processes
    micro = max(1, train.batch_size // (world * train.grad_accum))  # DeepSpeed only checks and logs it
    accelerator.state.deepspeed_plugin.deepspeed_config.update(
        train_micro_batch_size_per_gpu=micro,
        gradient_accumulation_steps=train.grad_accum,
        train_batch_size=micro * train.grad_accum * world,
        gradient_clipping=float(train.max_grad_norm or 0.0),
    )


def deepspeed_backward(engine, grad_accum: int):
    """``backward(loss, last_micro_batch)`` under DeepSpeed: the engine's backward, then, after a step's last
    micro-batch, its step (gradient reduction, clipping, the optimiser step, zeroing). The engine divides each
    loss by its ``gradient_accumulation_steps``; the training loop's losses are already scaled to the global
    batch mean, so that division is undone."""

    def backward(loss, last: bool) -> None:
        engine.set_gradient_accumulation_boundary(is_boundary=last)
        engine.backward(loss * grad_accum)
        if last:
            engine.step()

    return backward


def release_training(accelerator, model, trained) -> None:
    """End a multi-process train phase: under FSDP2 or DeepSpeed gather the trained parameters into ``model`` (on
    every process, one parameter at a time); then drop accelerate's references to the wrapped model and
    optimiser."""
    from torch.distributed.fsdp import FSDPModule

    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    target = dict(model.named_parameters())
    if isinstance(trained, FSDPModule):
        from torch.distributed.tensor import DTensor

        shards = dict(trained.named_parameters())
        with torch.no_grad():
            for name in trainable:  # the same order on every process: each gather is collective
                q = shards[name]
                target[name].copy_(q.full_tensor() if isinstance(q, DTensor) else q)
    elif _is_engine(trained):
        from deepspeed.utils import safe_get_full_fp32_param

        parts = dict(trained.module.named_parameters())
        with torch.no_grad():
            for name in trainable:  # collective, in the same order on every process
                # the optimiser's fp32 master weights, not the engine's bf16 copy: under bf16 mixed precision the
                # latter would round a float32 policy to bf16 every iteration (FSDP2 hands back fp32 shards too)
                full = safe_get_full_fp32_param(parts[name])
                if full is None:  # no fp32 master copy (no ZeRO optimiser holds it): the parameter itself
                    full = parts[name].data
                target[name].copy_(full)
    accelerator.free_memory()


def check_supported(accelerator, train=None) -> None:
    """Fail at the start of a run, not at its first train phase, on a launch the engine cannot train under:
    FSDP version 1 (`uses_fsdp`); DeepSpeed with ``zero3_init_flag`` (transformers would then load the policy
    partitioned, and generation, scoring and saving need it whole)."""
    if accelerator is None:
        return
    uses_fsdp(accelerator)  # raises on FSDP version 1
    if not uses_deepspeed(accelerator):
        return
    plugin = accelerator.state.deepspeed_plugin
    if getattr(plugin, "zero3_init_flag", False):
        raise NotImplementedError(
            "accelerate's DeepSpeed config sets zero3_init_flag: true, which makes transformers load the policy "
            "partitioned; tspin-kit keeps the policy whole for generation and scoring and shards a copy for "
            "training: set `zero3_init_flag: false` (as configs/accelerate/deepspeed_zero3.yaml does)"
        )


def keep_policy_whole(accelerator) -> None:
    """Under DeepSpeed, stop transformers from treating every model as ZeRO-3 managed.

    accelerate registers its DeepSpeed config with transformers whenever a ZeRO-3 plugin is selected (whatever
    ``zero3_init_flag`` says); transformers then builds every ``from_pretrained`` model partitioned (under
    ``deepspeed.zero.Init``) and ``generate`` synchronises the processes token by token. The engine keeps the
    policy whole for generation, scoring and saving, and shards only the train phase's copy (`prepare_training`),
    which DeepSpeed's engine partitions itself, so that registration is undone here, once, before any model loads.
    """
    if uses_deepspeed(accelerator):
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


def _state_dicts(model, opt):
    """The sharded model (trainable parameters only) and optimiser state dicts of a prepared FSDP2 model, keyed by
    parameter name: what `save_sharded` writes and `load_sharded` fills."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    # under LoRA the frozen base does not change: not saved, and not expected back (strict off)
    options = StateDictOptions(ignore_frozen_params=True, strict=False)
    # a fresh optimiser has no state yet: get_state_dict makes it (one step at lr 0), so the load has tensors to fill
    model_sd, optim_sd = get_state_dict(model, _raw_optimizer(opt), options=options)
    return {"model": model_sd, "optim": optim_sd}, options


def _raw_optimizer(opt):
    return getattr(opt, "optimizer", opt)  # accelerate's AcceleratedOptimizer wraps the torch optimiser


def _is_engine(model) -> bool:
    return type(model).__name__ == "DeepSpeedEngine"


def checkpoint_layout(model) -> str:
    """How `save_sharded` writes ``model``'s state: ``dcp`` (FSDP2; any number of processes may read it back) or
    ``deepspeed/<processes>`` (DeepSpeed's own ZeRO files, readable by the same number of processes only)."""
    if _is_engine(model):
        import torch.distributed as dist

        return f"deepspeed/{dist.get_world_size()}"
    return "dcp"


def save_sharded(folder, model, opt) -> None:
    """Write every process's shard of the trainable parameters and optimiser state into ``folder`` (collective:
    every process calls it; it returns once every shard is written). FSDP2: torch.distributed.checkpoint (the
    main process writes DCP's metadata once all shards are written). DeepSpeed: the engine's save_checkpoint
    (each process its ZeRO partition), followed by a barrier."""
    if _is_engine(model):
        import torch.distributed as dist

        model.save_checkpoint(str(folder), tag="engine", save_latest=False)
        dist.barrier()
        return
    import torch.distributed.checkpoint as dcp

    state, _ = _state_dicts(model, opt)
    dcp.save(state, checkpoint_id=str(folder))


def load_sharded(folder, model, opt) -> None:
    """Read `save_sharded`'s folder into a prepared FSDP2 model or DeepSpeed engine and its optimiser
    (collective)."""
    if _is_engine(model):
        path, _ = model.load_checkpoint(
            str(folder), tag="engine", load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if path is None:  # DeepSpeed only warns; continuing would train from the wrong state
            raise RuntimeError(
                f"{folder}: DeepSpeed could not load this mid-phase checkpoint; delete the folder to "
                f"train the phase from step 0"
            )
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state, options = _state_dicts(model, opt)
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(
        model, _raw_optimizer(opt), model_state_dict=state["model"], optim_state_dict=state["optim"], options=options
    )
