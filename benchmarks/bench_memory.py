"""Peak memory of one T-SPIN training iteration vs one SPIN training iteration.

Each measurement runs in a fresh subprocess (``python bench_memory.py --child MODE``) and reports its peak
resident set size, ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux). tracemalloc cannot see
torch's allocations, hence the subprocesses. Modes:

- ``baseline``: imports (torch, transformers, accelerate, tspin_kit), builds the model and the data, nothing else;
- ``tspin``: baseline + ``train_iteration`` with T-SPIN (rows [y; y'; y0] per step);
- ``spin``: baseline + ``train_iteration`` with SPIN (rows [y; y'] per step; reference log-probs given);
- ``spin_ref``: ``spin`` + the reference precompute tspin_kit's SPIN needs (score y and y' under pi_t once
  with ``generation.score_responses``) -- this is how tspin_kit avoids holding a second, frozen model;
- ``spin_frozen_copy``: for comparison only, the textbook SPIN/DPO layout tspin_kit does NOT use: a
  deep-copied frozen reference model kept in memory and run (no_grad) on every step, in a bare loop.

Reported: peak RSS minus the baseline's, median (and min/max) over repeats; every mode, in ``--quick``
too, at least 3 samples each (``--quick``: the tiny model only, 256 examples). On CUDA also
``torch.cuda.max_memory_allocated`` (the children move the model to the GPU).

The claims behind the modes, each a flag in the JSON (informational: RSS moves by a few MiB between
samples, so a flag is read together with the min/max columns):
- "T-SPIN needs no second model": T-SPIN's peak over baseline <= 2x SPIN's (3 rows of activations vs 2);
- "tspin_kit's SPIN holds no frozen copy": ``spin_ref`` (SPIN + its reference precompute) peaks no higher
  than ``spin_frozen_copy`` (the textbook layout with a frozen model in memory).

What to expect: tspin_kit's SPIN never holds a second model, so the difference between T-SPIN and SPIN is
activation memory: 3B rows vs 2B rows per step (T-SPIN ~1.5x SPIN's activations). The tiny model's
weights are ~1.3 MB, so on it any second copy is invisible next to the ~400 MB of the Python/torch process;
the wider model (hidden 512) shows the same trend with larger absolute numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common as C

SIZES = {"tiny": dict(hidden_size=128, intermediate_size=256), "wide": dict(hidden_size=512, intermediate_size=1024)}
MODES = ["baseline", "tspin", "spin", "spin_ref", "spin_frozen_copy"]


def child(mode: str, size: str, num: int, epochs: int, data: str = "distinct") -> None:
    import copy
    import resource

    import accelerate  # noqa: F401  (imported in every mode, so the baseline includes it)
    import torch

    from tspin_kit import losses as L
    from tspin_kit import toy
    from tspin_kit.config import MethodConfig, TrainConfig
    from tspin_kit.logprobs import collate, model_logps
    from tspin_kit.training import train_iteration

    cuda = torch.cuda.is_available()
    tok = toy.build_tokenizer()
    model = toy.build_model(tok, toy.ToyModelSize(**SIZES[size]))
    if cuda:
        model.to("cuda")
    ex, _ = C.toy_examples(tok, num, repeats=data == "toy")
    n_params = sum(p.numel() for p in model.parameters())
    train_cfg = TrainConfig(optimizer="adamw", lr=2e-5, epochs=epochs, batch_size=64, warmup_ratio=0.0)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if mode == "tspin":
        train_iteration(
            model, ex, method=MethodConfig(name="tspin"), train=train_cfg, iteration=1, seed=0, cpu=not cuda
        )
    elif mode in ("spin", "spin_ref"):
        if mode == "spin_ref":
            C.fill_reference(model, tok, ex)
        train_iteration(model, ex, method=MethodConfig(name="spin"), train=train_cfg, iteration=1, seed=0, cpu=not cuda)
    elif mode == "spin_frozen_copy":
        ref = copy.deepcopy(model).eval().requires_grad_(False)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
        dev = next(model.parameters()).device
        for _ in range(epochs):
            for s in range(0, num, 64):
                idx = list(range(s, min(s + 64, num)))
                P = [ex.prompt_ids[i] for i in idx]
                b = collate(
                    P * 2, [ex.annotated_ids[i] for i in idx] + [ex.synthetic_ids[i] for i in idx], tok.pad_token_id
                ).to(dev)
                with torch.no_grad():
                    ra, rs = model_logps(ref, b).summed.chunk(2)
                a, sy = model_logps(model, b).summed.chunk(2)
                loss = L.spin_loss(a, sy, ra, rs, lam=1.0).losses.mean()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t0
    out = {
        "mode": mode,
        "size": size,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mib": rss0 / 1024,
        "n_params": n_params,
        "seconds": seconds,
    }
    if cuda:
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(out))


def run_child(mode, size, num, epochs, data="distinct") -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        mode,
        "--size",
        size,
        "--num",
        str(num),
        "--epochs",
        str(epochs),
        "--data",
        data,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child {mode}/{size} failed (rc {p.returncode}): {p.stderr[-2000:]}")


def main() -> None:
    ap = C.parse_quick()
    ap.add_argument("--child", choices=MODES)
    ap.add_argument("--size", choices=list(SIZES), default="tiny")
    ap.add_argument("--sizes", default=None, help="comma list of sizes to measure (default tiny,wide; --quick: tiny)")
    ap.add_argument("--num", type=int, default=None, help="training examples (default 1000; --quick 256)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2, help="children run in parallel (memory is per process)")
    ap.add_argument(
        "--data",
        choices=["distinct", "toy"],
        default="distinct",
        help="distinct: no repeated rows (default; every row is forwarded); toy: y' == y for ~65%%",
    )
    args = ap.parse_args()
    num = args.num or (256 if args.quick else 1000)
    if args.child:
        C.apply_threads(args)
        child(args.child, args.size, num, args.epochs, args.data)
        return
    repeats = args.repeats or (3 if args.quick else 5)
    sizes = (args.sizes or ("tiny" if args.quick else "tiny,wide")).split(",")
    modes = MODES
    jobs = [(m, s) for _ in range(repeats) for s in sizes for m in modes]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda j: run_child(j[0], j[1], num, args.epochs, args.data), jobs))

    by = {(s, m): [r for r in results if r["size"] == s and r["mode"] == m] for s in sizes for m in modes}
    out = {
        "benchmark": "memory",
        "quick": args.quick,
        "machine": C.machine_info(),
        "settings": {
            "examples": num,
            "epochs": args.epochs,
            "data": args.data,
            "batch_size": 64,
            "repeats": repeats,
            "sizes": sizes,
            "measure": "ru_maxrss of a fresh subprocess minus a baseline subprocess (model + data only)",
        },
        "sizes": {},
        "targets": [],
    }
    rows = []
    for s in sizes:
        base = C.stats([r["peak_rss_mib"] for r in by[(s, "baseline")]])
        d = {"n_params": by[(s, "baseline")][0]["n_params"], "baseline_peak_rss_mib": base, "modes": {}}
        for m in modes:
            peaks = [r["peak_rss_mib"] for r in by[(s, m)]]
            dm = {
                "peak_rss_mib": C.stats(peaks),
                "over_baseline_mib": C.stats([p - base["median"] for p in peaks]),
                "seconds": C.stats([r["seconds"] for r in by[(s, m)]]),
            }
            if "cuda_max_allocated_mib" in by[(s, m)][0]:
                dm["cuda_max_allocated_mib"] = C.stats([r["cuda_max_allocated_mib"] for r in by[(s, m)]])
            d["modes"][m] = dm
            rows.append(
                [
                    s,
                    m,
                    dm["peak_rss_mib"]["median"],
                    dm["over_baseline_mib"]["median"],
                    f"{dm['over_baseline_mib']['min']:.1f}..{dm['over_baseline_mib']['max']:.1f}",
                    dm.get("cuda_max_allocated_mib", {}).get("median", float("nan")),
                    dm["seconds"]["median"],
                ]
            )
        t_over = d["modes"]["tspin"]["over_baseline_mib"]["median"]
        s_over = d["modes"]["spin"]["over_baseline_mib"]["median"]
        d["tspin_minus_spin_mib"] = t_over - s_over
        d["tspin_over_spin_ratio"] = t_over / s_over if s_over > 0 else float("nan")
        # Informational target (method.md: T-SPIN needs no second model): T-SPIN's training peak above
        # baseline should not exceed 2x SPIN's (3 rows vs 2 rows of activations, same weights).
        tgt = C.target(
            f"{s}: T-SPIN peak over baseline / SPIN peak over baseline", d["tspin_over_spin_ratio"], "<=", 2.0
        )
        d.update(tgt)
        out["targets"].append(tgt)
        ref_over = d["modes"]["spin_ref"]["over_baseline_mib"]["median"]
        copy_over = d["modes"]["spin_frozen_copy"]["over_baseline_mib"]["median"]
        d["spin_ref_minus_frozen_copy_mib"] = ref_over - copy_over
        tgt2 = C.target(
            f"{s}: SPIN with precomputed reference minus textbook SPIN with a frozen copy (peak over baseline, MiB)",
            ref_over - copy_over,
            "<=",
            0.0,
            " MiB",
        )
        d["no_frozen_copy"] = tgt2
        out["targets"].append(tgt2)
        out["sizes"][s] = d
    out["met"] = all(t["met"] for t in out["targets"])
    table = C.fmt_table(
        ["size", "mode", "peak RSS MiB", "over baseline MiB", "min..max", "cuda max MiB", "seconds"], rows
    )
    for s in sizes:
        d = out["sizes"][s]
        table += (
            f"\n{s} ({d['n_params']:,} params): T-SPIN - SPIN = {d['tspin_minus_spin_mib']:+.1f} MiB, "
            f"ratio {d['tspin_over_spin_ratio']:.2f} (over baseline, medians of {repeats})"
        )
    C.emit(out, table)


if __name__ == "__main__":
    main()
