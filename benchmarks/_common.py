"""Shared helpers for the benchmark scripts (not a benchmark itself).

Every benchmark prints ONE line of JSON first (machine-readable, nothing before it), then a
human-readable table, and exits 0. Timings use ``time.perf_counter``; warm-up runs are excluded;
statistics are median / min / max over repeats. Ratios are computed per repeat, inside one process,
with the compared variants interleaved, because the machines are shared and noisy.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import statistics
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Quiet the libraries: the first stdout line must be the JSON object.
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TSPIN_PROGRESS", "0")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

# Default cache for pi_0 (toy.initial_policy) lives under benchmarks/ so that benchmarks write nowhere else.
os.environ.setdefault("TSPIN_CACHE", str(Path(__file__).resolve().parent / ".cache"))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """The machine line every benchmark prints first: CPU model, cores, threads, versions, load."""
    import torch

    info = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.is_available(),
    }
    for lib in ("transformers", "accelerate", "trl"):
        try:
            info[lib] = __import__(lib).__version__
        except ImportError:  # pragma: no cover
            pass
    try:
        info["loadavg_1m"] = os.getloadavg()[0]
    except OSError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def stats(xs: list[float]) -> dict:
    xs = [float(x) for x in xs]
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs), "values": xs}


def median_ci(xs: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free confidence interval for the median of ``xs`` (independent draws): the order statistics
    x_(k) and x_(n+1-k), k the largest rank with P(Binomial(n, 1/2) < k) <= (1 - level) / 2, so the interval covers
    the true median with probability >= ``level`` whatever the distribution. None when n is too small (n < 6 at
    95%)."""
    xs = sorted(float(x) for x in xs)
    n, tail, k = len(xs), (1 - level) / 2, 0
    below = 0.0  # P(Binomial(n, 1/2) <= k - 1), accumulated rank by rank
    while k < n and below + math.comb(n, k) / 2**n <= tail:
        below += math.comb(n, k) / 2**n
        k += 1
    return (xs[k - 1], xs[n - k]) if k >= 1 else None


class PythonCalls:
    """Counts the Python-level calls made inside ``with`` blocks: every function call, generator resumption and call
    of a builtin or C function, as ``sys.setprofile`` reports them ("call" and "c_call" events). What runs below them
    in C/C++ (torch's kernels, autograd) is not counted. The count does not depend on the machine's speed or
    load, while a wall-clock ratio on a shared machine does. The calls that remove the profiler are left out. Not
    nestable (one profiler per thread)."""

    def __init__(self) -> None:
        self.calls = 0

    def _count(self, frame, event, arg) -> None:
        if event == "call" or event == "c_call":
            self.calls += 1

    def __enter__(self):
        sys.setprofile(self._count)
        return self

    def __exit__(self, *exc) -> None:
        sys.setprofile(None)
        self.calls -= 2  # the profiler's own: the call of this method and of sys.setprofile


def emit(result: dict, table: str) -> None:
    """First line: the JSON object. Then the table."""
    sys.stdout.write(json.dumps(result, default=_json_default) + "\n")
    sys.stdout.write(table.rstrip() + "\n")
    if isinstance(result.get("machine"), dict):
        sys.stdout.write(machine_line(result["machine"]) + "\n")
    targets = result.get("targets") or []
    if targets:
        sys.stdout.write(
            "targets: "
            + "; ".join(f"{t['target']}: {t['value']:.3g} -> {'met' if t['met'] else 'NOT met'}" for t in targets)
            + "\n"
        )
    sys.stdout.flush()


def _json_default(o):
    try:
        return float(o)
    except Exception:  # pragma: no cover
        return str(o)


def fmt_table(headers: list[str], rows: list[list]) -> str:
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _fmt(c) -> str:
    if isinstance(c, bool):
        return "yes" if c else "NO"
    if isinstance(c, float):
        if c != c:
            return "nan"
        if abs(c) >= 1000:
            return f"{c:,.0f}"
        if abs(c) >= 10:
            return f"{c:.1f}"
        return f"{c:.3f}"
    return str(c)


# ----------------------------------------------------------------------------- toy data


def _perturb(rng: random.Random, a: int, b: int, p_correct: float) -> str:
    """A plausible sampled answer to a+b: correct with probability p_correct, else off by a small amount."""
    c = a + b
    if rng.random() < p_correct:
        return str(c)
    delta = rng.choice([-11, -10, -2, -1, 1, 2, 9, 10, 11, 100])
    return str(max(0, c + delta))


