"""Instability alarms: warning signs of self-play going wrong, read from a run's records alone.

No model is loaded: every flag is a pure function of ``RunRecords.examples`` (one row per example
per iteration) and ``RunRecords.metrics`` (one row per iteration), so it works on a finished run
directory, on a live session's ``records()`` and on records built in a test.

Four flags, each evaluated at every recorded iteration t (an alarm at t uses what is known once
pi_{t+1} is trained, i.e. the iteration's after-training columns):

- ``reward_margin_collapse`` (SPIN, T-SPIN_ref): the mean reward margin after training,
  r(y) - r(y') with r = lam * (log pi_{t+1} - log pi_t), has shrunk toward 0 relative to the run's
  first iteration. SPIN's objective l(r(y) - r(y')) stops separating y from y' (method.md, flaw i).
- ``likelihood_displacement``: the mean log pi(y) of the annotated responses after training has
  fallen below its best so far (pi_0 included). A higher reward does not mean a higher log pi
  (method.md, flaw ii); generation follows log pi.
- ``degenerate_share``: the share of pairs with y' == y has reached a level where the current
  advantage's term is the constant l(0) for most of the data (no gradient for SPIN).
- ``misalignment_rising``: the share of examples whose reward ranks y above y' while log pi_{t+1}
  ranks y below y' has risen above its lowest earlier value.

Which methods each flag watches: the reward-margin flag only where the reward is reference-based
(its margin starts each iteration at 0, so the after-training margin measures how far training
moved; T-SPIN's reward margin is alpha * u, watched by the advantage views instead). The degenerate
and misalignment flags skip SFT (y' plays no part in its loss, and it has no reward).

Each ``Alarm`` carries the ``example_ids`` behind it (the triplets a browser should open), ordered
most telling first. ``validate_alarms`` scores the flags against later drops of the task score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from . import methods as M

ALARM_NAMES = ("reward_margin_collapse", "likelihood_displacement", "degenerate_share", "misalignment_rising")
SEVERITIES = ("warning", "critical")


@dataclass(frozen=True)
class AlarmThresholds:
    """When each flag fires ("warning") and when it is "critical". Defaults and why:"""

    # The demo's SPIN margin went 0.37 at Iter0 to about 0.11 later (a ratio of 0.3, issue 7): at
    # that size l(margin) is within 0.05 of log 2, i.e. training barely separates y from y'.
    # A ratio of 0.1 leaves the loss practically at its constant l(0) = log 2.
    margin_collapse_ratio: float = 0.3
    margin_collapse_ratio_critical: float = 0.1
    # Below this first-iteration margin (in reward units) a ratio means nothing: no baseline to collapse from.
    margin_min_baseline: float = 1e-3
    # A drop of 0.5 nats in the mean summed log pi(y) means the typical annotated response became
    # exp(-0.5) = 0.61 times as likely as at its best; 2 nats (x0.14) is a displacement no
    # optimisation noise explains.
    displacement_nats: float = 0.5
    displacement_nats_critical: float = 2.0
    # At 80% of pairs y' == y, SPIN learns from one example in five (T-SPIN keeps the historical
    # term); the demo reached 81% by its last iterations. 95%: almost no current-advantage signal left.
    degenerate_share: float = 0.8
    degenerate_share_critical: float = 0.95
    # A share's sampling noise is at most sqrt(0.25 / n), about 0.03 at n = 300 examples; a rise
    # of 0.10 is three times that. 0.25: a quarter more of the data now disagrees (the T-SPIN
    # paper's Fig. 3 found nearly half of SPIN's samples misaligned).
    misalignment_rise: float = 0.10
    misalignment_rise_critical: float = 0.25
    # How many example ids a ranked alarm (margin, displacement) carries: the worst ones.
    top_examples: int = 20

    def __post_init__(self) -> None:
        pairs = (
            ("margin_collapse_ratio", True),
            ("displacement_nats", False),
            ("degenerate_share", False),
            ("misalignment_rise", False),
        )
        for name, lower_is_worse in pairs:
            warn, crit = getattr(self, name), getattr(self, name + "_critical")
            if not (crit <= warn if lower_is_worse else crit >= warn):
                raise ValueError(
                    f"AlarmThresholds.{name}_critical = {crit} must be "
                    f"{'<=' if lower_is_worse else '>='} {name} = {warn}"
                )
        if not 0.0 < self.degenerate_share <= 1.0 or not 0.0 < self.degenerate_share_critical <= 1.0:
            raise ValueError(f"AlarmThresholds.degenerate_share must be in (0, 1], got {self.degenerate_share}")
        if self.displacement_nats <= 0 or self.misalignment_rise <= 0 or self.margin_collapse_ratio >= 1:
            raise ValueError(
                "AlarmThresholds: displacement_nats and misalignment_rise must be > 0, margin_collapse_ratio < 1"
            )
        if self.top_examples < 1:
            raise ValueError(f"AlarmThresholds.top_examples must be >= 1, got {self.top_examples}")


@dataclass(frozen=True)
class Alarm:
    """One flag at one iteration of one run, with the numbers behind it and the triplets to look at."""

    name: str  # one of ALARM_NAMES
    iteration: int  # t: the records of iteration t (pi_t -> pi_{t+1}) raised it
    run: str  # the run's label
    severity: str  # "warning" or "critical"
    message: str  # one line, starting "it{t}: ", with the numbers
    example_ids: tuple[int, ...] = field(default=())  # most telling first
    value: float = math.nan  # the quantity that tripped the flag
    baseline: float = math.nan  # what it was compared with

    def __str__(self) -> str:
        return f"[{self.severity}] {self.run}: {self.message}"


# ----------------------------------------------------------------------------- helpers


def method_of(records: Any) -> str:
    config = (getattr(records, "manifest", None) or {}).get("config", {}) or {}
    return str((config.get("method") or {}).get("name", "tspin"))


def run_label(records: Any) -> str:
    """The manifest's ``label``, else the method's name (plus the seed when the config has one)."""
    manifest = getattr(records, "manifest", None) or {}
    if manifest.get("label"):
        return str(manifest["label"])
    name = M.label(method_of(records))
    seed = (manifest.get("config") or {}).get("seed")
    return f"{name} (seed {seed})" if seed is not None else name


def _ids(frame: pd.DataFrame) -> tuple[int, ...]:
    return tuple(int(e) for e in frame["example_id"])


def _severity(value: float, critical: float, lower_is_worse: bool) -> str:
    return "critical" if (value <= critical if lower_is_worse else value >= critical) else "warning"


# ----------------------------------------------------------------------------- the four flags


def _reward_margin_collapse(by_t, label, method, th) -> list[Alarm]:
    if not M.get(method).reference:  # the margin of a log-ratio reward to pi_t is what collapses
        return []
    iters = list(by_t)
    t0 = iters[0]
    m0 = float(by_t[t0]["reward_margin"].mean())
    if not math.isfinite(m0) or m0 < th.margin_min_baseline:
        return []
    out = []
    for t in iters[1:]:
        part = by_t[t]
        m = float(part["reward_margin"].mean())
        if not math.isfinite(m):
            continue
        ratio = m / m0
        if ratio <= th.margin_collapse_ratio:
            worst = part.sort_values(["reward_margin", "example_id"]).head(th.top_examples)
            out.append(
                Alarm(
                    "reward_margin_collapse",
                    t,
                    label,
                    _severity(ratio, th.margin_collapse_ratio_critical, True),
                    f"it{t}: {M.label(method)}'s reward margin after training fell to {m:.2f} "
                    f"(from {m0:.2f} at it{t0}, {ratio:.0%} of it)",
                    _ids(worst),
                    m,
                    m0,
                )
            )
    return out


def _likelihood_displacement(by_t, label, method, th) -> list[Alarm]:
    # The sequence of policies pi_t0, pi_t0+1, ...: log pi_t0(y) from the first iteration's
    # "before" column, then each iteration's "after" column (log pi_{t+1}(y)).
    iters = list(by_t)
    first = by_t[iters[0]].set_index("example_id")["annotated_logp_before"]
    points = [(f"pi_{iters[0]}", first)] + [
        (f"pi_{t + 1}", by_t[t].set_index("example_id")["annotated_logp_after"]) for t in iters
    ]
    means = [float(s.mean()) for _, s in points]
    out = []
    for k, t in enumerate(iters, start=1):
        best = int(np.argmax(means[:k]))
        drop = means[best] - means[k]
        if drop >= th.displacement_nats:
            per_example = (points[k][1] - points[best][1]).dropna()
            fell = per_example[per_example < 0].sort_values(kind="stable").head(th.top_examples)
            out.append(
                Alarm(
                    "likelihood_displacement",
                    t,
                    label,
                    _severity(drop, th.displacement_nats_critical, False),
                    f"it{t}: mean log pi(y) of annotated responses after training fell to {means[k]:.2f} nats "
                    f"(from {means[best]:.2f} under {points[best][0]}, -{drop:.2f})",
                    tuple(int(e) for e in fell.index),
                    means[k],
                    means[best],
                )
            )
    return out


def _degenerate_share(by_t, label, method, th) -> list[Alarm]:
    if not M.get(method).self_play:  # a control compares no responses
        return []
    out = []
    for t, part in by_t.items():
        eq = part["synthetic_equals_annotated"].astype(bool)
        share = float(eq.mean())
        if share >= th.degenerate_share:
            out.append(
                Alarm(
                    "degenerate_share",
                    t,
                    label,
                    _severity(share, th.degenerate_share_critical, False),
                    (
                        f"it{t}: y' == y for {share:.0%} of pairs "
                        f"({int(eq.sum())} of {len(part)}; threshold {th.degenerate_share:.0%})"
                    ),
                    _ids(part[eq.to_numpy()].sort_values("example_id")),
                    share,
                    th.degenerate_share,
                )
            )
    return out


def _misalignment_rising(by_t, label, method, th) -> list[Alarm]:
    if not M.get(method).self_play:  # a control compares no responses
        return []
    iters = list(by_t)
    shares = [float(by_t[t]["misaligned"].astype(bool).mean()) for t in iters]
    out = []
    for k in range(1, len(iters)):
        low = int(np.argmin(shares[:k]))
        rise = shares[k] - shares[low]
        if rise >= th.misalignment_rise:
            part = by_t[iters[k]]
            bad = part[part["misaligned"].astype(bool).to_numpy()].sort_values("example_id")
            out.append(
                Alarm(
                    "misalignment_rising",
                    iters[k],
                    label,
                    _severity(rise, th.misalignment_rise_critical, False),
                    f"it{iters[k]}: reward/log pi misalignment rose to {shares[k]:.0%} of examples "
                    f"(from {shares[low]:.0%} at it{iters[low]}, +{rise * 100:.0f} points)",
                    _ids(bad),
                    shares[k],
                    shares[low],
                )
            )
    return out


FLAGS = {
    "reward_margin_collapse": _reward_margin_collapse,
    "likelihood_displacement": _likelihood_displacement,
    "degenerate_share": _degenerate_share,
    "misalignment_rising": _misalignment_rising,
}


def find_alarms(
    records: Any, thresholds: AlarmThresholds = AlarmThresholds(), *, label: str | None = None
) -> list[Alarm]:
    """Every flag that fires in ``records``, sorted by iteration then by ``ALARM_NAMES`` order.

    ``records``: anything with ``examples`` and ``manifest`` (``RunRecords``). ``label`` names the
    run in the alarms (default: the manifest's label, else the method and seed).
    """
    ex = records.examples
    if ex is None or len(ex) == 0:
        return []
    label = label if label is not None else run_label(records)
    method = method_of(records)
    by_t = {int(t): part for t, part in sorted(ex.groupby("iteration"), key=lambda kv: kv[0])}
    alarms = [a for flag in FLAGS.values() for a in flag(by_t, label, method, thresholds)]
    order = {n: i for i, n in enumerate(ALARM_NAMES)}
    return sorted(alarms, key=lambda a: (a.iteration, order[a.name]))


def alarms_table(alarms: list[Alarm]) -> pd.DataFrame:
    """One row per alarm: run, iteration, name, severity, message, number of triplets behind it."""
    cols = ["run", "iteration", "name", "severity", "message", "triplets"]
    return pd.DataFrame(
        [[a.run, a.iteration, a.name, a.severity, a.message, len(a.example_ids)] for a in alarms], columns=cols
    )


# ----------------------------------------------------------------------------- validation


def _scores(records: Any, scale: float | None) -> pd.Series:
    """score_after per iteration, in points (x100 when every score lies in [0, 1], i.e. a fraction)."""
    m = records.metrics
    if m is None or len(m) == 0 or "score_after" not in m:
        return pd.Series(dtype=float)
    s = m.set_index(m["iteration"].astype(int))["score_after"].astype(float).sort_index()
    if scale is None:
        finite = s[np.isfinite(s)]
        scale = 100.0 if len(finite) and finite.between(0.0, 1.0).all() else 1.0
    return s * scale


def validate_alarms(
    runs: list[Any],
    drop_points: float = 2.0,
    horizon: int = 2,
    *,
    thresholds: AlarmThresholds = AlarmThresholds(),
    score_scale: float | None = None,
) -> pd.DataFrame:
    """How often each alarm came before a drop of the task score, and how many drops none foretold.

    A **drop** after iteration t: ``score_after`` at some t' in (t, t + horizon] is at least
    ``drop_points`` below ``score_after`` at t (the score of pi_{t+1}, the policy the alarm at t
    judged). An alarm at t counts as ``before_drop`` if a drop follows it, else ``without_drop``;
    an alarm at a run's last iteration has no later score and counts as ``unjudged``. A drop at
    iteration d (``score_after`` at d at least ``drop_points`` below that at some t in
    [d - horizon, d)) is ``caught`` by an alarm at such a t, otherwise ``missed``. Scores that are
    fractions (all in [0, 1]) are read as x100 points unless ``score_scale`` says otherwise.

    Returns one row per name in ``ALARM_NAMES`` plus a row ``any`` (all alarms together), columns
    ``fired``, ``before_drop``, ``without_drop``, ``unjudged``, ``drops``, ``drops_caught``,
    ``drops_missed``. ``any``'s ``drops_missed`` is the number of drops no alarm preceded.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    names = list(ALARM_NAMES) + ["any"]
    counts = {n: {"fired": 0, "before_drop": 0, "without_drop": 0, "unjudged": 0, "drops_caught": 0} for n in names}
    n_drops = 0
    for records in runs:
        s = _scores(records, score_scale)
        iters = [int(t) for t in s.index]
        alarms = find_alarms(records, thresholds)

        def dropped(t: int, d: int, s: pd.Series = s) -> bool:
            return t in s.index and d in s.index and s[t] - s[d] >= drop_points

        drops = [d for d in iters if any(dropped(t, d) for t in range(d - horizon, d))]
        n_drops += len(drops)
        for name in names:
            mine = [a for a in alarms if name == "any" or a.name == name]
            c = counts[name]
            c["fired"] += len(mine)
            for a in mine:
                t = a.iteration
                if not any(d in s.index for d in range(t + 1, t + horizon + 1)):
                    c["unjudged"] += 1
                elif any(dropped(t, d) for d in range(t + 1, t + horizon + 1)):
                    c["before_drop"] += 1
                else:
                    c["without_drop"] += 1
            at = {a.iteration for a in mine}
            c["drops_caught"] += sum(any(t in at and dropped(t, d) for t in range(d - horizon, d)) for d in drops)
    rows = []
    for name in names:
        c = counts[name]
        rows.append(
            {
                "alarm": name,
                **{k: c[k] for k in ("fired", "before_drop", "without_drop", "unjudged")},
                "drops": n_drops,
                "drops_caught": c["drops_caught"],
                "drops_missed": n_drops - c["drops_caught"],
            }
        )
    return pd.DataFrame(rows).set_index("alarm")
