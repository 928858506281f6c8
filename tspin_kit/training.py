"""One self-play iteration of optimisation, on `accelerate`.

The step reads top to bottom: collate the rows, one forward, summed log-probs, split, the method's pure
loss function, backward. The same code runs in a notebook (one process), under ``accelerate launch`` on
GPUs, and as several CPU processes (``torchrun`` + ``Accelerator(cpu=True)`` -> gloo DDP).

Choices the papers leave open (recorded with each run through the config):
- each iteration starts a fresh optimiser and warmup (SPIN's code launches a new training run per
  iteration);
- a batch's loss is the mean over its examples; each process sums its share and divides by the global
  batch size, so the gradient does not depend on how examples are split over processes;
- SPIN's reference pi_t is frozen for the whole iteration and is the policy at its start, so its
  log-probs are computed once before training (they are needed for the records anyway) instead of
  running a second model on every step.

Work skipped because it cannot change a number (each tested equal to the full computation in
tests/test_equality.py): an example's x is forwarded once with y, y', y0 as branches after it
(`logprobs.PackedExamples`, built once per iteration), a response that repeats within the example
(y' == y, y0 == y) once; examples whose gradient is exactly zero (`zero_gradient`: SPIN with y' == y,
triplets whose terms are all constant) are not forwarded but still count in the batch mean. AdamW is
torch's fused kernel where torch offers it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import methods as M
from .config import MethodConfig, TrainConfig
from .logprobs import (
    MASK_CACHE_ELEMENTS,
    PackedExamples,
    StepCut,
    lean_head,
    longest_row,
    model_placement,
    rows_logps,
    supports_packing,
)
from .progress import bar as progress_bar
from .templates import encode_prompt, encode_response

logger = logging.getLogger(__name__)


@dataclass
class Examples:
    """Token ids of every example's prompt and responses; reference log-probs where a method needs them."""

    prompt_ids: list[list[int]]
    annotated_ids: list[list[int]]  # each ends with EOS
    synthetic_ids: list[list[int]] | None = None
    proto_ids: list[list[int]] | None = None
    ref_annotated: torch.Tensor | None = None  # (N,) log pi_t(y|x), reference methods only
    ref_synthetic: torch.Tensor | None = None
    ref_proto: torch.Tensor | None = None
    historical_mask: torch.Tensor | None = None  # (N,) bool, False drops the historical term

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def role_ids(self, role: str) -> list[list[int]]:
        """Token ids of one role (``annotated``, ``synthetic``, ``proto``) for every example."""
        return getattr(self, f"{role}_ids")

    def concat(self, other: Examples) -> Examples:
        def cat(a, b):
            if a is None or b is None:
                return None
            return a + b if isinstance(a, list) else torch.cat([a, b])

        return Examples(**{k: cat(getattr(self, k), getattr(other, k)) for k in self.__dataclass_fields__})


def build_examples(
    tokenizer, prompts: list[str], responses: list[str], template: str = "auto", max_length: int | None = None
) -> Examples:
    prompt_ids = [encode_prompt(tokenizer, p, template) for p in prompts]
    annotated_ids = [encode_response(tokenizer, r) for r in responses]
    if max_length is not None:
        for i, (p, _r) in enumerate(zip(prompt_ids, annotated_ids)):
            if len(p) >= max_length:
                # DataError (a ValueError) so that `tspin` reports it as a bad input (exit code 2), not a crash;
                # the prompt text is quoted because `i` counts the rows kept after the split, not source rows.
                from .data import DataError

                raise DataError(
                    f"row {i} (prompt {prompts[i][:60]!r}): prompt is {len(p)} tokens after the template, but the "
                    f"model takes at most {max_length} (model.max_length); shorten or drop this prompt"
                )
    return Examples(prompt_ids, annotated_ids)


@dataclass
class TrainResult:
    step_losses: list[float] = field(default_factory=list)
    # per optimiser step, the global-batch mean of each loss term and gradient weight the method's output
    # defines (the logistic family: current_term, historical_term, current_weight, historical_weight; SFT: none)
    step_terms: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    steps: int = 0
    lr: float = 0.0
    tokens: int = 0


# Steps whose inputs `train_iteration` makes at a time (`window_inputs`).
CUT_AHEAD = 16
STEP_TERMS = ("current_term", "historical_term", "current_weight", "historical_weight")


