"""Peak memory and time of summed response log-probs, old (full logits) vs new (lean, chunked), with backward.

The setting of issue 11, item 2: a 150k-token vocabulary and 1k-token responses on a small-hidden Llama on CPU,
one T-SPIN micro-batch of one example, rows [y; y'; y0] (3 rows of prompt + 1k response tokens), forward and
backward of a weighted sum of the three summed log-probs (what the loss does).

- ``old``: what the engine did before: ``model(...).logits`` (3 x L x V float32), then logsumexp and gather over
  all of it (the previous ``sequence_logps``, copied below as the reference);
- ``new``: ``tspin_kit.logprobs.model_logps``: the head projects only the response positions' hidden states, in
  chunks of ``CHUNK_ELEMENTS`` logits, checkpointed so that the backward recomputes a chunk instead of keeping it.

Each measurement is a fresh subprocess (``--child MODE``), run one after another (not in parallel: the old
mode needs several GiB). Peak memory: ``ru_maxrss`` after the steps minus ``ru_maxrss`` once the model and the
batch are built (torch's allocations are invisible to tracemalloc). Time: the second of two steps (the first
warms up). Targets: old peak / new peak >= 3 and new seconds <= old seconds (medians over repeats).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import _common as C

SETTINGS = {
    "full": dict(vocab=150_000, response=1024, prompt=32, hidden=64, layers=2),
    "quick": dict(vocab=32_000, response=256, prompt=16, hidden=64, layers=2),
}


def old_sequence_logps(logits, input_ids, loss_mask):
    """The engine's previous summed log-probs (before the lean path): the reference for old peak and time."""
    logits = logits[:, :-1, :].to(logits.dtype if logits.dtype == torch.float64 else torch.float32)
    targets = input_ids[:, 1:]
    mask = loss_mask[:, 1:].bool()
    lse = torch.logsumexp(logits, dim=-1)
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
    return ((picked - lse) * mask).sum(-1)


def child(mode: str, s: dict) -> None:
    global torch
    import resource

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tspin_kit.logprobs import collate, model_logps

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=s["vocab"],
        hidden_size=s["hidden"],
        intermediate_size=2 * s["hidden"],
        num_hidden_layers=s["layers"],
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=s["prompt"] + s["response"] + 8,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg)
    model.config._attn_implementation = "sdpa"
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, s["vocab"], (s["prompt"],), generator=g).tolist()
    responses = [torch.randint(3, s["vocab"], (s["response"] - k,), generator=g).tolist() + [2] for k in (0, 5, 9)]
    batch = collate([prompt] * 3, responses, pad_id=0)  # rows [y; y'; y0] of one example
    weights = torch.tensor([1.0, -1.0, 0.1])
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        if mode == "old":
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            summed = old_sequence_logps(logits, batch.input_ids, batch.loss_mask)
            del logits
        else:
            summed = model_logps(model, batch).summed
        (summed * weights).sum().backward()
        seconds.append(time.perf_counter() - t0)
        del summed
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        "RESULT "
        + json.dumps(
            {
                "mode": mode,
                "peak_over_baseline_mib": (peak - rss0) / 1024,
                "peak_rss_mib": peak / 1024,
                "seconds": seconds[-1],
                "grad_norm": float(torch.linalg.vector_norm(model.lm_head.weight.grad)),
            }
        )
    )


def run_child(mode: str, which: str, threads) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--setting", which]
    if threads:
        cmd += ["--threads", str(threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child {mode} failed (rc {p.returncode}): {p.stderr[-2000:]}")


def main() -> None:
    ap = C.parse_quick()
    ap.add_argument("--child", choices=["old", "new"])
    ap.add_argument("--setting", choices=list(SETTINGS), default=None)
    args = ap.parse_args()
    which = args.setting or ("quick" if args.quick else "full")
    if args.child:
        C.apply_threads(args)
        child(args.child, SETTINGS[which])
        return
    repeats = args.repeats or 3
    results = {"old": [], "new": []}
    for _ in range(repeats):  # interleaved, one process at a time
        for mode in ("old", "new"):
            results[mode].append(run_child(mode, which, args.threads))
    out = {
        "benchmark": "logprobs",
        "quick": args.quick,
        "machine": C.machine_info(),
        "settings": {
            **SETTINGS[which],
            "rows": 3,
            "setting": which,
            "repeats": repeats,
            "measure": "ru_maxrss after 2 forward+backward steps minus ru_maxrss with model and batch built, "
            "fresh subprocess per sample; seconds: the second step",
        },
        "modes": {},
        "targets": [],
    }
    rows = []
    for mode in ("old", "new"):
        d = {
            "peak_over_baseline_mib": C.stats([r["peak_over_baseline_mib"] for r in results[mode]]),
            "seconds": C.stats([r["seconds"] for r in results[mode]]),
            "lm_head_grad_norm": results[mode][0]["grad_norm"],
        }
        out["modes"][mode] = d
        rows.append(
            [
                mode,
                d["peak_over_baseline_mib"]["median"],
                f"{d['peak_over_baseline_mib']['min']:.0f}..{d['peak_over_baseline_mib']['max']:.0f}",
                d["seconds"]["median"],
                f"{d['seconds']['min']:.2f}..{d['seconds']['max']:.2f}",
            ]
        )
    old, new = out["modes"]["old"], out["modes"]["new"]
    ratio = old["peak_over_baseline_mib"]["median"] / max(new["peak_over_baseline_mib"]["median"], 1e-9)
    speed = new["seconds"]["median"] / old["seconds"]["median"]
    out["targets"].append(C.target("old peak / new peak (over baseline)", ratio, ">=", 3.0))
    out["targets"].append(C.target("new seconds / old seconds", speed, "<=", 1.0))
    out["same_gradient"] = abs(old["lm_head_grad_norm"] - new["lm_head_grad_norm"]) <= 1e-4 * (
        1 + old["lm_head_grad_norm"]
    )
    out["met"] = all(t["met"] for t in out["targets"])
    s = SETTINGS[which]
    table = C.fmt_table(["mode", "peak over baseline MiB", "min..max", "seconds", "min..max"], rows)
    table += (
        f"\nvocab {s['vocab']:,}, 3 rows x ({s['prompt']} prompt + {s['response']} response) tokens, hidden "
        f"{s['hidden']}, {s['layers']} layers; medians of {repeats}; lm_head grad norms equal: {out['same_gradient']}"
    )
    C.emit(out, table)


if __name__ == "__main__":
    main()
