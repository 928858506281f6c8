"""Batched sampling and scoring, sharded across processes, independent of how many there are.

Prompts are cut into fixed chunks; chunk k is sampled under its own seed (run seed, iteration, phase, k)
and chunks are dealt round-robin to processes, then gathered in order. So one process and two
processes produce the same y' (tested), and a resumed run samples exactly what the killed one would have.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from .logprobs import collate, longest_row, model_logps, pack_rows, packed_logps, supports_packing
from .progress import bar as progress_bar

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None] | None


def derive_seed(*parts) -> int:
    """A stable 31-bit seed from any parts (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little") & 0x7FFFFFFF


def _dist():
    from accelerate import PartialState

    state = PartialState()
    return state.process_index, state.num_processes, state


def _sharded_map(n_items: int, chunk: int, fn, *, desc: str, progress: Progress):
    """Apply fn(start, stop, chunk_index) -> list over fixed chunks, sharded round-robin, gathered in order."""
    rank, world, state = _dist()
    starts = list(range(0, n_items, chunk))
    mine = [(k, s) for k, s in enumerate(starts) if k % world == rank]
    out = {}
    bar = progress_bar(n_items, desc, main=state.is_main_process)
    for done, (k, s) in enumerate(mine, 1):
        stop = min(s + chunk, n_items)
        out[k] = fn(s, stop, k)
        bar.update(stop - s)
        if progress is not None:
            progress(min(done * chunk * world, n_items), n_items, desc)
    bar.close()
    if world > 1:
        from accelerate.utils import gather_object

        merged = {}
        for part in gather_object([out]):
            merged.update(part)
        out = merged
    return [item for k in sorted(out) for item in out[k]]


@torch.no_grad()
def sample_responses(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    *,
    temperature: float,
    top_p: float,
    top_k: int,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    desc: str = "generate",
    progress: Progress = None,
    chunk_dir: str | Path | None = None,
) -> list[list[int]]:
    """One sampled response per prompt, as token ids without EOS or padding.

    Left padding + attention_mask so every row's next token sits in the last column; KV cache on;
    each row is cut at its first EOS and pads are stripped (a random-init model can emit <pad>).

    ``chunk_dir``: each finished chunk is saved there (``chunk_<k>.json``, written to a temporary file and renamed,
    by the process that sampled it), and a chunk already there is reused instead of sampled again, so sampling
    killed midway resumes at its first unfinished chunk with the same output: chunk k depends only on the model,
    its prompts, the sampling settings and ``derive_seed(seed, k)``. A saved chunk whose prompts, seed or settings
    differ is sampled again. The folder must belong to one model (one phase of one iteration); the caller deletes
    it once it has stored the whole output.
    """
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def run(start, stop, k):
        rows = prompt_ids[start:stop]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r)
            attn[i, width - len(r) :] = 1
        greedy = temperature == 0
        kwargs = dict(
            do_sample=not greedy,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
            use_cache=True,
        )
        if not greedy:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(derive_seed(seed, k))
            out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), **kwargs)
        new = out[:, width:].tolist()
        responses = []
        for row in new:
            if eos_id in row:
                row = row[: row.index(eos_id)]
            responses.append([t for t in row if t != pad_id])
        return responses

    def run_saved(start, stop, k):  # run(), or the chunk as a finished run() saved it in chunk_dir
        folder = Path(chunk_dir)
        key = {
            "seed": seed,
            "start": start,
            "stop": stop,
            "temperature": temperature,
            "top_p": top_p,
            "top_k": top_k,
            "max_new_tokens": max_new_tokens,
            "eos": eos_id,
            "pad": pad_id,
            "prompts": hashlib.sha256(repr(prompt_ids[start:stop]).encode()).hexdigest(),
        }
        path = folder / f"chunk_{k:06d}.json"
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return saved["responses"]
        except (OSError, ValueError, AttributeError):
            pass  # no such chunk yet, or unreadable: sample it
        responses = run(start, stop, k)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "responses": responses}))
        os.replace(tmp, path)
        return responses

    try:
        return _sharded_map(
            len(prompt_ids), batch_size, run if chunk_dir is None else run_saved, desc=desc, progress=progress
        )
    finally:
        model.train(was_training)


@torch.no_grad()
def score_responses(
    model,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    *,
    pad_id: int,
    batch_size: int = 256,
    desc: str = "score",
    progress: Progress = None,
) -> list[dict]:
    """Summed and per-token log pi(response | prompt) and the mean next-token entropy, per example.

    ``response_ids`` already end with EOS where the response is finished. Each distinct (prompt, response)
    is scored once and every distinct prompt is forwarded once (``logprobs.pack_rows``): pass y, y' and y0
    of a policy in one call and the repeats (y' == y, y0 == y: about half the rows on the toy task) cost
    nothing. ``batch_size`` counts distinct prompts per forward.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    share = supports_packing(model, lambda: longest_row(prompt_ids, response_ids))
    distinct: dict = {}
    inverse = [distinct.setdefault((tuple(p), tuple(r)), len(distinct)) for p, r in zip(prompt_ids, response_ids)]
    by_prompt: dict = {}
    for (p, r), j in distinct.items():
        by_prompt.setdefault(p, []).append((j, r))
    groups = list(by_prompt.items())  # chunks hold whole prompts, so a prompt is forwarded once

    def run(start, stop, k):
        rows = [(p, j, r) for p, branches in groups[start:stop] for j, r in branches]
        ps, rs = [list(p) for p, _, _ in rows], [list(r) for _, _, r in rows]
        if share:
            lp = packed_logps(model, pack_rows(ps, rs, pad_id).to(device), with_entropy=True)
        else:
            lp = model_logps(model, collate(ps, rs, pad_id).to(device), with_entropy=True)
        out = []
        for i, (_, j, _) in enumerate(rows):
            toks = lp.token_logps[i][lp.mask[i]].float().cpu().tolist()
            out.append((j, {"logp": float(lp.summed[i]), "token_logps": toks, "entropy": float(lp.entropy[i])}))
        return out

    try:
        scored = dict(_sharded_map(len(groups), batch_size, run, desc=desc, progress=progress))
    finally:
        model.train(was_training)
    # each input row gets its own dict (callers may change one without touching its repeats)
    return [{**scored[j], "token_logps": list(scored[j]["token_logps"])} for j in inverse]
