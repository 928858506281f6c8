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