def make_optimizer(params, cfg: TrainConfig, lr: float):
    if cfg.optimizer == "adamw":
        # The fused kernel (one pass over all parameters; CPU and CUDA in torch >= 2.4) where torch offers it
        # for these parameters' device and dtype, else the default implementation.
        params = list(params)
        try:
            return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError):
            return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    # The T-SPIN paper trains with RMSprop and no weight decay.
    return torch.optim.RMSprop(params, lr=lr, weight_decay=cfg.weight_decay)


def lr_lambda(total_steps: int, cfg: TrainConfig) -> Callable[[int], float]:
    warmup = warmup_steps(total_steps, cfg)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.schedule == "linear":
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
        return 1.0

    return f


def warmup_steps(total_steps: int, cfg: TrainConfig) -> int:
    return int(math.ceil(cfg.warmup_ratio * total_steps))


def lr_steady_from(total_steps: int, cfg: TrainConfig) -> int:
    """The first step from which `lr_lambda` no longer changes: the end of the warm-up for a constant schedule; never
    (``total_steps``) for a linear one."""
    return total_steps if cfg.schedule == "linear" else warmup_steps(total_steps, cfg)


@dataclass
class StepInputs:
    """What a step over examples ``idx`` reads besides the model (`window_inputs`). `train_iteration`
    makes them ``CUT_AHEAD`` steps at a time (one process, no accumulation; `window_inputs`): in one tight loop they
    cost several times less than between a backward and the next forward (cold caches; benchmarks/bench_step_parts.py).
    """

    idx: list[int]  # the step's examples: `compute_loss` uses these inputs for this very list object only
    packed: PackedExamples | None  # the pack they were cut from (compute_loss: only with the same one)
    keep_one: bool
    live: list[int]  # the positions in ``idx`` that are forwarded (`forwarded`)
    live_at: torch.Tensor | None  # ``live`` as a tensor on the device, where some examples are not forwarded
    cut: StepCut | None  # the forwarded examples' index tensors in the iteration's pack (None: unpacked, or none)
    per_example: dict[str, torch.Tensor | None]  # `methods.LogProbs`' per-example fields at ``idx``


def window_inputs(
    ex: Examples,
    steps: list[list[int]],
    method: MethodConfig,
    skip: list[bool],
    device: torch.device,
    *,
    keep_one: bool = False,
    packed: PackedExamples | None = None,
    mask_dtype: torch.dtype | None = None,
) -> list[StepInputs]:
    """The `StepInputs` of several steps (``steps``: each step's examples), made together: one cut of the pack for all
    of them (`PackedExamples.cuts`), and each per-example tensor gathered once for all of them (each step's is a view
    of it: nothing writes these tensors)."""
    spec = method.spec
    lives = [forwarded(idx, skip, keep_one) for idx in steps]
    kept = [[idx[k] for k in live] for idx, live in zip(steps, lives)]
    cut_at = [i for i, examples in enumerate(kept) if examples] if packed is not None else []
    cuts = dict(zip(cut_at, packed.cuts([kept[i] for i in cut_at], device, mask_dtype))) if cut_at else {}
    sizes = [len(idx) for idx in steps]
    # (chain: the steps' examples end to end without a Python-level generator, which resumes once per example)
    t = torch.from_numpy(np.fromiter(itertools.chain.from_iterable(steps), dtype=np.int64, count=sum(sizes)))

    def at(x):  # a per-example tensor of `ex` at every step's examples, on the model's device, split by step
        return None if x is None else x[t].to(device).split(sizes)

    fields = {"historical_mask": at(ex.historical_mask) if spec.maskable else None}
    if spec.reference:
        fields.update(
            ref_annotated=at(ex.ref_annotated), ref_synthetic=at(ex.ref_synthetic), ref_proto=at(ex.ref_proto)
        )
    if packed is not None:
        fields["annotated_tokens"] = packed.token_counts[t, 0].to(device).split(sizes)
    else:
        counts = [len(ex.annotated_ids[i]) for idx in steps for i in idx]
        fields["annotated_tokens"] = torch.tensor(counts, dtype=torch.float32, device=device).split(sizes)
    return [
        StepInputs(
            idx=idx,
            packed=packed,
            keep_one=keep_one,
            live=live,
            live_at=torch.tensor(live, device=device) if 0 < len(live) < len(idx) else None,
            cut=cuts.get(i),
            per_example={name: None if v is None else v[i] for name, v in fields.items()},
        )
        for i, (idx, live) in enumerate(zip(steps, lives))
    ]


