"""benchmarks/_common.py's statistics, against hand-computed values (in a subprocess: importing it silences logging)."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_median_ci_is_the_order_statistics_of_the_binomial_table():
    code = (
        f"import sys, json; sys.path.insert(0, {str(BENCH)!r}); import _common as C; "
        "print(json.dumps([C.median_ci(list(range(1, n + 1))) for n in (5, 6, 30, 90)] "
        "+ [C.median_ci([3.0, -1.0, 7.0, 0.5, 2.0, 9.0, -4.0, 1.0], 0.9)]))"
    )
    got = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    # n = 5: P(X = 0) = 1/32 > 0.025, no 95% interval; n = 6: 1/64 <= 0.025, ranks 1 and 6; n = 30: P(X <= 9) = 0.021,
    # P(X <= 10) = 0.049, ranks 10 and 21 (the textbook table); n = 90: ranks 36 and 55. 90% of n = 8: P(X <= 1) =
    # 9/256 = 0.035 <= 0.05, P(X <= 2) = 37/256 > 0.05: ranks 2 and 7 of the sorted [-4, -1, 0.5, 1, 2, 3, 7, 9]
    assert got == [None, [1, 6], [10, 21], [36, 55], [-1.0, 7.0]]


def test_python_calls_counts_each_call_once_and_not_the_profiler():
    code = (
        f"import sys, json; sys.path.insert(0, {str(BENCH)!r}); import _common as C\n"
        "def g(): return 1\n"
        "def f(): return len([1]) + g()\n"
        "counts = []\n"
        "with C.PythonCalls() as c: pass\n"
        "counts.append(c.calls)\n"
        "with C.PythonCalls() as c: f()\n"
        "counts.append(c.calls)\n"
        "with C.PythonCalls() as c:\n"
        "    for _ in range(3): g()\n"
        "counts.append(c.calls)\n"
        "with C.PythonCalls() as c: sorted([3, 1, 2], key=abs)\n"
        "counts.append(c.calls)\n"
        "print(json.dumps(counts))"
    )
    got = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    # nothing; f, len, g; g three times (calling a class, range, is no "c_call" event); sorted alone (its key, a
    # builtin called from C, is not seen)
    assert got == [0, 3, 3, 1]


def _train_step_run(cpu, threads, overheads, kit, bare):
    methods = {m: {"overhead": {"median": v}, "bare_steps_per_s": {"median": 30.0}} for m, v in overheads.items()}
    return json.dumps(
        {
            "benchmark": "train_step",
            "machine": {"cpu_model": cpu, "torch_num_threads": threads},
            "settings": {"repeats": 90},
            "methods": methods,
            "tspin_over_spin_step_time": {"median": kit},
            "bare_tspin_over_spin_step_time": {"median": bare},
        }
    )


def test_train_step_runs_counts_the_targets_per_machine_and_threads(tmp_path):
    results = tmp_path / "runs.txt"
    results.write_text(
        "# 2026-12-01T01:00:00Z, an old run: cmd\n"
        + _train_step_run("A", 2, {"tspin": 0.05, "spin": 0.0, "sft": 0.0}, 1.30, 1.30)
        + "\n\n# 2026-12-01T02:00:00Z, x: cmd\n"
        + _train_step_run("A", 2, {"tspin": 0.02, "spin": 0.01, "sft": -0.01}, 1.19, 1.21)
        + "\n\n# 2026-12-01T03:00:00Z, x: cmd\n"
        + _train_step_run("A", 2, {"tspin": 0.021, "spin": 0.0, "sft": 0.0}, 1.25, 1.20)
        + "\n\n# 2026-12-01T04:00:00Z, x: cmd\n"
        + _train_step_run("B", 1, {"tspin": 0.0, "spin": 0.0, "sft": 0.0}, 1.20, 1.23)
        + "\n"
    )
    out = subprocess.run(
        [sys.executable, str(BENCH / "train_step_runs.py"), "--since", "2026-12-01T02", str(results)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    got = json.loads(out.splitlines()[0])
    assert [r["time"] for r in got["runs"]] == ["2026-12-01T02:00:00Z", "2026-12-01T03:00:00Z", "2026-12-01T04:00:00Z"]
    a, b = got["summary"]
    counts = ("cpu", "threads", "runs", "overhead_met", "ratio_met", "ratio_bare_met")
    # A: overhead 0.02 <= 0.02 met, 0.021 not; ratio 1.19 met, 1.25 not; bare 1.21 not, 1.20 met
    assert [a[k] for k in counts] == ["A", 2, 2, 1, 1, 1]
    assert [b[k] for k in counts] == ["B", 1, 1, 1, 1, 0]
    d = a["ratio_kit_minus_bare"]  # 1.19 - 1.21, 1.25 - 1.20
    assert [round(d[k], 6) for k in ("min", "median", "max")] == [-0.02, 0.015, 0.05]


def test_train_step_runs_names_the_line_of_a_run_without_its_json(tmp_path):
    results = tmp_path / "runs.txt"
    results.write_text("# 2026-12-01T01:00:00Z, x: cmd\nmethod  rows\n")
    done = subprocess.run(
        [sys.executable, str(BENCH / "train_step_runs.py"), str(results)], capture_output=True, text=True
    )
    assert done.returncode != 0
    assert f"{results}: line 2: expected the JSON line of the run headed at line 1" in done.stderr
