"""Wall time of `tspin reproduce` (7 arms x seeds x iterations), as a subprocess in a fresh out dir.

Target (issue 7): 3 seeds x 10 iterations under 15 minutes on 2 cores. The full mode runs exactly
that once (it takes about as long as the target); ``--quick`` runs ``--quick`` (2 seeds x 2
iterations) and checks it against 15 minutes scaled by the share of iterations (2/10 x 2/3).
Every run starts from the shipped pi_0, so nothing is cached between repeats but the OS file cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C


def main() -> None:
    ap = C.parse_quick()
    ap.add_argument("--workers", type=int, default=None, help="tspin reproduce --workers (default: one per core)")
    args = ap.parse_args()
    repeats = args.repeats or 1
    cli = [sys.executable, "-m", "tspin_kit.cli", "-q", "reproduce"] + (["--quick"] if args.quick else [])
    if args.workers:
        cli += ["--workers", str(args.workers)]
    walls, reported, rcs = [], [], []
    for _ in range(repeats):
        out = Path(tempfile.mkdtemp(prefix="bench_reproduce_"))
        env = {**os.environ, "TSPIN_PROGRESS": "0"}
        t0 = time.perf_counter()
        p = subprocess.run(cli + ["--out", str(out)], capture_output=True, text=True, env=env, cwd=C.ROOT)
        walls.append(time.perf_counter() - t0)
        rcs.append(p.returncode)
        m = re.search(r"wall time:\s*([0-9.]+)\s*s", p.stdout)
        reported.append(float(m.group(1)) if m else float("nan"))
        if p.returncode == 0:
            settings = json.loads((out / "reproduce.json").read_text())["settings"]
        shutil.rmtree(out, ignore_errors=True)
    seeds, iters = (2, 2) if args.quick else (3, 10)
    limit = 15 * 60 * (seeds * iters) / 30
    st = C.stats(walls)
    tgt = C.target(f"tspin reproduce ({seeds} seeds x {iters} iterations) wall", st["median"], "<", round(limit), " s")
    if any(rcs):
        tgt["met"] = False
    result = {
        "benchmark": "reproduce",
        "quick": args.quick,
        "machine": C.machine_info(),
        "wall_s": st,
        "reported_s": C.stats(reported),
        "rc": rcs,
        "settings": settings if not any(rcs) else None,
        "targets": [tgt],
        "met": tgt["met"],
    }
    table = (
        f"tspin reproduce {'--quick ' if args.quick else ''}({seeds} seeds x {iters} iterations, 7 arms): "
        f"wall median {st['median']:.0f} s over {st['n']} run(s) (min {st['min']:.0f}, max {st['max']:.0f})\n"
        f"target {tgt['target']}: {'met' if tgt['met'] else 'NOT met'}"
    )
    C.emit(result, table)


if __name__ == "__main__":
    main()
