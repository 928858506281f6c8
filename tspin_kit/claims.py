"""The papers' claims as statistics with intervals, and verdicts computed from them.

Pure numpy over arrays built from run records (`tspin_kit.reproduce` builds them):

- ``scores[arm]``: (seeds, 1 + iterations, problems) per-problem task score; index 0 is pi_0, index
  t + 1 the policy after iteration t. Every arm is scored on the same held-out problems, so
  differences between arms are paired by problem.
- ``pairs[arm][column]``: (seeds, iterations, examples) per-example training records (misaligned,
  degenerate, reward margin, current/historical advantage), paired by example id across arms that
  train on the same annotated rows.

An interval is a 95% percentile bootstrap that resamples seeds and, inside them, test problems (or
training examples) with replacement: seeds carry the run-to-run spread of self-play, problems the
finite test set. With 3 seeds the seed part is coarse; the report says so.

A verdict compares the interval with the claim's direction and a margin (the smallest difference that
would matter, stated per claim):
    reproduced      the whole interval lies on the claimed side of 0 (or of -margin, for "matches");
    not reproduced  the interval rules out an effect as large as the margin on the claimed side;
    inconclusive    neither.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


@dataclass
class Estimate:
    """A statistic, its 95% interval and the verdict its interval gives."""

    name: str
    estimate: float
    low: float
    high: float
    verdict: str
    unit: str = ""
    margin: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Claim:
    id: str
    text: str
    verdict: str
    parts: list[Estimate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "text": self.text,
            "verdict": self.verdict,
            "parts": [p.to_dict() for p in self.parts],
            "notes": list(self.notes),
        }


def verdict_positive(low: float, high: float, margin: float) -> str:
    """Claim "statistic > 0"; `margin` > 0 is the smallest effect that would count."""
    if np.isnan(low) or np.isnan(high):
        return INCONCLUSIVE
    if low > 0:
        return REPRODUCED
    if high <= margin:  # with margin 0: the interval admits no positive effect at all
        return NOT_REPRODUCED
    return INCONCLUSIVE


def verdict_noninferior(low: float, high: float, margin: float) -> str:
    """Claim "statistic >= -margin" (A matches or beats B)."""
    if np.isnan(low) or np.isnan(high):
        return INCONCLUSIVE
    if low > -margin:
        return REPRODUCED
    if high < -margin:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def combine(verdicts: list[str]) -> str:
    """A claim made of parts holds when every part holds and fails when any part fails."""
    if any(v == NOT_REPRODUCED for v in verdicts):
        return NOT_REPRODUCED
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    return INCONCLUSIVE


# ----------------------------------------------------------------------------- bootstrap


@dataclass
class Resample:
    """One bootstrap draw: seed indices and, per axis name, unit indices (problems or examples)."""

    seeds: np.ndarray
    units: dict[str, np.ndarray]


def draws(n_seeds: int, units: dict[str, int], n: int, seed: int = 0) -> list[Resample]:
    """`n` draws; draw 0 is the identity (the point estimate is the statistic on the data as they are)."""
    rng = np.random.default_rng(seed)
    out = [Resample(np.arange(n_seeds), {k: np.arange(v) for k, v in units.items()})]
    for _ in range(n - 1):
        out.append(Resample(rng.integers(0, n_seeds, n_seeds), {k: rng.integers(0, v, v) for k, v in units.items()}))
    return out


def interval(values: np.ndarray) -> tuple[float, float, float]:
    """(point estimate = draw 0, 2.5%, 97.5%) over bootstrap values, NaN-tolerant."""
    rest = values[1:][~np.isnan(values[1:])]
    if np.isnan(values[0]) or len(rest) == 0:
        return float(values[0]), float("nan"), float("nan")
    return float(values[0]), float(np.quantile(rest, 0.025)), float(np.quantile(rest, 0.975))


def bootstrap(stat: Callable[[Resample], float], resamples: list[Resample]) -> tuple[float, float, float]:
    return interval(np.array([stat(r) for r in resamples], dtype=float))


# ----------------------------------------------------------------------------- statistics


def curve(cube: np.ndarray, r: Resample, axis: str = "problems") -> np.ndarray:
    """Mean over seeds and units of a (seeds, time, units) cube under a resample -> (time,)."""
    x = cube[r.seeds][:, :, r.units[axis]]
    return x.mean(axis=(0, 2))


def masked_curve(values: np.ndarray, mask: np.ndarray, r: Resample, axis: str = "examples") -> np.ndarray:
    """Mean of `values` where `mask`, over seeds and units, per time step -> (time,); NaN where empty."""
    v = values[r.seeds][:, :, r.units[axis]]
    m = mask[r.seeds][:, :, r.units[axis]] & ~np.isnan(v)
    num = np.where(m, v, 0.0).sum(axis=(0, 2))
    den = m.sum(axis=(0, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def peak_drop(cube: np.ndarray, r: Resample, halves: np.ndarray) -> float:
    """How far the last iteration ends below the peak, cross-fitted so that noise cannot make a peak.

    The peak iteration is picked on one half of the test problems and the drop (score at that
    iteration minus the last score) measured on the other half, both ways, averaged. Picking and
    measuring on the same problems would call any noisy flat curve "peaked" (the max of noise is > 0).
    Only the self-play iterations count (index 1..T of the cube), not pi_0.
    """
    picked = r.units["problems"]
    drops = []
    for h in (0, 1):
        pick = picked[halves[picked] == h]
        meas = picked[halves[picked] != h]
        if len(pick) == 0 or len(meas) == 0:
            return float("nan")
        c_pick = cube[r.seeds][:, 1:, :][:, :, pick].mean(axis=(0, 2))
        c_meas = cube[r.seeds][:, 1:, :][:, :, meas].mean(axis=(0, 2))
        t = int(np.argmax(c_pick))
        drops.append(c_meas[t] - c_meas[-1])
    return float(np.mean(drops))


def peak_iteration(cube: np.ndarray) -> int:
    """Iteration (0-based, self-play only) of the highest mean score on all data."""
    return int(np.argmax(cube[:, 1:, :].mean(axis=(0, 2))))


def problem_halves(n: int, seed: int = 0) -> np.ndarray:
    """A fixed random split of the test problems into two halves (0/1)."""
    h = np.zeros(n, dtype=int)
    h[np.random.default_rng(seed).permutation(n)[: n // 2]] = 1
    return h


def to_points(x: float) -> float:
    return 100.0 * x


__all__ = [
    "Estimate",
    "Claim",
    "REPRODUCED",
    "NOT_REPRODUCED",
    "INCONCLUSIVE",
    "verdict_positive",
    "verdict_noninferior",
    "combine",
    "Resample",
    "draws",
    "interval",
    "bootstrap",
    "curve",
    "masked_curve",
    "peak_drop",
    "peak_iteration",
    "problem_halves",
]
