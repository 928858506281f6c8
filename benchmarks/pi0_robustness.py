"""How far pi_0 moves when it is retrained on a machine whose float reductions differ.

Another machine rounds differently (CPU, BLAS, library versions); on this tiny model 1 and 2 threads
give bit-identical weights, so the stand-in is a rounding-sized nudge: every initial weight times
(1 + 1e-6 * N(0, 1)), with several nudge seeds. Each recipe is trained unnudged and nudged, scored on
the 500 held-out problems; a recipe is robust when all land within a few points. This is the
measurement behind `toy.InitialPolicySettings` (docs/departures.md).

    python benchmarks/pi0_robustness.py [--task addition] [--recipes constant-1e-3,linear-1e-3] [--nudges 3]

Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (quiet libraries, sys.path)


def main() -> None:
    import torch

    from tspin_kit import toy

    p = argparse.ArgumentParser()
    p.add_argument("--task", default="addition")
    p.add_argument("--recipes", default="constant-1e-3,linear-1e-3,linear-3e-4")
    p.add_argument("--nudges", type=int, default=3, help="nudged copies per recipe (plus the unnudged one)")
    p.add_argument("--size", type=float, default=1e-6, help="relative size of the nudge")
    p.add_argument("--epochs", type=int, default=40)
    args = p.parse_args()
    train, held = toy.make_world(args.task, 1000, 500, seed=0)
    rows = []
    for recipe in args.recipes.split(","):
        schedule, lr = recipe.split("-", 1)
        for nudge in range(args.nudges + 1):
            settings = toy.InitialPolicySettings(epochs=args.epochs, lr=float(lr), schedule=schedule)
            t0 = time.perf_counter()
            model, tok = toy.train_initial_policy(
                args.task, train, settings, perturb=args.size if nudge else 0.0, perturb_seed=nudge
            )
            seconds = time.perf_counter() - t0
            acc = sum(toy.heldout_correct(model, tok, args.task, held)) / len(held)
            rows.append({"recipe": recipe, "nudge": nudge, "accuracy": acc, "train_seconds": seconds})
    del torch
    out = {
        "benchmark": "pi0_robustness",
        "task": args.task,
        "epochs": args.epochs,
        "nudge_size": args.size,
        "machine": _common.machine_info(),
        "rows": rows,
        "spread": {},
    }
    lines = [f"{'recipe':<16}{'nudge':>8}{'accuracy':>10}{'train s':>9}"]
    for r in rows:
        lines.append(f"{r['recipe']:<16}{r['nudge']:>8}{r['accuracy']:>10.3f}{r['train_seconds']:>9.1f}")
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        accs = [r["accuracy"] for r in rows if r["recipe"] == recipe]
        out["spread"][recipe] = max(accs) - min(accs)
        lines.append(f"{recipe}: spread over nudges {100 * (max(accs) - min(accs)):.1f} points")
    _common.emit(out, "\n".join(lines))


if __name__ == "__main__":
    main()
