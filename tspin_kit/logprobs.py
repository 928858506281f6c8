"""Summed response log-probs and the one batch layout for [y; y'; y0].

Everything that turns a model into log pi(z|x) lives here, and the next-token shift with it: for right-padded
rows :func:`sequence_logps`; for rows that share their prompt, :func:`pack_rows` / :class:`PackedExamples`
(x forwarded once, y, y', y0 as branches after it under a 4D mask, each repeated response once), tested
equal to the padded rows in values and gradients.

Memory: no (rows x length x vocab) log-softmax is ever built. The model is run up to its last hidden state
(:func:`final_hidden`: the output-embedding layer is asked for one position only), and the vocabulary
projection, logsumexp and gather happen for response positions only, in chunks of about
``CHUNK_ELEMENTS`` logits (:func:`_token_logps`); with gradients on, each chunk is recomputed in the
backward (activation checkpointing) instead of being kept. Tested equal to ``gather(log_softmax(logits))``
in values and gradients (tests/test_logprobs.py). Models whose head is not a plain projection of the last
hidden state (logit soft-capping, a logit scale) fall back to the model's own logits, still chunked.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

# Logits held at once per chunk (2**23 float32 = 32 MiB): at a 150k vocabulary, 55 response positions.
CHUNK_ELEMENTS = 2**23
# On a GPU, 2**26 (256 MiB): with 32 MiB chunks the head of a 1B model's step ran as ~90 small checkpointed pieces;
# measured on an H200 (bench_gpu.py, batch 32): MFU 29.2% -> 31.6% at the same peak memory (54.1 GiB).
CHUNK_ELEMENTS_GPU = 2**26
# A training iteration whose N x W x W mask entries fit this (16 MiB of float32) keeps every example's mask on CPU.
MASK_CACHE_ELEMENTS = 2**22


@dataclass
class SequenceLogps:
    summed: torch.Tensor  # (N,)   sum over response tokens of log pi(token | prefix)
    token_logps: torch.Tensor  # (N, T-1) per-position log-probs, 0 where the mask is off
    mask: torch.Tensor  # (N, T-1) True on response tokens
    entropy: torch.Tensor | None = None  # (N,) mean next-token entropy over response positions (nats)


def sequence_logps(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    with_entropy: bool = False,
    chunk_elements: int | None = None,
) -> SequenceLogps:
    """log pi(response | prompt), summed over response tokens (no length normalisation, as in SPIN's code).

    logits: (N, T, V) from the model on input_ids (N, T); loss_mask (N, T) is True on response tokens.
    Position t of the logits predicts token t+1, so logits drop their last position and ids/mask their first.
    Equals ``log_softmax(logits).gather(-1, ids)`` (tested), computed as ``logit - logsumexp`` over chunks of
    response positions: the logits keep their dtype, only a chunk at a time is upcast to float32.
    """
    mask = loss_mask[:, 1:].bool()  # (N, T-1)
    rows, pos = mask.nonzero(as_tuple=True)  # (M,) each: the logits at (row, pos) predict token pos+1
    targets = input_ids[:, 1:][mask]  # (M,)
    return _scatter(mask, *_full_logits_logps(logits, rows, pos, targets, with_entropy, chunk_elements))


def _full_logits_logps(logits, rows, pos, targets, with_entropy, chunk_elements):
    """Per-token log-probs (M,) (and entropies) read from materialised logits (N, L, V) at (rows, pos)."""
    n, length, vocab = logits.shape
    flat = logits.reshape(n * length, vocab)  # a view: logits come contiguous from the model
    return _token_logps(
        flat.__getitem__, rows * length + pos, targets, vocab, with_entropy=with_entropy, chunk_elements=chunk_elements
    )


def _piece(to_logits, inputs, targets, with_entropy: bool):
    """log-softmax at ``targets`` for one chunk; the chunk's logits are the only (m, V) tensors alive."""
    logits = to_logits(inputs)  # (m, V) in the model's dtype
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # upcast a chunk (bf16/fp16), never float64 down
    lse = torch.logsumexp(logits, dim=-1)  # (m,)
    logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse  # (m,)
    if not with_entropy:
        return logps, None
    with torch.no_grad():
        entropy = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)  # H = logsumexp - E_p[logit]
    return logps, entropy


