"""End-to-end wall time of ``tspin demo`` (SFT control + SPIN + T-SPIN + 4x-data SFT from pi_0, one seed).

Runs ``.venv/bin/tspin demo --out <fresh tmp dir>`` as a subprocess (so imports and start-up count); the
demo runs its four methods as parallel worker processes (one per core, threads split):

- cold: a fresh, empty TSPIN_CACHE. pi_0 ships with the package (tspin_kit/assets/pi0), so nothing is
  trained first any more; cold adds only what a first run on a machine pays (empty caches);
- warm: the same TSPIN_CACHE again, fresh --out each time (an existing --out would be resumed, not re-run).

Wall = perf_counter around the subprocess; ``demo_reported_s`` is the "wall time" line the CLI prints
(the comparison only, without interpreter start-up, imports and the report).
Targets (2 cores, median): warm <= 60 s, cold <= 75 s. ``--quick`` runs ``--iterations 1`` once cold and
once warm against the same bounds (a smoke test of the shorter job).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C


def run_demo(cli: list[str], cache: Path, iterations: int, extra_env: dict) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench_demo_out_"))
    env = {**os.environ, "TSPIN_CACHE": str(cache), "TSPIN_PROGRESS": "0", **extra_env}
    cmd = cli + ["demo", "--out", str(out / "demo"), "--iterations", str(iterations)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    m = re.search(r"wall time:\s*([0-9.]+)\s*s", p.stdout)
    return {
        "rc": p.returncode,
        "wall_s": wall,
        "demo_reported_s": float(m.group(1)) if m else float("nan"),
        "stderr_tail": p.stderr[-1500:] if p.returncode else "",
    }


def main() -> None:
    ap = C.parse_quick()
    ap.add_argument(
        "--iterations", type=int, default=None, help="demo iterations (default 5, the CLI default; --quick 1)"
    )
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    iterations = args.iterations or (1 if args.quick else 5)
    extra_env = {}
    if args.threads:
        extra_env = {"OMP_NUM_THREADS": str(args.threads)}

    tspin = C.ROOT / ".venv" / "bin" / "tspin"
    if tspin.exists():
        cli, how = [str(tspin)], "tspin CLI"
    elif (C.ROOT / "tspin_kit" / "cli.py").exists():
        cli, how = [sys.executable, "-m", "tspin_kit.cli"], "python -m tspin_kit.cli"
    else:
        C.emit(
            {
                "benchmark": "demo",
                "quick": args.quick,
                "machine": C.machine_info(),
                "skipped": "no tspin CLI",
                "targets": [],
                "met": False,
            },
            "tspin demo: no CLI found (tspin_kit/cli.py missing); nothing measured",
        )
        return

    cold, warm = [], []
    for _ in range(repeats):
        cache = Path(tempfile.mkdtemp(prefix="bench_demo_cache_"))
        try:
            cold.append(run_demo(cli, cache, iterations, extra_env))  # fills this cache with pi_0
            warm.append(run_demo(cli, cache, iterations, extra_env))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    ok = all(r["rc"] == 0 for r in cold + warm)
    cs = C.stats([r["wall_s"] for r in cold])
    ws = C.stats([r["wall_s"] for r in warm])
    tgt = C.target(f"tspin demo --iterations {iterations}, cold wall (median)", cs["median"], "<=", 75.0, " s")
    tgt_w = C.target(f"tspin demo --iterations {iterations}, warm wall (median)", ws["median"], "<=", 60.0, " s")
    if not ok:
        tgt["met"] = tgt_w["met"] = False
    result = {
        "benchmark": "demo",
        "quick": args.quick,
        "machine": C.machine_info(),
        "settings": {"how": how, "iterations": iterations, "seeds": 1, "repeats": repeats, "all_rc_0": ok},
        "cold_wall_s": cs,
        "warm_wall_s": ws,
        "cold_demo_reported_s": C.stats([r["demo_reported_s"] for r in cold]),
        "warm_demo_reported_s": C.stats([r["demo_reported_s"] for r in warm]),
        "pi0_cost_s": C.stats([c["wall_s"] - w["wall_s"] for c, w in zip(cold, warm)]),
        "errors": [r["stderr_tail"] for r in cold + warm if r["rc"]],
        "targets": [tgt, tgt_w],
        "met": tgt["met"] and tgt_w["met"],
    }
    rows = [
        ["cold (fresh TSPIN_CACHE)", cs["median"], cs["min"], cs["max"], result["cold_demo_reported_s"]["median"]],
        ["warm (pi_0 cached)", ws["median"], ws["min"], ws["max"], result["warm_demo_reported_s"]["median"]],
    ]
    table = C.fmt_table(["tspin demo", "median s", "min s", "max s", "CLI-reported s"], rows)
    table += (
        f"\n{how}, --iterations {iterations}, {repeats} repeats; cold <= 75 s: {'met' if tgt['met'] else 'NOT met'}, "
        f"warm <= 60 s: {'met' if tgt_w['met'] else 'NOT met'}"
    )
    if not ok:
        table += "\nsome runs failed: see errors in the JSON"
    C.emit(result, table)


if __name__ == "__main__":
    main()
