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
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import losses as L
from .config import MethodConfig, TrainConfig
from .logprobs import PackedExamples, rows_logps, supports_packing
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

    def concat(self, other: "Examples") -> "Examples":
        def cat(a, b):
            if a is None or b is None:
                return None
            return a + b if isinstance(a, list) else torch.cat([a, b])

        return Examples(**{k: cat(getattr(self, k), getattr(other, k)) for k in self.__dataclass_fields__})


def build_examples(tokenizer, prompts: list[str], responses: list[str], template: str = "auto",
                   max_length: int | None = None) -> Examples:
    prompt_ids = [encode_prompt(tokenizer, p, template) for p in prompts]
    annotated_ids = [encode_response(tokenizer, r) for r in responses]
    if max_length is not None:
        for i, (p, r) in enumerate(zip(prompt_ids, annotated_ids)):
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
    # has (T-SPIN: current_term, historical_term, current_weight, historical_weight; SPIN: current_weight)
    step_terms: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    steps: int = 0
    lr: float = 0.0
    tokens: int = 0


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
    warmup = int(math.ceil(cfg.warmup_ratio * total_steps))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.schedule == "linear":
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
        return 1.0

    return f


def zero_gradient(method: MethodConfig, beta: float, annotated: list[int], synthetic: list[int], proto: list[int] | None,
                  keep_historical: bool = True) -> bool:
    """True when an example's loss cannot depend on the parameters, so its gradient is exactly zero.

    The current term compares y with y': identical token ids give identical log-probs (one forwarded row), so
    SPIN's and the current term's argument is a constant. A triplet is constant too when its historical term
    is off (beta = 0, as at Iter0 and in the no-history ablation, or masked because y0 == y) or compares
    y' with an identical y0. SFT has no such examples.
    """
    if method.name == "sft" or synthetic != annotated:
        return False
    if method.name == "spin":
        return True
    return beta == 0 or not keep_historical or proto == synthetic


def compute_loss(model, ex: Examples, idx: list[int], method: MethodConfig, *, beta: float, lam: float,
                 keep_one: bool = False, packed: PackedExamples | None = None, skip: list[bool] | None = None):
    """The loss object of `method` on examples `idx`, from one forward over the rows that can move it.

    Row layout: [y] for SFT, [y; y'] for SPIN, [y; y'; y0] for the triplet methods, split back with
    ``.chunk``; repeated rows are forwarded once and the rows of one prompt share its forward
    (`rows_logps`). Examples whose gradient is exactly zero (`zero_gradient`) are not forwarded: their
    policy log-probs enter the loss function as the constant 0 (y' == y and, where it counts, y0 == y', so
    the loss equals the full computation's), and they still count in the batch mean. ``keep_one`` forwards
    at least one example (under DDP every process must take part in every backward). ``packed``: the
    iteration's examples packed once (`training_pack`), so a step only indexes tensors; ``skip``: the
    zero-gradient rule evaluated once per iteration for every example (`skipped_examples`).
    When nothing is forwarded the loss is a constant: ``.losses`` then has no graph.
    """
    config = getattr(model, "module", model).config  # DDP wraps the model; its config sits on .module
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    device = next(model.parameters()).device
    if method.name == "sft":
        if packed is not None:
            return L.sft_loss(packed.logps(model, idx)[:, 0], packed.token_counts[idx, 0].to(device))
        counts = torch.tensor([len(ex.annotated_ids[i]) for i in idx], dtype=torch.float32, device=device)
        return L.sft_loss(rows_logps(model, [ex.prompt_ids[i] for i in idx], [ex.annotated_ids[i] for i in idx], pad),
                          counts)
    t = torch.tensor(idx)
    triplet = method.name != "spin"
    if skip is None:
        skip = skipped_examples(ex, method, beta)
    live = [k for k, i in enumerate(idx) if not skip[i]]
    if not live and keep_one:
        live = [0]
    B, n = len(idx), len(live)
    if n:
        kept = [idx[k] for k in live]
        if packed is not None:
            per_role = packed.logps(model, kept).unbind(-1)  # (n,) each: y, y'(, y0)
        else:
            roles = (ex.annotated_ids, ex.synthetic_ids, ex.proto_ids) if triplet else (ex.annotated_ids, ex.synthetic_ids)
            rows = rows_logps(model, [ex.prompt_ids[i] for i in kept] * len(roles),
                              [r[i] for r in roles for i in kept], pad)  # rows: [y; y'] or [y; y'; y0] of the live ones
            per_role = rows.chunk(len(roles))
        if n == B:
            parts = list(per_role)
        else:  # scatter back into (B,), zeros where an example was skipped (index_copy carries the gradient)
            pos = torch.tensor(live, device=device)
            parts = [part.new_zeros(B).index_copy(0, pos, part) for part in per_role]
    else:
        parts = [torch.zeros(B, device=device) for _ in range(3 if triplet else 2)]
    if method.name == "spin":
        a, s = parts
        return L.spin_loss(a, s, ex.ref_annotated[t].to(device), ex.ref_synthetic[t].to(device), lam=lam)
    a, s, p = parts
    mask = ex.historical_mask[t].to(device) if ex.historical_mask is not None else None
    if method.name == "tspin_ref":
        return L.tspin_ref_loss(a, s, p, ex.ref_annotated[t].to(device), ex.ref_synthetic[t].to(device),
                                ex.ref_proto[t].to(device), lam=lam, beta=beta, historical_mask=mask)
    return L.tspin_loss(a, s, p, alpha=method.alpha, beta=beta, historical_mask=mask)