def compute_loss(
    model,
    ex: Examples,
    idx: list[int],
    method: MethodConfig,
    *,
    beta: float,
    lam: float,
    keep_one: bool = False,
    packed: PackedExamples | None = None,
    skip: list[bool] | None = None,
    iteration: int = 0,
    knobs: dict[str, float] | None = None,
    placement: tuple[torch.device, torch.dtype] | None = None,
    inputs: StepInputs | None = None,
) -> M.Terms:
    """The method's `methods.Terms` on examples `idx`, from one forward over the rows that can move it.

    Row layout: the method's roles (`methods.Method.roles`): [y], [y; y'] or [y; y'; y0], split back with
    ``.chunk``; repeated rows are forwarded once and the rows of one prompt share its forward
    (`rows_logps`). Examples whose gradient is exactly zero (`zero_gradient`) are not forwarded: their
    policy log-probs enter the loss function as the constant 0 (y' == y and, where it counts, y0 == y', so
    the loss equals the full computation's), and they still count in the batch mean. ``keep_one`` forwards
    at least one example (under DDP every process must take part in every backward). ``packed``: the
    iteration's examples packed once (`training_pack`), so a step only indexes tensors; ``skip``: the
    zero-gradient rule evaluated once per iteration for every example (`skipped_examples`); ``placement``: the
    model's (device, dtype) (`logprobs.model_placement`), found once per iteration by the caller; ``inputs``: the
    step's `StepInputs`, made ahead by the caller (used when made for this ``idx`` object, with the same
    ``packed`` and ``keep_one``; else this call makes its own). When nothing is forwarded the loss is a constant:
    ``.losses`` then has no graph.
    """
    # (a training step calls this once per micro-batch: every line here was measured in-step, benchmarks/)
    placement = placement or model_placement(model)
    if inputs is None or inputs.idx is not idx or inputs.packed is not packed or inputs.keep_one != keep_one:
        if skip is None:
            skip = skipped_examples(ex, method, beta)
        inputs = window_inputs(ex, [idx], method, skip, placement[0], keep_one=keep_one, packed=packed)[0]
    spec = method.spec
    live, B = inputs.live, len(idx)
    if live:
        if packed is not None:
            cut = inputs.cut
            per_role = packed.logps(model, cut.t, placement=placement, cut=cut).unbind(-1)  # (n,): y, y'(, y0)
        else:
            kept = [idx[k] for k in live]
            config = getattr(model, "module", model).config  # DDP wraps the model; its config sits on .module
            pad = config.pad_token_id if config.pad_token_id is not None else 0
            roles = [ex.role_ids(r) for r in spec.roles]
            rows = rows_logps(
                model, [ex.prompt_ids[i] for i in kept] * len(roles), [r[i] for r in roles for i in kept], pad
            )  # rows: [y; y'] or [y; y'; y0] of the live ones
            per_role = rows.chunk(len(roles))
        if inputs.live_at is None:  # every example forwarded
            parts = list(per_role)
        else:  # scatter back into (B,), zeros where an example was skipped (index_copy carries the gradient)
            parts = [part.new_zeros(B).index_copy(0, inputs.live_at, part) for part in per_role]
    else:
        parts = [torch.zeros(B, device=placement[0]) for _ in spec.roles]
    lp = M.LogProbs(**dict(zip(spec.roles, parts)), **inputs.per_example)
    if knobs is None:  # train_iteration computes them once per iteration and passes them in
        knobs = {**method.knobs_at(iteration), "beta": beta, "lam": lam}
    return spec.loss(lp, knobs)


def forwarded(idx: list[int], skip: list[bool], keep_one: bool = False) -> list[int]:
    """The positions in ``idx`` of the examples a step forwards: those not skipped (`skipped_examples`), or the first
    one when none is and ``keep_one``."""
    live = [k for k, i in enumerate(idx) if not skip[i]]
    return [0] if not live and keep_one else live


