"""Words that follow the numbers: sentences about runs, computed from their records.

A notebook that interprets a run prints ``describe_runs(runs)`` instead of hand-written prose, so a
reader whose machine gives other numbers reads sentences about their own numbers. Every sentence
states what the records hold (scores, shares, means) and its direction; none judges a method
beforehand. Which sentences appear depends on what the records contain: a peak sentence only when
the best trained policy is not the last, reward margins only for reference-based rewards (SPIN,
T-SPIN_ref), v against the control only when an SFT run is among ``runs``.

Naming: ``pi_0`` is the starting policy; ``IterT`` is the policy after training iteration t
(pi_{t+1}), as in the papers' tables. u and v are at generation time (log pi_t, the policy that
sampled y'); the reward margin is after training (SPIN's is 0 for every pair before it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tspin_kit import analysis as A

__all__ = ["describe_runs", "score_standard_error"]


def score_standard_error(score: float, n: int) -> float:
    """One standard error of an accuracy measured on ``n`` problems: sqrt(p (1 - p) / n)."""
    p = min(max(float(score), 0.0), 1.0)
    return math.sqrt(p * (1.0 - p) / n)


def describe_runs(runs: dict[str, Any]) -> list[str]:
    """Sentences about ``runs`` (label -> records), runs in the order given.

    First each run's score from pi_0 to its last policy and its peak; then, per run with two or
    more iterations, the share of degenerate pairs (y' == y), u over the non-degenerate pairs and
    over all pairs, and the reward margin after training (reference-based rewards only); then each
    self-play run's v against its SFT control's v (the control of the same seed when there is
    one); last, for accuracy scores, how large one standard error of a score is for the runs'
    eval size.
    """
    runs = {k: r for k, r in runs.items() if r is not None}
    out: list[str] = []
    for label, rec in runs.items():
        out += _score_sentences(label, rec)
    table = A.vanishing_summary({k: r for k, r in runs.items() if r.examples is not None and len(r.examples)})
    for label in runs:
        t = table[table["run"] == label].sort_values("iteration")
        if len(t) < 2:
            continue
        first, last = t.iloc[0], t.iloc[-1]
        span = f"Iter{int(first['iteration'])} to Iter{int(last['iteration'])}"
        out.append(
            f"In {label}, the share of degenerate pairs (y' == y) went from "
            f"{_pct(first['share_synthetic_equals_annotated'])} to "
            f"{_pct(last['share_synthetic_equals_annotated'])} ({span})"
        )
        a, b = first["current_advantage_mean_nondegenerate"], last["current_advantage_mean_nondegenerate"]
        if np.isfinite(a) and np.isfinite(b):
            out.append(
                f"In {label}, mean u at generation over non-degenerate pairs went from {a:.2f} to {b:.2f} "
                f"({_trend(a, b)}); over all pairs from "
                f"{first['current_advantage_mean']:.2f} to {last['current_advantage_mean']:.2f}"
            )
        a, b = first["reward_margin_mean"], last["reward_margin_mean"]
        if A.reference_based(str(first["method"])) and np.isfinite(a) and np.isfinite(b):
            out.append(
                f"In {label}, the mean reward margin after training went from {a:.2f} at Iter{int(first['iteration'])} "
                f"to {b:.2f} at Iter{int(last['iteration'])} ({_trend(a, b)})"
            )
    for label in runs:
        t = table[(table["run"] == label)]
        both = t[np.isfinite(t["historical_advantage_mean"]) & np.isfinite(t["historical_advantage_mean_control"])]
        if both.empty:
            continue
        out.append(
            f"{_poss(label)} v at generation averaged {both['historical_advantage_mean'].mean():+.2f} against "
            f"{both['historical_advantage_mean_control'].mean():+.2f} for {both['control'].iloc[0]}, the SFT control, "
            f"over {_count(len(both), 'iteration')}"
        )
    caveat = _noise_sentence(runs)
    if caveat:
        out.append(caveat)
    return out


def _score_sentences(label: str, rec: Any) -> list[str]:
    scores = A.policy_scores(rec.metrics)
    if len(scores) < 2 or int(scores["policy"].iloc[0]) != 0:
        return []
    accuracy = A.score_name(rec.metrics) == "accuracy"
    s0, last = float(scores["score"].iloc[0]), float(scores["score"].iloc[-1])
    trained = scores.iloc[1:]
    diff = last - s0
    change = f"{diff * 100:+.1f} points" if accuracy else f"{diff:+.3f}"
    if round(diff, 6) == 0:
        out = [f"{label} stayed at pi_0's {s0:.3f}"]
    else:
        out = [f"{label} {'rose' if diff > 0 else 'fell'} from pi_0's {s0:.3f} to {last:.3f} ({change})"]
    if len(trained) >= 2:
        best_i = int(np.argmax(trained["score"].to_numpy()))
        best = float(trained["score"].iloc[best_i])
        best_iter = int(trained["policy"].iloc[best_i]) - 1
        last_iter = int(trained["policy"].iloc[-1]) - 1
        if best > last:
            out.append(f"{label} peaked at Iter{best_iter} ({best:.3f}) and ended at {last:.3f} (Iter{last_iter})")
        else:
            out.append(f"{_poss(label)} best score was its last, Iter{last_iter} ({last:.3f})")
    return out


def _noise_sentence(runs: dict[str, Any]) -> str | None:
    """The standard-error caveat, for accuracy scores with a known eval size."""
    finals, sizes, seeds = [], set(), set()
    for rec in runs.values():
        if A.score_name(rec.metrics) != "accuracy":
            continue
        scores = A.policy_scores(rec.metrics)
        n = _eval_size(rec)
        if not len(scores) or not n:
            continue
        finals.append(float(scores["score"].iloc[-1]))
        sizes.add(n)
        seeds.add(A.run_settings(rec)["seed"])
    if not finals or len(sizes) != 1:
        return None
    n = sizes.pop()
    p = float(np.mean(finals))
    if p * (1 - p) > 0:
        what = (
            f"one standard error of a {n}-problem score near {p:.2f} "
            f"is about {score_standard_error(p, n) * 100:.1f} points"
        )
    else:  # a score of 0 or 1 has no spread to estimate from: give the largest one (p = 0.5)
        what = f"one standard error of a {n}-problem score is at most {score_standard_error(0.5, n) * 100:.1f} points"
    if len(seeds) <= 1:
        return f"One seed: differences of a few points are within noise ({what})"
    return f"{len(seeds)} seeds: compare the seeds before reading a trend ({what})"


def _eval_size(rec: Any) -> int | None:
    manifest = getattr(rec, "manifest", None) or {}
    n = manifest.get("eval_size") or ((manifest.get("config") or {}).get("data") or {}).get("eval_size")
    return int(n) if n else None


def _trend(a: float, b: float) -> str:
    """Direction of a change as printed with two decimals (equal there: no direction claimed)."""
    if f"{a:.2f}" == f"{b:.2f}":
        return "unchanged at two decimals"
    return "it shrank" if b < a else "it did not shrink"


def _poss(label: str) -> str:
    return f"{label}'" if label.endswith("s") else f"{label}'s"


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