def toy_world(
    num: int,
    *,
    task: str = "addition",
    seed: int = 0,
    p_synth: float = 0.65,
    p_proto: float = 0.6,
    repeats: bool = True,
):
    """Realistic toy triplet data without sampling a model: (prompts, annotated, synthetic, proto) strings.

    y = the correct answer (tspin_kit.toy.make_world); y' and y0 = answers that are correct with the
    share the toy-world prototype measured for pi_0 (y' == y for 60-72%, y0 == y for 53-61%) and
    otherwise off by a few units, so lengths (3-4 characters + EOS) and padding match a real run.

    ``repeats=False``: data with no repeated rows, as on chat data: y', y0 always wrong and y0 != y', so no
    (prompt, response) row occurs twice and nothing can be forwarded once instead of twice.
    """
    if not repeats:
        p_synth = p_proto = 0.0
    from tspin_kit import toy

    train, _ = toy.make_world(task, num, 10, seed)
    rs, rp = random.Random(seed + 1), random.Random(seed + 2)
    prompts = [r["prompt"] for r in train]
    annotated = [r["response"] for r in train]
    synth, proto = [], []
    for r in train:
        a, b = (int(x) for x in r["prompt"].rstrip("=").split("+"))
        s, p = _perturb(rs, a, b, p_synth), _perturb(rp, a, b, p_proto)
        while not repeats and (p == s or s == str(a + b) or p == str(a + b)):
            s, p = _perturb(rs, a, b, p_synth), _perturb(rp, a, b, p_proto)
        if task == "scratchpad":
            s = r["response"].rsplit(";", 1)[0] + ";" + s
            p = r["response"].rsplit(";", 1)[0] + ";" + p
        synth.append(s)
        proto.append(p)
    return prompts, annotated, synth, proto


def toy_examples(tokenizer, num: int, *, task: str = "addition", seed: int = 0, repeats: bool = True):
    """tspin_kit Examples with y, y', y0 token ids (each + EOS) and reference log-probs = 0 (filled later)."""
    import torch

    from tspin_kit.templates import encode_response
    from tspin_kit.training import build_examples

    prompts, ann, syn, pro = toy_world(num, task=task, seed=seed, repeats=repeats)
    ex = build_examples(tokenizer, prompts, ann)
    ex.synthetic_ids = [encode_response(tokenizer, s) for s in syn]
    ex.proto_ids = [encode_response(tokenizer, p) for p in pro]
    ex.ref_annotated = torch.zeros(num)
    ex.ref_synthetic = torch.zeros(num)
    ex.ref_proto = torch.zeros(num)
    return ex, (prompts, ann, syn, pro)


def steps_config(lr: float, steps: int, batch_size: int):
    """The benchmarks' training settings: ``steps`` optimiser steps over one batch (one epoch each), AdamW at a
    constant ``lr`` without warm-up, gradients clipped at 1.0."""
    from tspin_kit.config import TrainConfig

    return TrainConfig(
        optimizer="adamw",
        lr=lr,
        epochs=steps,
        batch_size=batch_size,
        warmup_ratio=0.0,
        schedule="constant",
        max_grad_norm=1.0,
    )


def fill_reference(model, tokenizer, ex) -> None:
    """Reference log-probs of y, y', y0 under `model` (what tspin_kit's generate phase records)."""
    import torch

    from tspin_kit.generation import score_responses

    for attr, ids in (
        ("ref_annotated", ex.annotated_ids),
        ("ref_synthetic", ex.synthetic_ids),
        ("ref_proto", ex.proto_ids),
    ):
        scored = score_responses(model, ex.prompt_ids, ids, pad_id=tokenizer.pad_token_id, batch_size=250)
        setattr(ex, attr, torch.tensor([s["logp"] for s in scored], dtype=torch.float32))


def parse_quick():
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="CI smoke mode: finishes in under ~60 s")
    ap.add_argument("--repeats", type=int, default=None, help="override the number of measured repeats")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave torch's default)")
    return ap


def apply_threads(args) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def repeated_share(ex) -> dict:
    """Shares of repeated rows in Examples: y' == y and y0 == y (0 on data with no repeated rows)."""
    n = len(ex.prompt_ids)
    return {
        "synthetic_equals_annotated": sum(s == a for s, a in zip(ex.synthetic_ids, ex.annotated_ids)) / n,
        "proto_equals_annotated": sum(p == a for p, a in zip(ex.proto_ids, ex.annotated_ids)) / n,
    }


def machine_line(info: dict) -> str:
    """The machine in one human-readable line (also in the JSON as "machine")."""
    libs = ", ".join(f"{k} {info[k]}" for k in ("torch", "transformers", "accelerate", "trl") if k in info)
    return (
        f"machine: {info.get('cpu_model')}, {info.get('cpu_count')} cores, torch threads "
        f"{info.get('torch_num_threads')}, load (1 min) {info.get('loadavg_1m', float('nan')):.2f}; {libs}"
    )


def target(name: str, value: float, op: str, threshold: float, unit: str = "") -> dict:
    met = {"<": value < threshold, "<=": value <= threshold, ">": value > threshold, ">=": value >= threshold}[op]
    return {"target": f"{name} {op} {threshold}{unit}", "value": value, "met": bool(met)}