@torch.no_grad()
def step_totals(
    records: list[tuple[torch.Tensor, tuple[torch.Tensor, ...], int]],
    term_names: list[str] | None,
    world: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A step's recorded loss and terms (`train_iteration`) from the (detached loss, term tensors, global batch size)
    of each of its micro-batches on this process: the loss / world summed over them (the reduce sums the processes),
    each term's sum over its examples / the global batch size summed over them (0 where this process ran none)."""
    step_loss = step_terms = None  # summed over the micro-batches (0 + x == x: the same value as starting at 0)
    for loss, parts, size in records:
        part = loss / world if world > 1 else loss
        step_loss = part if step_loss is None else step_loss + part
        if term_names:  # same scaling as the loss: the global-batch mean after the reduce
            t = torch.stack(parts).sum(-1) / size
            step_terms = t if step_terms is None else step_terms + t
    if step_loss is None:  # no micro-batch on this process in this step: it adds 0 to the reduce
        step_loss = torch.zeros((), device=device)
    if term_names and step_terms is None:
        step_terms = torch.zeros(len(term_names), device=device)
    return step_loss, step_terms if term_names else None


def ahead_mask_dtype(packed: PackedExamples | None, placement, largest_step: int) -> torch.dtype | None:
    """The dtype in which `train_iteration` makes its steps' masks with their inputs (`window_inputs`), or None: on CPU,
    where every example's mask is kept (`PackedExamples.keep_masks`) and CUT_AHEAD steps' masks stay within
    MASK_CACHE_ELEMENTS."""
    device, dtype = placement
    if packed is None or device.type != "cpu" or packed.keep_masks(dtype) is None:
        return None
    return dtype if CUT_AHEAD * packed.step_mask_elements(largest_step) <= MASK_CACHE_ELEMENTS else None


def skipped_examples(ex: Examples, method: MethodConfig, beta: float) -> list[bool]:
    """`methods.zero_gradient` for every example of ``ex`` (a list indexed by example)."""
    spec = method.spec
    if spec.skip is None:
        return [False] * len(ex)
    keep = ex.historical_mask.tolist() if ex.historical_mask is not None and spec.maskable else [True] * len(ex)
    proto = ex.proto_ids if spec.triplet else [None] * len(ex)
    return [
        M.zero_gradient(spec, beta, a, s, p, k) for a, s, p, k in zip(ex.annotated_ids, ex.synthetic_ids, proto, keep)
    ]


def training_pack(model, ex: Examples, method: MethodConfig) -> PackedExamples | None:
    """The iteration's examples packed once (the method's roles after one shared prompt), or None where the model
    takes no 4D mask (then every step packs its own rows, `rows_logps`)."""
    roles = [ex.role_ids(r) for r in method.spec.roles]
    if not supports_packing(model, lambda: max(longest_row(ex.prompt_ids, r) for r in roles)):
        return None
    config = getattr(model, "module", model).config
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    return PackedExamples(ex.prompt_ids, roles, pad)


def train_iteration(
    model,
    ex: Examples,
    *,
    method: MethodConfig,
    train: TrainConfig,
    iteration: int,
    seed: int,
    cpu: bool = False,
    accelerator=None,
    local: bool = False,
    desc: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """Train `model` in place for one iteration on `ex`. Returns per-step losses and timings.

    ``local=True`` trains in this process only, without DDP (used for the cached toy pi_0, which the main
    process makes while the others wait for the cache).

    ``checkpoint_dir``: where this phase keeps its mid-phase checkpoint. Every ``train.checkpoint_every`` optimiser
    steps (0: never) the train state is saved there (by the main process; under FSDP2/DeepSpeed every process writes
    its shard); on entry a checkpoint found there is loaded and
    training continues from the step after it, ending with the weights and TrainResult of an uninterrupted call.
    The folder is deleted when the phase completes.
    """
    from accelerate import Accelerator, PartialState

    from .generation import derive_seed

    state = accelerator.state if accelerator is not None else PartialState(cpu=cpu)
    world, rank = (1, 0) if local else (state.num_processes, state.process_index)
    if world > 1 and accelerator is None:
        accelerator = Accelerator(cpu=cpu)
    beta, lam, lr = method.beta_at(iteration), method.lam_at(iteration), train.lr_at(iteration)
    n, bs = len(ex), train.batch_size
    order_rng = np.random.default_rng(derive_seed(seed, iteration, "shuffle"))
    batches = []
    for _ in range(train.epochs):
        perm = order_rng.permutation(n).tolist()
        chunks = [perm[i : i + bs] for i in range(0, n, bs)]
        # A tiny trailing batch gives a noisy step (and would leave a process without examples):
        # fold it into the previous one. For batch_size >= 4 * processes * grad_accum the rule does not depend
        # on the number of processes, so one and several processes take the same steps.
        if len(chunks) > 1 and len(chunks[-1]) < max(world * train.grad_accum, bs // 4):
            tail = chunks.pop()  # pop first: `chunks[-2] += chunks.pop()` resolves -2 before the pop
            chunks[-1] += tail
        batches += chunks
    total = len(batches)

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, train, lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, train))
    steady = lr_steady_from(total, train)
    # A mid-phase checkpoint (see TRAIN_CHECKPOINT_FORMAT): one process / DDP: loaded before prepare(), every process
    # reads it, the main process writes it; FSDP2 / DeepSpeed: loaded after prepare(), every process its shard.
    writes_checkpoints = local or state.is_main_process
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    # the checkpoint's parameter names (only read when this phase checkpoints)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad] if ckpt_dir is not None else []
    fingerprint = {"iteration": iteration, "seed": seed, "steps": total, "examples": n, "method": method.name, "lr": lr}
    # One process needs no wrapping (the model is already on its device): skipping prepare() also skips
    # free_memory()'s gc.collect() at the end, a fixed cost that showed up as overhead in benchmarks/.
    distributed = not local and world > 1
    # Under FSDP2 or DeepSpeed the trained model is a sharded copy whose weights are gathered back into `model` at
    # the end (sharding.py: prepare_training / release_training); `params` then are its shards, and the mid-phase
    # checkpoint is sharded too: it is loaded after prepare(), into the shards.
    from .sharding import deepspeed_backward, prepare_training, release_training, uses_deepspeed, uses_fsdp

    engine = distributed and uses_deepspeed(accelerator)  # DeepSpeed: its engine clips, steps and zeroes
    sharded = engine or (distributed and uses_fsdp(accelerator))  # each process checkpoints its own shard
    if sharded and min(map(len, batches)) < world * train.grad_accum:
        # a sharded forward all-gathers parameters on every process, so every process must run the same number
        # of micro-batches; with fewer examples than processes x grad_accum in a step some would run fewer (hang)
        raise ValueError(
            f"train.batch_size {bs} with grad_accum {train.grad_accum} on {world} processes under FSDP2/DeepSpeed: "
            f"a step of {min(map(len, batches))} examples leaves a process without one of its {train.grad_accum} "
            f"micro-batches; use batch_size >= {world * train.grad_accum} (and at least that many examples)"
        )
    resumed = None
    if ckpt_dir is not None:
        if writes_checkpoints:
            for unfinished in ckpt_dir.glob(".tmp-*"):  # a write a kill interrupted
                shutil.rmtree(unfinished, ignore_errors=True)
        if not sharded:
            resumed = _load_train_checkpoint(ckpt_dir, fingerprint, named, opt, sched)
    ddp_model, opt, params = (
        prepare_training(accelerator, model, opt, params, train) if distributed else (model, opt, params)
    )
    if ckpt_dir is not None:
        if sharded:
            resumed = _load_train_checkpoint(ckpt_dir, fingerprint, named, opt, sched, sharded=ddp_model)
        if resumed is None and writes_checkpoints:  # nothing usable there: clear it, so no stale step outranks ours
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    if engine:
        backward = deepspeed_backward(ddp_model, train.grad_accum)
    elif distributed:
        backward = lambda loss, last: accelerator.backward(loss)  # noqa: E731
    else:
        backward = lambda loss, last: loss.backward()  # noqa: E731

    result = TrainResult(lr=lr)
    t0 = time.perf_counter()
    packed = training_pack(model, ex, method)
    skip = skipped_examples(ex, method, beta)
    label = desc or f"train it{iteration} ({method.name})"
    bar = progress_bar(total, label, main=local or state.is_main_process)
    start = 0
    if resumed is not None:  # continue after the checkpoint's step, with its losses and its time counted
        start = resumed["step"]
        saved = resumed["result"]
        result.step_losses = list(saved["step_losses"])
        result.step_terms = {k: list(v) for k, v in saved["step_terms"].items()}
        result.tokens = saved["tokens"]
        t0 -= saved["seconds"]
        bar.update(start)
        if writes_checkpoints:
            logger.info("resuming %s from step %d of %d (checkpoint %s)", label, start, total, resumed["path"])
    knobs = {**method.knobs_at(iteration), "beta": beta, "lam": lam}  # the loss's knob values, fixed for the iteration
    placement = model_placement(ddp_model)  # device and dtype, fixed for the iteration
    # One process, no accumulation (every step one micro-batch): the steps' inputs are made CUT_AHEAD steps at a time,
    # in one tight loop, where they cost several times less than between a backward and the next forward. On CPU the
    # steps' masks too, while CUT_AHEAD of them stay within MASK_CACHE_ELEMENTS.
    ahead = world == 1 and train.grad_accum == 1
    mask_dtype = ahead_mask_dtype(packed, placement, max(map(len, batches), default=0))
    made: dict[int, StepInputs] = {}
    made_end = 0  # the first step after those made so far
    term_names: list[str] | None = None
    # The steps not yet in `result`. One process: each step's micro-batch records, turned into totals (`step_totals`)
    # and numbers once per iteration (and before each checkpoint): per step, a few small tensor ops and a conversion
    # cost more between a backward and the next forward than all of them together afterwards; on a GPU each
    # conversion waited for the step. Several processes: each step's (loss, terms), reduced as the step ends, as
    # before (the collectives keep their order and size); only the conversion waits.
    pending: list = []

    def record_pending():
        if pending and world == 1:
            pending[:] = [step_totals(records, term_names, 1, placement[0]) for records in pending]
        if pending:
            result.step_losses += torch.stack([loss for loss, _ in pending]).tolist()
            if term_names:
                for n, values in zip(term_names, torch.stack([terms for _, terms in pending]).T.tolist()):
                    result.step_terms.setdefault(n, []).extend(values)
            pending.clear()

    # The head's lean-path hook added once for the loop, not at every step (`logprobs.lean_head`).
    with lean_head(ddp_model):
        for step, global_idx in enumerate(batches):
            if step < start:  # taken before the checkpoint (the batch order is a pure function of seed and iteration)
                continue
            if ahead:
                micro = [global_idx]  # the common case, without the per-step numpy round trip
                if step >= made_end:
                    made_end = min(step + CUT_AHEAD, total)
                    window = batches[step:made_end]  # (the same list objects: compute_loss matches them by identity)
                    made = dict(
                        zip(
                            range(step, made_end),
                            window_inputs(ex, window, method, skip, placement[0], packed=packed, mask_dtype=mask_dtype),
                        )
                    )
            else:
                mine = np.array_split(np.asarray(global_idx), world)[rank]
                micro = [m.tolist() for m in np.array_split(mine, train.grad_accum) if len(m)]
            records = []  # (loss, terms, global batch size) of each micro-batch, turned into numbers by record_pending
            stepped = False
            for j, idx in enumerate(micro):
                # Only the last micro-batch synchronises gradients across processes.
                sync = j == len(micro) - 1
                ctx = contextlib.nullcontext() if sync or world == 1 else accelerator.no_sync(ddp_model)
                with ctx:
                    out = compute_loss(
                        ddp_model,
                        ex,
                        idx,
                        method,
                        beta=beta,
                        lam=lam,
                        keep_one=distributed,
                        packed=packed,
                        skip=skip,
                        iteration=iteration,
                        knobs=knobs,
                        placement=placement,
                        inputs=made.pop(step) if ahead else None,
                    )
                    # sum of this process's per-example losses / global batch; DDP averages over processes,
                    # so multiply back by world: the result is the global mean whatever the split.
                    loss = out.losses.sum()
                    loss = (loss * world if world > 1 else loss) / len(global_idx)
                    if loss.requires_grad:  # False when every example of the micro-batch had a zero gradient
                        backward(loss, sync)
                        stepped = True
                if term_names is None:  # once per iteration: which terms the method defines (SFT none; absent ones NaN)
                    with torch.no_grad():
                        defined = torch.isfinite(torch.stack([getattr(out, n) for n in STEP_TERMS])).any(-1).tolist()
                    term_names = [n for n, d in zip(STEP_TERMS, defined) if d]
                records.append((loss.detach(), tuple(getattr(out, n) for n in term_names), len(global_idx)))
            if not stepped:
                # every example of the step had a zero gradient: the full computation would hand the optimiser
                # zero gradients (AdamW still moves on its momentum and decay), so do exactly that
                for p in params:
                    p.grad = torch.zeros_like(p)
            if not engine:  # (DeepSpeed's engine did all three inside the last micro-batch's backward)
                if train.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
            if step < steady:  # the schedule sets the optimiser's lr, which DeepSpeed's engine reads too; once it is
                sched.step()  # constant (after a constant schedule's warm-up) there is nothing left to set
            if world > 1:
                step_loss, step_terms = step_totals(records, term_names, world, placement[0])
                step_loss = accelerator.reduce(step_loss, reduction="sum")
                pending.append((step_loss, accelerator.reduce(step_terms, reduction="sum") if term_names else None))
            else:
                pending.append(records)  # (made into totals by record_pending)
            every = train.checkpoint_every
            if ckpt_dir is not None and every and (step + 1) % every == 0 and step + 1 < total:
                record_pending()
                if writes_checkpoints or sharded:  # sharded: every process writes its shard
                    _save_train_checkpoint(
                        ckpt_dir,
                        step + 1,
                        fingerprint,
                        named,
                        opt,
                        sched,
                        result,
                        time.perf_counter() - t0,
                        sharded=ddp_model if sharded else None,
                        main=writes_checkpoints,
                    )
            bar.update(1)
            if progress is not None:
                progress(step + 1, total, label)
    record_pending()
    bar.close()
    if ckpt_dir is not None and writes_checkpoints:  # the caller's outputs of the phase supersede the checkpoint
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    result.seconds = time.perf_counter() - t0
    result.steps = total
    if distributed:
        release_training(accelerator, model, ddp_model)  # FSDP2: the trained weights back into `model`
    model.eval()
    return result


# Mid-phase checkpoints (`train.checkpoint_every`, `train_iteration(checkpoint_dir=...)`).
#
# Format: torch.save of state dicts, not accelerate's save_state/load_state, because (1) the one-process path never
# calls accelerator.prepare(), so save_state would have no model or optimiser registered to save; (2) save_state
# writes the whole model (under LoRA the frozen base too: a 7B copy every N steps) where only the trainable
# parameters change; (3) the phase's own position (optimiser steps taken; the batch order is a pure function of
# (seed, iteration)) and its partial TrainResult are not accelerate objects; (4) save_state writes into its folder
# in place, while here a step's folder appears by one atomic rename. Saved: the trainable parameters, optimiser and
# LR-scheduler state, torch's CPU (and CUDA) RNG states, the steps taken and the TrainResult so far, plus a
# fingerprint of the phase (iteration, seed, steps, examples, method, lr) so a checkpoint is never applied to
# another phase. Under DDP every process holds the same parameters and optimiser state: the main process writes
# and every process reads (the run directory is shared, as for the rest of `tspin resume`), and the load happens
# before prepare(), whose DDP wrapper broadcasts the main process's parameters anyway. Under FSDP2 the parameters
# and optimiser state stay sharded: each process writes its shard with torch.distributed.checkpoint (what
# accelerate's save_state does for FSDP's sharded state dict), into the same step folder before its rename, and
# ``state.pt`` carries the rest (``sharded_params`` instead of ``params``/``optimizer``); it is read after prepare().
# DCP reshards on load, so the number of processes may change between the kill and the resume. Under DeepSpeed the
# engine's save_checkpoint writes its ZeRO partitions instead (``layout`` deepspeed/<processes>: only the same
# number of processes reads it back; another number trains the phase from step 0).
TRAIN_CHECKPOINT_FORMAT = 1


def _train_checkpoints(folder: Path) -> list[Path]:
    """The complete step folders of a checkpoint folder, oldest first (``.tmp-*`` folders are unfinished writes)."""
    if not folder.is_dir():
        return []
    found = [d for d in folder.glob("step_*") if d.is_dir() and d.name[5:].isdigit() and (d / "state.pt").is_file()]
    return sorted(found, key=lambda d: int(d.name[5:]))


def _save_train_checkpoint(
    folder: Path,
    step: int,
    fingerprint: dict,
    named: list,
    opt,
    sched,
    result: TrainResult,
    seconds: float,
    *,
    sharded=None,
    main: bool = True,
) -> None:
    """Write ``folder/step_<step>/state.pt`` via a temporary folder and one rename, then drop older steps: a kill
    at any moment leaves the previous complete checkpoint (or the new one) readable.

    ``sharded``: the prepared FSDP2 model or DeepSpeed engine; then every process calls this (``main`` on the main
    process only), the parameters and optimiser state go into the folder as shards (`sharding.save_sharded`) and
    ``state.pt`` holds the rest. The rename happens after the collective save has returned, i.e. after every shard
    is written.
    """
    final, tmp = folder / f"step_{step:06d}", folder / f".tmp-step_{step:06d}"
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    state = {
        "format": TRAIN_CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "step": step,
        "scheduler": sched.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        "result": {
            "step_losses": list(result.step_losses),
            "step_terms": {k: list(v) for k, v in result.step_terms.items()},
            "tokens": int(result.tokens),
            "seconds": float(seconds),
        },
    }
    if sharded is None:
        state["params"] = {n: p.detach().cpu() for n, p in named}
        state["optimizer"] = opt.state_dict()
    else:
        import torch.distributed as dist

        from .sharding import checkpoint_layout, save_sharded

        dist.barrier()  # the main process has made the empty temporary folder
        save_sharded(tmp, sharded, opt)
        state["sharded_params"] = [n for n, _ in named]
        state["layout"] = checkpoint_layout(sharded)
    if not main:
        return
    with open(tmp / "state.pt", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)  # only if this very step was saved before (never in one phase)
    os.replace(tmp, final)
    for old in _train_checkpoints(folder):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def _load_train_checkpoint(folder: Path, fingerprint: dict, named: list, opt, sched, *, sharded=None) -> dict | None:
    """Restore the newest complete checkpoint of ``folder`` into the parameters, optimiser, scheduler and RNG;
    return its state (``step``, ``result``), or None where there is none or it belongs to another phase.
    ``sharded``: the prepared FSDP2 model or DeepSpeed engine, whose shards are filled from a sharded checkpoint of
    the same layout (`sharding.checkpoint_layout`). Collective then: the main process picks the step folder, every
    process checks it, and all load it only if all accept it (a run directory some process cannot read would
    otherwise leave the others waiting in the load). A checkpoint of another layout (a phase killed under one
    launch and resumed under another) is not applied: training restarts from step 0."""
    if sharded is None:
        found = _train_checkpoints(folder)
        state = _read_train_checkpoint(found[-1] if found else None, fingerprint, named, None)
    else:
        import torch.distributed as dist

        pick = [None]
        if dist.get_rank() == 0:
            found = _train_checkpoints(folder)
            pick = [found[-1].name if found else None]
        dist.broadcast_object_list(pick, src=0)  # the main process's view decides which step
        state = _read_train_checkpoint(folder / pick[0] if pick[0] else None, fingerprint, named, sharded)
        accepted = [None] * dist.get_world_size()
        dist.all_gather_object(accepted, state is not None)
        if not all(accepted):
            return None
    if state is None:
        return None
    if sharded is None:
        with torch.no_grad():
            for n, p in named:
                p.copy_(state["params"][n])
        opt.load_state_dict(state["optimizer"])
    else:
        from .sharding import load_sharded

        load_sharded(state["path"].parent, sharded, opt)
    sched.load_state_dict(state["scheduler"])
    # The next step's learning rate from the schedule (what its last step set), whatever the optimiser state brought
    # back: DeepSpeed's elastic ZeRO checkpoints bring none, and train_iteration does not step a constant schedule after
    # its warm-up, so nothing would set it again.
    for group, lr in zip(sched.optimizer.param_groups, sched.get_last_lr()):
        group["lr"] = lr
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state


def _read_train_checkpoint(step_dir: Path | None, fingerprint: dict, named: list, sharded) -> dict | None:
    """``step_dir/state.pt`` if it is readable and belongs to this phase, model and layout (with ``path`` added),
    else None (with a warning)."""
    if step_dir is None:
        return None
    path = step_dir / "state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file: training from step 0 is always correct
        logger.warning("%s: unreadable train checkpoint (%s); training this phase from step 0", path, e)
        return None
    names = [n for n, _ in named]
    if sharded is None:
        saved_names = list(state.get("params", {}))
    else:
        from .sharding import checkpoint_layout

        same_layout = state.get("layout") == checkpoint_layout(sharded)
        saved_names = state.get("sharded_params") if same_layout else None
    if (
        state.get("format") != TRAIN_CHECKPOINT_FORMAT
        or state.get("fingerprint") != fingerprint
        or saved_names != names
    ):
        logger.warning(
            "%s: train checkpoint of another phase or model (%s, expected %s); training this phase from step 0",
            path,
            state.get("fingerprint"),
            fingerprint,
        )
        return None
    state["path"] = path
    return state
