"""Run every benchmark (``--quick`` by default) and collect their JSON into one table.

    .venv/bin/python benchmarks/run_all.py            # CI smoke: every script with --quick
    .venv/bin/python benchmarks/run_all.py --full     # the real measurements (long)
    .venv/bin/python benchmarks/run_all.py --only bench_generation,bench_memory

Prints one JSON line ({"benchmarks": {name: result}, "met": ...}) and then a summary table of every
target. Exits 0 when every script ran (a missed target is reported, not an error); exits 1 if a script
crashed or printed no JSON. ``--out FILE`` also writes the collected JSON to a file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import _common as C

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "bench_train_step",
    "bench_generation",
    "bench_memory",
    "bench_vs_trl",
    "bench_demo",
    "bench_reproduce",
    "bench_voila",
    "bench_gpu",
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="run without --quick (long)")
    ap.add_argument("--only", default=None, help="comma list of script names")
    ap.add_argument("--out", default=None, help="also write the collected JSON here")
    ap.add_argument("--timeout", type=float, default=None, help="per-script timeout in seconds")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else SCRIPTS
    collected, rows, failed = {}, [], []
    for name in names:
        cmd = [sys.executable, str(HERE / f"{name}.py")] + ([] if args.full else ["--quick"])
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            stdout, rc = p.stdout, p.returncode
            err = p.stderr[-2000:]
        except subprocess.TimeoutExpired:
            stdout, rc, err = "", -1, f"timeout after {args.timeout} s"
        wall = time.perf_counter() - t0
        first = stdout.splitlines()[0] if stdout.strip() else ""
        try:
            res = json.loads(first)
        except json.JSONDecodeError:
            res = None
        if rc != 0 or res is None:
            failed.append(name)
            collected[name] = {"error": err, "rc": rc, "wall_s": wall}
            rows.append([name, "(failed)", "", "", False, wall])
            continue
        res["wall_s"] = wall
        collected[name] = res
        for t in res.get("targets", []):
            rows.append(
                [name, t["target"], f"{t['value']:.3g}", "quick" if res.get("quick") else "full", t["met"], wall]
            )
        if not res.get("targets"):
            rows.append([name, res.get("skipped", "(no target)"), "", "", False, wall])
    summary = {
        "benchmarks": collected,
        "machine": C.machine_info(),
        "quick": not args.full,
        "met": all(t["met"] for r in collected.values() for t in r.get("targets", [])) and not failed,
        "failed": failed,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1, default=str))
    C.emit(summary, C.fmt_table(["benchmark", "target", "value", "mode", "met", "script s"], rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
