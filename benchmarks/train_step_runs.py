"""Every committed run of `bench_train_step.py` side by side, from its results files (no new measurement).

    .venv/bin/python benchmarks/train_step_runs.py                  # results/bench_train_step_2026-12-01.txt
    .venv/bin/python benchmarks/train_step_runs.py --since 2026-12-01T06:06 FILE...  # runs from then on

One run is a header line (``# <UTC time>, ...: <command>``, written with the run) followed by the run's JSON line.
Prints one JSON line, then a row per run (time, CPU, threads, repeats, the bare T-SPIN loop's steps/s as the machine
state, each method's median overhead, T-SPIN/SPIN for the kit and for the bare loop) and, per (CPU, threads), how
many runs meet each step target and how far the kit's T-SPIN/SPIN lies from the bare loop's in the same run. The bare
loop has no framework: where it misses the 1.2x target in a run, that run's arithmetic misses it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import _common as C

HERE = Path(__file__).resolve().parent
OVERHEAD, RATIO = 0.02, 1.2  # the targets (bench_train_step.py's docstring)


def read_runs(path: Path) -> list[dict]:
    """The runs of one results file, in file order: the time of each header line and the JSON line after it."""
    lines = path.read_text().splitlines()
    runs = []
    for i, line in enumerate(lines):
        if not line.startswith("# "):
            continue
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        try:
            result = json.loads(nxt)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}: line {i + 2}: expected the JSON line of the run headed at line {i + 1} ({line[:60]!r}), "
                f"got {nxt[:60]!r} ({e.msg})"
            ) from None
        if result.get("benchmark") != "train_step":
            raise ValueError(
                f"{path}: line {i + 2}: not a bench_train_step.py result (benchmark={result.get('benchmark')!r})"
            )
        runs.append({"time": line[2:].split(",", 1)[0], "result": result})
    return runs


def run_row(run: dict) -> dict:
    r = run["result"]
    overhead = {m: d["overhead"]["median"] for m, d in r["methods"].items()}
    kit, bare = r["tspin_over_spin_step_time"]["median"], r["bare_tspin_over_spin_step_time"]["median"]
    return {
        "time": run["time"],
        "cpu": r["machine"]["cpu_model"],
        "threads": r["machine"]["torch_num_threads"],
        "repeats": r["settings"]["repeats"],
        "bare_tspin_steps_per_s": r["methods"]["tspin"]["bare_steps_per_s"]["median"],
        "overhead": overhead,
        "overhead_met": all(v <= OVERHEAD for v in overhead.values()),
        "ratio_kit": kit,
        "ratio_bare": bare,
        "ratio_met": kit <= RATIO,
        "ratio_bare_met": bare <= RATIO,
    }


def summarize(rows: list[dict]) -> list[dict]:
    """Per (CPU, threads): runs, runs meeting the overhead target (every method) and the ratio target (kit, bare), and
    the kit's T-SPIN/SPIN minus the bare loop's (min, median, max over runs)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["cpu"], row["threads"]), []).append(row)
    out = []
    for (cpu, threads), rs in groups.items():
        diff = [r["ratio_kit"] - r["ratio_bare"] for r in rs]
        out.append(
            {
                "cpu": cpu,
                "threads": threads,
                "runs": len(rs),
                "overhead_met": sum(r["overhead_met"] for r in rs),
                "ratio_met": sum(r["ratio_met"] for r in rs),
                "ratio_bare_met": sum(r["ratio_bare_met"] for r in rs),
                "ratio_kit_minus_bare": {"min": min(diff), "median": statistics.median(diff), "max": max(diff)},
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="*", type=Path, default=[HERE / "results" / "bench_train_step_2026-12-01.txt"])
    ap.add_argument("--since", default="", help="only runs whose UTC time (as written in the header) is >= this")
    args = ap.parse_args()
    rows = [run_row(run) for f in args.files for run in read_runs(f) if run["time"] >= args.since]
    summary = summarize(rows)
    print(json.dumps({"runs": rows, "summary": summary, "since": args.since, "files": [str(f) for f in args.files]}))
    table = [
        [
            r["time"][:16],
            r["cpu"],
            r["threads"],
            r["repeats"],
            f"{r['bare_tspin_steps_per_s']:.1f}",
            " / ".join(f"{100 * v:+.1f}%" for v in r["overhead"].values()),
            "yes" if r["overhead_met"] else "NO",
            f"{r['ratio_kit']:.4f} ({r['ratio_bare']:.4f})",
            ("yes" if r["ratio_met"] else "NO") + ("" if r["ratio_bare_met"] else " (bare NO)"),
        ]
        for r in rows
    ]
    heads = ["time (UTC)", "cpu", "threads", "repeats", "bare T-SPIN steps/s", "overhead T-SPIN / SPIN / SFT", "<=2%"]
    print(C.fmt_table(heads + ["T-SPIN/SPIN kit (bare)", "<=1.2x"], table))
    for s in summary:
        d = s["ratio_kit_minus_bare"]
        print(
            f"{s['cpu']}, {s['threads']} thread(s): {s['runs']} runs; overhead <= 2% for every method in "
            f"{s['overhead_met']}; T-SPIN/SPIN <= 1.2x in {s['ratio_met']} (bare loop {s['ratio_bare_met']}); "
            f"kit minus bare T-SPIN/SPIN {d['min']:+.4f} .. {d['max']:+.4f} (median {d['median']:+.4f})"
        )


if __name__ == "__main__":
    main()