def skipped_examples(ex: Examples, method: MethodConfig, beta: float) -> list[bool]:
    """`zero_gradient` for every example of ``ex`` (a list indexed by example)."""
    if method.name == "sft":
        return [False] * len(ex)
    keep = ex.historical_mask.tolist() if ex.historical_mask is not None else [True] * len(ex)
    proto = ex.proto_ids if method.name != "spin" else [None] * len(ex)
    return [zero_gradient(method, beta, a, s, p, k)
            for a, s, p, k in zip(ex.annotated_ids, ex.synthetic_ids, proto, keep)]


def training_pack(model, ex: Examples, method: MethodConfig) -> PackedExamples | None:
    """The iteration's examples packed once (y, y', y0 after one shared prompt), or None where the model takes no
    4D mask (then every step packs its own rows, `rows_logps`)."""
    if not supports_packing(model):
        return None
    config = getattr(model, "module", model).config
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    roles = [ex.annotated_ids]
    if method.name != "sft":
        roles.append(ex.synthetic_ids)
        if method.name != "spin":
            roles.append(ex.proto_ids)
    return PackedExamples(ex.prompt_ids, roles, pad)


def train_iteration(model, ex: Examples, *, method: MethodConfig, train: TrainConfig, iteration: int, seed: int,
                    cpu: bool = False, accelerator=None, local: bool = False, desc: str | None = None,
                    progress: Callable[[int, int, str], None] | None = None) -> TrainResult:
    """Train `model` in place for one iteration on `ex`. Returns per-step losses and timings.

    ``local=True`` trains in this process only, without DDP (used for the cached toy pi_0, which the main
    process makes while the others wait for the cache).
    """
    from accelerate import Accelerator

    from .generation import derive_seed

    from accelerate import PartialState

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
    # One process needs no wrapping (the model is already on its device): skipping prepare() also skips
    # free_memory()'s gc.collect() at the end, a fixed cost that showed up as overhead in benchmarks/.
    distributed = not local and world > 1
    ddp_model, opt = accelerator.prepare(model, opt) if distributed else (model, opt)
    backward = accelerator.backward if distributed else (lambda loss: loss.backward())

    result = TrainResult(lr=lr)
    t0 = time.perf_counter()
    packed = training_pack(model, ex, method)
    skip = skipped_examples(ex, method, beta)
    label = desc or f"train it{iteration} ({method.name})"
    bar = progress_bar(total, label, main=local or state.is_main_process)
    for step, global_idx in enumerate(batches):
        if world == 1 and train.grad_accum == 1:
            micro = [global_idx]  # the common case, without the per-step numpy round trip
        else:
            mine = np.array_split(np.asarray(global_idx), world)[rank]
            micro = [m.tolist() for m in np.array_split(mine, train.grad_accum) if len(m)]
        step_loss = torch.zeros((), device=next(model.parameters()).device)
        step_terms = torch.zeros(len(STEP_TERMS), device=step_loss.device)
        term_names: list[str] = []
        stepped = False
        for j, idx in enumerate(micro):
            # Only the last micro-batch synchronises gradients across processes.
            sync = j == len(micro) - 1
            ctx = contextlib.nullcontext() if sync or world == 1 else accelerator.no_sync(ddp_model)
            with ctx:
                out = compute_loss(ddp_model, ex, idx, method, beta=beta, lam=lam, keep_one=distributed, packed=packed,
                                   skip=skip)
                # sum of this process's per-example losses / global batch; DDP averages over processes,
                # so multiply back by world: the result is the global mean whatever the split.
                loss = out.losses.sum() * world / len(global_idx)
                if loss.requires_grad:  # False when every example of the micro-batch had a zero gradient
                    backward(loss)
                    stepped = True
            step_loss += loss.detach() / world
            term_names = [n for n in STEP_TERMS if getattr(out, n, None) is not None]
            for k, n in enumerate(STEP_TERMS):
                if n in term_names:  # same scaling as the loss: the global-batch mean after the reduce
                    step_terms[k] += getattr(out, n).detach().sum() / len(global_idx)
        if not stepped:
            # every example of the step had a zero gradient: the full computation would hand the optimiser
            # zero gradients (AdamW still moves on its momentum and decay), so do exactly that
            for p in params:
                p.grad = torch.zeros_like(p)
        if train.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step_total = accelerator.reduce(step_loss, reduction="sum") if world > 1 else step_loss
        result.step_losses.append(float(step_total))
        if term_names:
            totals = accelerator.reduce(step_terms, reduction="sum") if world > 1 else step_terms
            for k, n in enumerate(STEP_TERMS):
                if n in term_names:
                    result.step_terms.setdefault(n, []).append(float(totals[k]))
        bar.update(1)
        if progress is not None:
            progress(step + 1, total, label)
    bar.close()
    result.seconds = time.perf_counter() - t0
    result.steps = total
    if distributed:
        accelerator.free_memory()  # drop accelerate's references to the DDP wrapper and optimiser
    model.eval()
    return result