def _token_logps(
    to_logits,
    inputs,
    targets,
    vocab: int,
    *,
    with_entropy: bool = False,
    chunk_elements: int | None = None,
    one_piece: bool = False,
):
    """log-softmax(to_logits(inputs))[targets] row by row, ``chunk_elements // vocab`` rows per chunk.

    inputs (M, ...) are sliced along their first dimension (hidden states (M, H), or flat row indices);
    returns logps (M,) and entropy (M,) (None unless ``with_entropy``). With gradients on and more than one
    chunk, each chunk is checkpointed: the backward recomputes its logits rather than keeping them.
    ``one_piece``: all rows in one chunk, never recomputed, for a head that gathers its parameters at each call
    (DeepSpeed ZeRO-3): processes holding different numbers of tokens would run different numbers of chunks and
    leave gathers unmatched, and ZeRO-3 did not gather the head's weight inside the checkpoint's recompute (the
    recomputed forward saw its empty partition; tests/test_multiproc.py). The memory of the chunked log-probs is
    then not saved: (tokens, vocabulary) logits of a process's responses at once.
    """
    m = targets.shape[0]
    default = CHUNK_ELEMENTS if inputs.device.type == "cpu" else CHUNK_ELEMENTS_GPU
    rows = max(m, 1) if one_piece else max(1, (chunk_elements or default) // max(vocab, 1))
    chunks = -(-m // rows)
    if chunks <= 1:  # one chunk (no slicing, no concatenation), or no response token (an empty result on the graph)
        return _piece(to_logits, inputs, targets, with_entropy)
    recompute = torch.is_grad_enabled()
    logps, entropy = [], []
    for s in range(0, chunks * rows, rows):
        x, t = inputs[s : s + rows], targets[s : s + rows]
        if recompute:
            lp, ent = checkpoint(_piece, to_logits, x, t, with_entropy, use_reentrant=False)
        else:
            lp, ent = _piece(to_logits, x, t, with_entropy)
        logps.append(lp)
        entropy.append(ent)
    logps = logps[0] if len(logps) == 1 else torch.cat(logps)
    return logps, (torch.cat(entropy) if with_entropy else None)


def _scatter(mask: torch.Tensor, logps: torch.Tensor, entropy: torch.Tensor | None) -> SequenceLogps:
    """Per-token values (M,) at the True entries of ``mask`` (..., T) back into SequenceLogps (0 elsewhere)."""
    token_logps = logps.new_zeros(mask.shape).masked_scatter(mask, logps)  # differentiable in logps
    mean_entropy = None
    if entropy is not None:
        per_token = entropy.new_zeros(mask.shape).masked_scatter(mask, entropy)
        mean_entropy = per_token.sum(-1) / mask.sum(-1).clamp(min=1)
    return SequenceLogps(summed=token_logps.sum(-1), token_logps=token_logps, mask=mask, entropy=mean_entropy)


# The run-time check of final_hidden, done once per model: heads that post-process their logits take the
# full-logits path; heads that passed are not checked again.
_NOT_PLAIN_HEAD: weakref.WeakSet = weakref.WeakSet()
_PLAIN_HEAD: weakref.WeakSet = weakref.WeakSet()


def _lean_head(core):
    """``core``'s output-embedding layer where the lean path may be tried (`final_hidden`), else None: no such layer,
    a model that failed the run-time check, or a config that says the logits are post-processed."""
    get_head = getattr(core, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None or core in _NOT_PLAIN_HEAD:
        return None
    if core not in _PLAIN_HEAD:  # a model that passed is not asked again (transformers reads config in Python)
        config = getattr(core, "config", None)
        if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (
            None,
            1,
            1.0,
        ):
            return None
    return head


class _HeadTap:
    """A forward pre-hook for the output-embedding layer: while ``on``, it keeps the layer's input and lets the model
    project its last position only; otherwise it leaves the call alone."""

    def __init__(self) -> None:
        self.on = False
        self.hidden = None

    def __call__(self, module, args):
        if not self.on:
            return None
        self.hidden = args[0]
        return (args[0][..., -1:, :], *args[1:])


# Models inside `lean_head`: model -> (core, head, tap, sharded).
_TAPPED: dict = {}


@contextlib.contextmanager
def lean_head(model):
    """Within the block, `final_hidden` (hence every log-prob function here) finds ``model``'s head hooked once, instead
    of adding and removing a hook on it at every call, and knows whether it is sharded. For a training loop: that
    per-call work ran between a step's backward and the next forward, where such code runs several times slower
    (cold caches; benchmarks/bench_step_parts.py). The head must stay the same object within the block."""
    core = getattr(model, "module", model)
    head = _lean_head(core)
    if head is None or model in _TAPPED:  # no lean path to speed up, or already inside a block for this model
        yield
        return
    tap = _HeadTap()
    handle = head.register_forward_pre_hook(tap)
    _TAPPED[model] = (core, head, tap, _is_sharded(core, head))
    try:
        yield
    finally:
        del _TAPPED[model]
        handle.remove()


def final_hidden(model, **inputs):
    """Run ``model(**inputs)`` without its full-vocabulary logits: ``(hidden, head, vocab), None``.

    hidden (N, L, H) is what the output-embedding layer ``head`` would project to logits (N, L, V). A forward
    pre-hook on ``head`` keeps that input and lets the model project its last position only, which checks at
    run time that head(hidden) is the model's logits (a model that soft-caps or scales them after the head
    fails the check; the check runs once per model). Models without ``get_output_embeddings``, or failing the
    check, return ``None, logits`` (the model's own full logits). The model is called through any wrapper
    (DDP), so its hooks run as in a plain forward (except on the base-model path below, taken only by a model with no
    hook on itself); the head is then applied to chunks outside that forward. Inside `lean_head` the hook is the
    block's; else one is added for this call.

    A plain transformers model (no wrapper, no hook on it) whose forward was seen to be ``head(base_model(inputs))``
    (`_BaseCall`; per input names, training mode and grad mode) is run as its base model alone after that first call
    (`_direct`): no head call, no output object of its own.
    No KV cache is built where the model's config would build one (``use_cache=False``): nothing reads it here.
    """
    inputs = _without_cache(getattr(model, "module", model), inputs)
    direct = _direct(model, inputs)
    if direct is not None:
        base, head, vocab = direct
        return (base(**inputs)[0], head, vocab), None
    tapped = _TAPPED.get(model)
    if tapped is not None:
        core, head, tap, sharded = tapped
        if core in _NOT_PLAIN_HEAD:  # failed the check inside the block
            return None, model(**inputs).logits
    else:
        core = getattr(model, "module", model)  # DDP / accelerate wrappers
        head = _lean_head(core)
        if head is None:
            return None, model(**inputs).logits
        tap, sharded = _HeadTap(), None
    handle = head.register_forward_pre_hook(tap) if tapped is None else None
    seen = _BaseCall.watch(model, inputs)  # None unless the model may take the direct path
    tap.on = True
    try:
        last_logits = model(**inputs).logits  # (N, 1, V)
    finally:  # (also when the forward raises: a block's tap then keeps no activation)
        tap.on = False
        hidden, tap.hidden = tap.hidden, None
        if handle is not None:
            handle.remove()
        if seen is not None:
            seen.stop()
    plain = hidden is not None and hidden.dim() == 3 and last_logits.dim() == 3 and last_logits.shape[1] == 1
    if plain and core not in _PLAIN_HEAD:
        with torch.no_grad():  # same projection, maybe outside the model's autocast: compare loosely
            mine, theirs = head(hidden[:, -1:]).float(), last_logits.float()
            plain = mine.shape == theirs.shape and torch.allclose(
                mine, theirs, rtol=2e-2, atol=2e-2 * (1.0 + float(theirs.abs().max())) if theirs.numel() else 0.0
            )
        if plain:
            _PLAIN_HEAD.add(core)
    if not plain:
        _NOT_PLAIN_HEAD.add(core)
        return None, model(**inputs).logits
    training = torch.is_grad_enabled() and last_logits.requires_grad
    vocab = int(last_logits.shape[-1])
    sharded = _is_sharded(core, head) if sharded is None and (training or seen is not None) else sharded
    if seen is not None and not sharded and seen.fed_head(hidden):
        vars(model).setdefault(_DIRECT, {})[_path_key(model, inputs)] = (seen.base, head, vocab)
    if training and sharded:
        # FSDP2 hooks the model's output (its pre-backward: the root's and the head unit's); the loss does not use
        # those last-position logits, so route a zero gradient to them (without it the backward read freed
        # parameter memory: SIGSEGV, torch 2.13 CPU/gloo). DeepSpeed ZeRO-3 likewise expects the backward of every
        # module whose forward ran.
        hidden = _AlsoBackward.apply(hidden, last_logits)
    return (hidden, head, vocab), None


def _without_cache(core, inputs: dict) -> dict:
    """``inputs`` with ``use_cache=False`` where ``core``'s config would otherwise build a KV cache (transformers'
    causal LMs do by default, in training mode too) and its forward takes the argument: a scoring or training forward
    never reads the cache, and building it cost ~7% of the toy model's forward (one ad-hoc measurement; TRL's DPO
    forwards pass use_cache=False too)."""
    if "use_cache" in inputs or not getattr(getattr(core, "config", None), "use_cache", False):
        return inputs
    return {**inputs, "use_cache": False} if _takes_use_cache(type(core)) else inputs


@functools.cache
def _takes_use_cache(cls) -> bool:
    """Whether ``cls.forward`` takes ``use_cache`` (by name, or through ``**kwargs``): a remote-code model may not."""
    try:
        params = inspect.signature(cls.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "use_cache" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


# What a model seen to compute head(base_model(inputs)) (`_BaseCall`) keeps, under this attribute: {(input names,
# training mode, grad mode): (base model, head, vocab)}. Per mode, because a forward may differ between them (dropout
# or a detach between its base model and its head). Kept on the model itself, so a deep copy (the same class and
# state: the same forward) keeps it too, pointing at its own base model and head (deepcopy maps the submodules it
# copies).
_DIRECT = "_tspin_kit_base_model_path"


def base_model_path(model) -> dict:
    """{(input names, training, grad enabled): (base model, head, vocab)} for which ``model`` was seen to compute
    head(base_model(inputs))."""
    return vars(model).get(_DIRECT, {})


def _path_key(model, inputs: dict) -> tuple:
    return frozenset(inputs), model.training, torch.is_grad_enabled()


def _unwrapped(model) -> bool:
    """Whether calling ``model``'s submodules directly skips nothing: a transformers model called as itself, with no
    hook on its own forward or backward (FSDP2's root hooks, accelerate's device-map hook, a user's), no global module
    hook, no replaced forward and no ``model.compile()``."""
    from torch.nn.modules import module as nn_module
    from transformers import PreTrainedModel

    return (
        isinstance(model, PreTrainedModel)
        and not (model._forward_pre_hooks or model._forward_hooks or model._backward_hooks or model._backward_pre_hooks)
        and not (nn_module._global_forward_pre_hooks or nn_module._global_forward_hooks)
        and not (nn_module._global_backward_pre_hooks or nn_module._global_backward_hooks)
        and "forward" not in vars(model)
        and getattr(model, "_compiled_call_impl", None) is None
        and not hasattr(model, "_hf_hook")
    )


def _direct(model, inputs: dict):
    """(base model, head, vocab) when ``model`` was seen to compute head(base_model(inputs)) for inputs of these names
    in this training and grad mode, and still holds that base model and head (``resize_token_embeddings`` or PEFT's
    ``modules_to_save`` install another head) and is still unwrapped (`_unwrapped`: FSDP2 may shard a model after
    it was seen), all checked at every call; else None (and what was seen with another head or base is dropped)."""
    seen = vars(model).get(_DIRECT)
    if seen is None:
        return None
    key = _path_key(model, inputs)
    found = seen.get(key)
    if found is None:
        return None
    if found[0] is not model.base_model or found[1] is not model.get_output_embeddings():
        del seen[key]  # watched again on this call
        return None
    return found if _unwrapped(model) else None


class _BaseCall:
    """Watches one forward of a transformers model (`final_hidden`'s first call in a training and grad mode) to decide
    whether it is head(base_model(inputs)): its base model (``base_model_prefix``) called once, with every one of
    ``inputs`` passed on as the very same objects and nothing else but None, and its output the very tensor (same
    storage, shape and strides, not modified in place since, not detached) that the head's pre-hook saw. Then
    running the base model alone gives the hidden states the head would get, without the model's head call and output
    object. A run-time check of what this forward did (Python may branch differently on other inputs of the same
    names and modes; transformers' causal LMs do not)."""

    def __init__(self, base, inputs: dict):
        self.base, self.inputs, self.calls, self.out = base, inputs, [], None
        self.handles = [
            base.register_forward_pre_hook(self._before, with_kwargs=True),
            base.register_forward_hook(self._after),
        ]

    @classmethod
    def watch(cls, model, inputs: dict):
        if not _unwrapped(model) or _path_key(model, inputs) in base_model_path(model):
            return None
        base = getattr(model, "base_model", None)
        if not isinstance(base, torch.nn.Module) or base is model:
            return None
        return cls(base, inputs)

    def _before(self, module, args, kwargs):
        self.calls.append((args, dict(kwargs)))

    def _after(self, module, args, out):
        first = out[0] if isinstance(out, (tuple, list)) or hasattr(out, "to_tuple") else out
        self.out = first if isinstance(first, torch.Tensor) else None
        self.version = self.out._version if self.out is not None else None  # (views share it: an in-place op moves it)

    def stop(self) -> None:
        for handle in self.handles:
            handle.remove()

    def fed_head(self, hidden: torch.Tensor) -> bool:
        if len(self.calls) != 1 or self.out is None:
            return False
        args, kwargs = self.calls[0]
        passed_on = all(kwargs.get(name) is value for name, value in self.inputs.items())
        nothing_else = all(value is None for name, value in kwargs.items() if name not in self.inputs)
        out = self.out
        same = hidden.data_ptr() == out.data_ptr() and hidden.shape == out.shape and hidden.stride() == out.stride()
        # untouched since the base model returned it (no in-place op), and not detached from it
        untouched = hidden._version == self.version and hidden.requires_grad == out.requires_grad
        return not args and passed_on and nothing_else and same and untouched


def _is_sharded(module, head) -> bool:
    """Whether ``module`` is trained sharded: FSDP2, or DeepSpeed ZeRO-3 (`_zero3_partitioned`)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule) or _zero3_partitioned(head)


def _zero3_partitioned(head) -> bool:
    """Whether ``head``'s weight is partitioned by DeepSpeed ZeRO-3 (such parameters carry a ``ds_id``)."""
    return hasattr(getattr(head, "weight", None), "ds_id")


class _AlsoBackward(torch.autograd.Function):
    """Identity on ``x`` whose backward also hands ``other`` a zero gradient, so hooks on ``other`` run."""

    @staticmethod
    def forward(ctx, x, other):
        ctx.other = (other.shape, other.dtype)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        shape, dtype = ctx.other
        return grad, grad.new_zeros(shape, dtype=dtype)


def _model_token_logps(model, rows, pos, targets, *, with_entropy, chunk_elements=None, flat=None, **inputs):
    """Per-token log-probs (M,) of ``targets`` predicted at (rows, pos) of ``model(**inputs)``, lean when possible.
    ``flat``: ``rows * L + pos`` (L the inputs' length) where the caller has it already."""
    lean, logits = final_hidden(model, **inputs)
    if lean is None:
        return _full_logits_logps(logits, rows, pos, targets, with_entropy, chunk_elements)
    hidden, head, vocab = lean
    # only the response positions' hidden states go through the head: (M, H), gathered once. On CPU by index_select
    # on the flattened (N * L, H) view: the same rows, but its backward is an index_add where advanced indexing's
    # is an accumulating index_put (about 0.25 ms more per toy training step, benchmarks/). Not on a GPU: there
    # index_add adds repeated positions (the prompt's last one is read by every role) with atomics, so gradients
    # would change from run to run (seen on an H200); the accumulating index_put is deterministic.
    if hidden.device.type == "cpu":
        index = flat if flat is not None else rows * hidden.shape[1] + pos
        states = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
    else:
        states = hidden[rows, pos]
    return _token_logps(
        head,
        states,
        targets,
        vocab,
        with_entropy=with_entropy,
        chunk_elements=chunk_elements,
        one_piece=_zero3_partitioned(head),  # DeepSpeed training: see _token_logps
    )


@dataclass
class Batch:
    input_ids: torch.Tensor  # (N, T) right-padded
    attention_mask: torch.Tensor  # (N, T) 1 on real tokens
    loss_mask: torch.Tensor  # (N, T) 1 on response tokens

    def to(self, device) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device))


def collate(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> Batch:
    """Right-padded prompt+response rows; loss only on response tokens.

    Training pads on the right (positions stay 0..len-1 for every row); generation pads on the left.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"collate: {len(prompts)} prompts but {len(responses)} responses")
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    # Build padded Python rows and convert once: one tensor per batch, not one per row (a hot path).
    ids, attn, loss = [], [], []
    for p, r in zip(prompts, responses):
        pad = width - len(p) - len(r)
        ids.append(p + r + [pad_id] * pad)
        attn.append([1] * (len(p) + len(r)) + [0] * pad)
        loss.append([0] * len(p) + [1] * len(r) + [0] * pad)
    as_long = lambda rows: torch.tensor(rows, dtype=torch.long)  # noqa: E731
    return Batch(as_long(ids), as_long(attn), as_long(loss))


def collate_triplets(prompts, annotated, synthetic, proto, pad_id: int) -> Batch:
    """Rows [y_0..y_{B-1}; y'_0..y'_{B-1}; y0_0..y0_{B-1}]: the layout every T-SPIN step uses.

    Split the model's summed log-probs back with ``.chunk(3)`` -> (annotated, synthetic, proto).
    """
    return collate(prompts * 3, annotated + synthetic + proto, pad_id)


def collate_pairs(prompts, annotated, synthetic, pad_id: int) -> Batch:
    """Rows [y; y'] for SPIN; split with ``.chunk(2)``."""
    return collate(prompts * 2, annotated + synthetic, pad_id)


def model_logps(model, batch: Batch, *, with_entropy: bool = False) -> SequenceLogps:
    """:func:`sequence_logps` of the model on ``batch``, without materialising its full logits."""
    mask = batch.loss_mask[:, 1:].bool()  # (N, T-1) the next-token shift, as in sequence_logps
    rows, pos = mask.nonzero(as_tuple=True)
    targets = batch.input_ids[:, 1:][mask]
    return _scatter(
        mask,
        *_model_token_logps(
            model,
            rows,
            pos,
            targets,
            with_entropy=with_entropy,
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
        ),
    )


def rows_logps(
    model, prompts: list[list[int]], responses: list[list[int]], pad_id: int, *, share_prompt: bool | None = None
) -> torch.Tensor:
    """Summed log-probs (N,) of every (prompt, response) row, each distinct row computed once.

    On verifiable tasks most rows repeat (y' == y for 50-70% of prompts, y0 == y as often): a repeated
    row gets the same log-prob anyway, so it is forwarded once and indexed back; autograd sums the
    gradients of its copies, which is exactly what the full batch would give. With ``share_prompt``
    (default: whenever the model takes a 4D mask, :func:`supports_packing`) the rows of one prompt are
    packed into one sequence, so y, y' and y0 forward their shared x once (:func:`pack_rows`).
    """
    device = next(model.parameters()).device
    if share_prompt is None:
        share_prompt = supports_packing(model, lambda: longest_row(prompts, responses))
    if share_prompt:
        return packed_logps(model, pack_rows(prompts, responses, pad_id).to(device)).summed
    keys = [(tuple(p), tuple(r)) for p, r in zip(prompts, responses)]
    first: dict = {}
    inverse = [first.setdefault(k, len(first)) for k in keys]
    if len(first) == len(keys):
        unique_p, unique_r = prompts, responses
    else:
        unique_p = [list(k[0]) for k in first]
        unique_r = [list(k[1]) for k in first]
    summed = model_logps(model, collate(unique_p, unique_r, pad_id).to(device)).summed
    if len(first) == len(keys):
        return summed
    return summed[torch.tensor(inverse, device=device)]


# ----------------------------------------------------------------------------- shared prompt (packing)


@dataclass
class PackedRows:
    """Rows (prompt, response) packed so that each distinct prompt is forwarded once.

    One packed sequence per distinct prompt: ``x, r_1, r_2, ...`` with every distinct response r_j of that
    prompt as a branch. A 4D mask lets a branch see the prompt and its own earlier tokens only, and its
    positions restart at len(x), so each branch computes exactly what the separate row ``[x; r_j]`` would.
    Repeated rows (y' == y, ...) become one branch; ``inverse`` maps every input row to its branch.
    """

    input_ids: torch.Tensor  # (P, L) packed sequences, right-padded with pad_id
    position_ids: torch.Tensor  # (P, L) prompt 0..n-1, each branch n..n+m-1, padding 0
    segments: torch.Tensor  # (P, L) 0 = prompt, j = branch j, -1 = padding
    row_pack: torch.Tensor  # (R,) packed sequence of each distinct row
    src: torch.Tensor  # (R, T) position in the pack whose logits predict the row's token t
    targets: torch.Tensor  # (R, T) the row's response tokens
    mask: torch.Tensor  # (R, T) True on real response tokens
    inverse: torch.Tensor  # (N,) distinct row of every input row

    @property
    def num_distinct(self) -> int:
        return int(self.row_pack.shape[0])

    def to(self, device) -> PackedRows:
        return PackedRows(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def attention_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """(P, 1, L, L) additive mask: 0 where query i may attend to key j, the dtype's minimum elsewhere.

        i sees j when j <= i and j is in the prompt or in i's own branch; padding sees padding only (so no
        row of the softmax is empty). A finite minimum, not -inf, as transformers' own masks use.
        """
        seg = self.segments
        length = seg.shape[1]
        blocked = ~_allowed(seg, torch.ones(length, length, dtype=torch.bool, device=seg.device).tril())
        return _additive(blocked, dtype)


def _allowed(seg, causal):
    """(P, L, L) True where query i may attend to key j, from segments (P, L) (0 prompt, j branch j, -1 padding)
    and the (L, L) lower-triangular ``causal``; numpy arrays or torch tensors alike (the one rule of both)."""
    same = seg[:, :, None] == seg[:, None, :]  # (P, L, L) query i, key j in one segment
    prompt_key = (seg == 0)[:, None, :] & (seg >= 0)[:, :, None]  # a real query seeing a prompt key
    return causal & (same | prompt_key)


def _additive(blocked: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(P, 1, L, L) additive mask: the dtype's minimum where ``blocked``, 0 elsewhere."""
    out = torch.zeros(blocked.shape, dtype=dtype, device=blocked.device)
    return out.masked_fill_(blocked, torch.finfo(dtype).min).unsqueeze(1)


def pack_rows(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> PackedRows:
    """Pack (prompt, response) rows: each distinct row once, each distinct prompt once (see PackedRows).

    A hot path (every training step): plain lists, one tensor per field at the end.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"pack_rows: {len(prompts)} prompts but {len(responses)} responses")
    groups: dict = {}  # prompt -> {response: distinct row index}
    inverse = []
    n_rows = 0
    for p, r in zip(map(tuple, prompts), map(tuple, responses)):
        branches = groups.get(p)
        if branches is None:
            branches = groups[p] = {}
        j = branches.get(r)
        if j is None:
            j = branches[r] = n_rows
            n_rows += 1
        inverse.append(j)
    longest = max((len(r) for b in groups.values() for r in b), default=1) or 1
    width = max((len(p) + sum(map(len, b)) for p, b in groups.items()), default=1)
    ids, pos, seg = [], [], []
    row_pack, src, targets, mask = [0] * n_rows, [None] * n_rows, [None] * n_rows, [None] * n_rows
    for g, (p, branches) in enumerate(groups.items()):
        n = len(p)
        row_ids, row_pos, row_seg = list(p), list(range(n)), [0] * n
        for b, (r, j) in enumerate(branches.items(), 1):
            start, m = len(row_ids), len(r)
            fill = longest - m
            # token t of the branch is predicted by the logits at the previous token: the prompt's last for t = 0
            # (the next-token shift, as in sequence_logps); with an empty prompt the first token is not scored
            row_pack[j] = g
            src[j] = [max(n - 1, 0), *range(start, start + m - 1)][:m] + [0] * fill
            targets[j] = [*r, *([pad_id] * fill)]
            mask[j] = [n > 0] + [True] * (m - 1) + [False] * fill if m else [False] * longest
            row_ids += r
            row_pos += range(n, n + m)
            row_seg += [b] * m
        pad = width - len(row_ids)
        ids.append(row_ids + [pad_id] * pad)
        pos.append(row_pos + [0] * pad)
        seg.append(row_seg + [-1] * pad)
    # through numpy: about 3x faster than torch.tensor on nested lists
    as_long = lambda rows: torch.from_numpy(np.array(rows, dtype=np.int64))  # noqa: E731
    return PackedRows(
        as_long(ids),
        as_long(pos),
        as_long(seg),
        as_long(row_pack),
        as_long(src),
        as_long(targets),
        torch.from_numpy(np.array(mask, dtype=bool)),
        as_long(inverse),
    )


def supports_packing(model, longest: int | Callable[[], int] | None = None) -> bool:
    """Whether the model honours a custom 4D attention mask and position ids (transformers' eager and sdpa
    attention do; flash-attention kernels take no arbitrary mask, so such models use the padded rows).

    Sliding-window attention (Mistral, Qwen2 with ``use_sliding_window``, Gemma's local layers): a custom 4D mask
    replaces the model's own, window included, so packed rows would see keys the window hides. Rows no longer
    than the window see the same keys either way, so packing stays on when ``longest`` (the longest prompt +
    response of the rows, in tokens) fits; otherwise, or when ``longest`` is unknown, the padded rows are used
    and the model applies its window itself. ``longest`` may be a function that measures it (`longest_row` over
    every row: a pass over all of them), called only for a model with a window.
    """
    config = getattr(getattr(model, "module", model), "config", None)
    if getattr(config, "_attn_implementation", None) not in ("eager", "sdpa"):
        return False
    window = sliding_window(config)
    if window is None:
        return True
    if callable(longest):
        longest = longest()
    return longest is not None and longest <= window


def sliding_window(config) -> int | None:
    """The attention window of a model config, or None where every layer attends to the whole sequence."""
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    return int(window)


def longest_row(prompts: list[list[int]], responses: list[list[int]]) -> int:
    return max((len(p) + len(r) for p, r in zip(prompts, responses)), default=0)


def packed_logps(model, packed: PackedRows, *, with_entropy: bool = False) -> SequenceLogps:
    """:class:`SequenceLogps` of every input row of ``packed`` (one forward over the packed sequences).

    ``token_logps``/``mask`` are (N, T) over response tokens only (not over prompt + response as in
    :func:`sequence_logps`); ``summed`` and ``entropy`` mean the same. Rows that repeat share one branch:
    indexing them back makes autograd add their gradients, as the full batch would.
    """
    mask4d = packed.attention_mask(model_placement(model)[1])
    rows = packed.row_pack[:, None].expand_as(packed.src)[packed.mask]  # (M,) pack of each response token
    pos = packed.src[packed.mask]  # (M,) position whose logits predict it
    out = _scatter(
        packed.mask,
        *_model_token_logps(
            model,
            rows,
            pos,
            packed.targets[packed.mask],
            with_entropy=with_entropy,
            input_ids=packed.input_ids,
            attention_mask=mask4d,
            position_ids=packed.position_ids,
        ),
    )
    inv = packed.inverse
    return SequenceLogps(
        summed=out.summed[inv],
        token_logps=out.token_logps[inv],
        mask=packed.mask[inv],
        entropy=None if out.entropy is None else out.entropy[inv],
    )


class PackedExamples:
    """Every example of a training iteration packed once: ``x, y, y', y0`` as one sequence per example.

    The same layout as :func:`pack_rows`, but built once per iteration (the rows of an example do not change
    within it), so a training step only indexes tensors: no per-step Python work over rows. Within an
    example, responses that repeat (y' == y, y0 == y) are one branch, their roles pointing at the same
    positions (so their gradients add up, as in the full batch).
    """

    def __init__(self, prompts: list[list[int]], roles: list[list[list[int]]], pad_id: int):
        # Python walks the examples once to find each one's distinct responses (its branches) and to lay its tokens
        # end to end; every per-token and per-role array is then built by numpy in one pass. (Built per training
        # iteration: the per-example numpy writes it replaced were ~1 ms of a 64-example toy iteration.)
        n, k = len(prompts), len(roles)
        flat: list[int] = []  # every example's tokens, example after example: prompt, then its branches
        seg_lens: list[int] = []  # segment lengths in the same order: each example's prompt, then its branches
        seg_count = np.zeros(n, dtype=np.int64)  # segments per example (1 + its branches)
        branch = np.zeros((n, k), dtype=np.int64)  # the segment (1 = first branch) role k of example i reads
        for i, p in enumerate(prompts):
            flat += p
            seg_lens.append(len(p))
            seen: list = []
            for role, rows in enumerate(roles):
                r = tuple(rows[i])  # lists, tuples or arrays of token ids alike
                for j, other in enumerate(seen):
                    if other == r:  # a repeated response reads the branch of its first occurrence
                        branch[i, role] = j + 1
                        break
                else:
                    seen.append(r)
                    flat += r
                    seg_lens.append(len(r))
                    branch[i, role] = len(seen)
            seg_count[i] = 1 + len(seen)
        lens = np.asarray(seg_lens, dtype=np.int64)
        seg_ex = np.repeat(np.arange(n), seg_count)  # example of each segment
        seg_first = np.cumsum(seg_count) - seg_count  # index of each example's prompt segment
        seg_index = np.arange(len(lens)) - seg_first[seg_ex]  # 0 for a prompt, j for branch j
        lengths = np.bincount(seg_ex, weights=lens, minlength=n).astype(np.int64)  # tokens per example
        width = max(int(lengths.max(initial=0)), 1)
        seg_start = np.cumsum(lens) - lens  # each segment's first token in ``flat``
        ex_start = seg_start[seg_first] if n else seg_start[:0]  # each example's first token in ``flat``
        col_of_seg = seg_start - ex_start[seg_ex]  # each segment's first column in its example's row
        tok_seg = np.repeat(np.arange(len(lens)), lens)  # segment of each token of ``flat``
        tok_ex = seg_ex[tok_seg]
        tok_col = np.arange(len(flat)) - ex_start[tok_ex]
        m0 = lens[seg_first] if n else lens[:0]  # prompt lengths
        ids = np.full((n, width), pad_id, dtype=np.int64)
        ids[tok_ex, tok_col] = flat
        pos = np.zeros((n, width), dtype=np.int64)  # a branch's positions continue after the prompt
        pos[tok_ex, tok_col] = tok_col - col_of_seg[tok_seg] + np.where(seg_index[tok_seg] > 0, m0[tok_ex], 0)
        seg = np.full((n, width), -1, dtype=np.int64)
        seg[tok_ex, tok_col] = seg_index[tok_seg]
        # per role: its branch's first column and length; token t is predicted at the position before it (the
        # prompt's last for t = 0)
        role_seg = seg_first[:, None] + branch  # (n, k) the segment each role reads
        start, m = col_of_seg[role_seg], lens[role_seg]  # (n, k)
        longest = max(int(m.max(initial=0)), 1)
        t = np.arange(longest)
        mask = t < m[:, :, None]  # (n, k, T)
        src = np.where(t == 0, np.maximum(m0 - 1, 0)[:, None, None], start[:, :, None] + t - 1)
        src = np.where(mask, src, 0)
        cols = np.where(mask, start[:, :, None] + t, 0)
        targets = np.where(
            mask, np.take_along_axis(ids, cols.reshape(n, k * longest), axis=1).reshape(mask.shape), pad_id
        )
        mask[:, :, 0] &= (m0 > 0)[:, None]
        self.input_ids = torch.from_numpy(ids)  # (N, W)
        self.position_ids = torch.from_numpy(pos)  # (N, W)
        self.segments = torch.from_numpy(seg)  # (N, W) 0 prompt, j branch, -1 padding
        self.lengths = torch.from_numpy(lengths)  # (N,)
        self.src = torch.from_numpy(src)  # (N, K, T) position of the logits that predict token t of role k
        self.targets = torch.from_numpy(targets)  # (N, K, T)
        self.mask = torch.from_numpy(mask)  # (N, K, T)
        self.token_counts = torch.from_numpy(m.astype(np.float32))  # (N, K)
        self.num_roles = k
        # numpy views of the same memory, for the per-step cutting in `logps`
        self._input_ids, self._position_ids, self._segments, self._lengths = (
            x.numpy() for x in (self.input_ids, self.position_ids, self.segments, self.lengths)
        )
        self._src, self._targets, self._mask = src, targets, mask
        self._masks: dict = {}  # dtype -> (N, 1, W, W) additive masks of every example (small iterations only)

    def keep_masks(self, dtype: torch.dtype) -> torch.Tensor | None:
        """Every example's (N, 1, W, W) additive CPU mask in ``dtype``, built on the first call, or None where the
        iteration is too large to keep them (N x W x W > ``MASK_CACHE_ELEMENTS``). Never written after it is built.
        `train_iteration` calls it before its first step: built inside the first step it cost ~4x more (one ad-hoc
        measurement on the toy iteration: ~470 us there, 109 us before it; cold caches)."""
        n, full_width = self._segments.shape
        if n * full_width * full_width > MASK_CACHE_ELEMENTS:
            return None
        masks = self._masks.get(dtype)
        if masks is None:  # every example's mask at the iteration's width; a step's is its top-left corner
            masks = self._masks[dtype] = _additive(
                torch.from_numpy(~_allowed(self._segments, np.tri(full_width, dtype=bool))), dtype
            )  # a torch tensor, not numpy: numpy has no bfloat16
        return masks

    def _cpu_mask(self, t: np.ndarray, width: int, dtype: torch.dtype) -> torch.Tensor:
        """The step's (B, 1, W, W) additive mask for examples ``t``, a new tensor every step.

        Small iterations (N x W x W <= ``MASK_CACHE_ELEMENTS``, e.g. the toy world's) build every example's mask once
        and a step takes its rows with one copy: building it from the segments took about 1% of a toy training step
        (benchmarks/bench_train_step.py). Larger ones build it per step. The mask itself is never reused: the
        forward's graph keeps it (SDPA's backward reads it, a checkpointed layer recomputes its forward with it), and
        a reused buffer would hand a later recompute another step's mask without any error (a reviewer's reproducer
        with gradient checkpointing).
        """
        full_width = self._segments.shape[1]
        masks = self.keep_masks(dtype)
        if masks is not None:
            rows = torch.from_numpy(t)
            if width == full_width:  # index_select copies whole rows (~4x faster than advanced indexing here)
                return masks.index_select(0, rows)
            return masks[rows, :, :width, :width]  # advanced indexing: a fresh, contiguous copy
        seg = self._segments[t, :width]
        return _additive(torch.from_numpy(~_allowed(seg, np.tri(width, dtype=bool))), dtype)

    def cut(self, idx: list[int], device: torch.device, mask_dtype: torch.dtype | None = None) -> StepCut:
        """The index tensors of a step over examples ``idx``, cut from the iteration's arrays (no per-row Python).

        ``mask_dtype`` (CPU): the step's additive mask is made too (`_cpu_mask`: a new tensor, used by this step only);
        else `logps` makes it. A training loop cuts several steps at once (`cuts`).
        """
        return self.cuts([idx], device, mask_dtype)[0]

    def cuts(
        self, steps: list[list[int]], device: torch.device, mask_dtype: torch.dtype | None = None
    ) -> list[StepCut]:
        """`cut` of each of several steps (each a non-empty list of examples), with one numpy pass over all of them.

        A training loop cuts a window of steps ahead, in one tight loop (`training.window_inputs`): the same work cost
        ~5x more between a step's backward and the next forward (cold caches; one ad-hoc measurement: 243 vs 51 us
        for a toy step; benchmarks/bench_step_parts.py times the variants), and one pass over the window's examples
        ~30% less than a pass per step (hot; 363 vs 255 us for ten toy steps, an ad-hoc measurement).
        """
        sizes = [len(s) for s in steps]
        off = np.zeros(len(steps) + 1, dtype=np.int64)
        np.cumsum(sizes, out=off[1:])
        t_all = np.fromiter(itertools.chain.from_iterable(steps), dtype=np.int64, count=int(off[-1]))
        lengths = self._lengths[t_all]
        token_mask = self._mask[t_all]  # (sum B, K, T)
        b, k, pos = np.nonzero(token_mask)  # row-major: each example's roles' tokens in order, step after step
        tb = t_all[b]
        src, targets = self._src[tb, k, pos], self._targets[tb, k, pos]
        bounds = np.searchsorted(b, off).tolist()  # each step's first token
        ids, positions = self._input_ids[t_all], self._position_ids[t_all]
        cpu = device.type == "cpu"
        out = []
        for i, (o, e) in enumerate(zip(off[:-1].tolist(), off[1:].tolist())):
            lo, hi = bounds[i], bounds[i + 1]
            t = t_all[o:e]
            width = int(lengths[o:e].max())
            rows, s = b[lo:hi] - o, src[lo:hi]
            out.append(
                StepCut(
                    t=t,
                    width=width,
                    rows=torch.from_numpy(rows).to(device),
                    src=torch.from_numpy(s).to(device),
                    targets=torch.from_numpy(targets[lo:hi]).to(device),
                    flat=torch.from_numpy(rows * width + s) if cpu else None,  # (row, position) in (B * W,)
                    input_ids=torch.from_numpy(np.ascontiguousarray(ids[o:e, :width])).to(device),
                    position_ids=torch.from_numpy(np.ascontiguousarray(positions[o:e, :width])).to(device),
                    token_mask=torch.from_numpy(token_mask[o:e]).to(device),
                    mask=self._cpu_mask(t, width, mask_dtype) if cpu and mask_dtype is not None else None,
                )
            )
        return out

    def step_mask_elements(self, examples: int) -> int:
        """The entries of a step's (B, 1, W, W) mask for ``examples`` examples at the iteration's width (an upper
        bound: a step's width is its longest example)."""
        return examples * self._segments.shape[1] ** 2

    def logps(
        self,
        model,
        idx: list[int],
        *,
        placement: tuple[torch.device, torch.dtype] | None = None,
        cut: StepCut | None = None,
    ) -> torch.Tensor:
        """Summed log-probs (B, K) of the roles of examples ``idx``: one forward over their packed sequences.

        The step's indices (and, on CPU, the mask) are cut from the iteration's arrays in numpy (views of the same
        memory): a few dozen small torch ops per step were a measurable share of a small model's step (benchmarks/).
        ``placement``: the model's (device, floating dtype), when the caller already knows them (`model_placement`);
        ``cut``: this step's `cut` of ``idx``, made ahead by the caller.
        """
        device, dtype = placement or model_placement(model)
        if cut is None or (cut.t is not idx and not np.array_equal(cut.t, idx)):  # a cut of other examples: unused
            cut = self.cut(idx, device)
        if cut.mask is not None and cut.mask.dtype == dtype:
            mask4d = cut.mask  # made with the cut
        elif device.type == "cpu":
            mask4d = self._cpu_mask(cut.t, cut.width, dtype)
        else:  # on an accelerator the (B, W, W) mask is built there, from the (B, W) segments
            seg = torch.from_numpy(self._segments[cut.t, : cut.width]).to(device)
            ones = torch.ones(cut.width, cut.width, dtype=torch.bool, device=device)
            mask4d = _additive(~_allowed(seg, ones.tril()), dtype)
        logps, _ = _model_token_logps(
            model,
            cut.rows,
            cut.src,
            cut.targets,
            with_entropy=False,
            flat=cut.flat,
            input_ids=cut.input_ids,
            attention_mask=mask4d,
            position_ids=cut.position_ids,
        )
        # a dense (B, K, T) scatter and a sum: an index_add into (B, K) was ~25 us a step faster on CPU but adds in
        # another order (log-probs moved by float32 rounding, 2e-6, past the golden records' tolerance), and on a
        # GPU adds with atomics (the rounding changes run to run)
        return logps.new_zeros(cut.token_mask.shape).masked_scatter(cut.token_mask, logps).sum(-1)  # (B, K)


@dataclass
class StepCut:
    """A training step's index tensors over examples ``t`` of a `PackedExamples` (`PackedExamples.cut`)."""

    t: np.ndarray  # the step's examples, in its row order
    width: int  # the step's packed width: its longest example
    rows: torch.Tensor  # (M,) the example (row of the step) of each response token
    src: torch.Tensor  # (M,) the position whose logits predict it
    targets: torch.Tensor  # (M,) the token
    flat: torch.Tensor | None  # (M,) rows * width + src, on CPU (the lean head's index_select)
    input_ids: torch.Tensor  # (B, width)
    position_ids: torch.Tensor  # (B, width)
    token_mask: torch.Tensor  # (B, K, T) True on each role's tokens
    mask: torch.Tensor | None = None  # (B, 1, width, width) the step's additive attention mask, where made ahead


def model_placement(model) -> tuple[torch.device, torch.dtype]:
    """The device of ``model``'s parameters and the floating dtype its inputs' masks take (float32 for a model
    without floating parameters)."""
    param = next(model.parameters())
    return param.device, (param.dtype if param.is_floating_point() else torch.float32)
