"""The main job: pi_0, continued SFT (the control), SPIN, T-SPIN and SFT on 4x the data, side by side.

`make demo` / `tspin demo` runs it on the embedded toy world. Every method starts from the same pi_0 (SFT
on the same annotated pairs, cached) and gets the same iterations, optimiser and sampling settings, so the
only difference is the objective (and, for "SFT 4x data", the amount of annotated data: the data-rich
reference the paper compares against).

Defaults (chosen on this toy, stated in docs/departures.md): T-SPIN alpha = 1, beta = 0.1 (the paper's);
SPIN lam = 1 instead of the paper's 0.1, because with 0.1 the toy model's accuracy falls by 15-30 points
within 5 iterations (likelihood displacement; see docs/departures.md); AdamW lr 2e-5, 2 epochs, batch 64.
"""

from __future__ import annotations

import copy
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .config import RunConfig
from .store import RunRecords, load_run

logger = logging.getLogger(__name__)


@dataclass
class ComparisonConfig:
    base: RunConfig = field(default_factory=RunConfig)
    methods: tuple[str, ...] = ("sft", "spin", "tspin", "sft_4x")
    seeds: tuple[int, ...] = (0,)
    data_multiple: int = 4
    out_dir: str = "demo_output"

    def __post_init__(self):
        from .config import METHODS, ConfigError

        for m in self.methods:
            if m not in METHODS and m != "sft_4x":
                raise ConfigError(f"compare.methods: unknown method {m!r}; expected some of {', '.join(METHODS)}, sft_4x")
        if not self.seeds:
            raise ConfigError("compare.seeds: expected at least one seed")
        if self.data_multiple < 1:
            raise ConfigError(f"compare.data_multiple = {self.data_multiple}: expected an integer >= 1")


LABELS = {"sft": "SFT (control)", "spin": "SPIN", "tspin": "T-SPIN", "tspin_no_history": "T-SPIN w/o H-A",
          "tspin_ref": "T-SPIN_ref", "sft_4x": "SFT 4x data"}


def run_configs(cc: ComparisonConfig) -> dict[tuple[str, int], RunConfig]:
    """One RunConfig per (method, seed); they differ only where the method demands."""
    out = {}
    for seed in cc.seeds:
        for m in cc.methods:
            cfg = copy.deepcopy(cc.base)
            cfg.seed = seed
            cfg.method.name = "sft" if m == "sft_4x" else m
            if m == "sft_4x":
                cfg.data.num_examples = (cc.base.data.num_examples or 1000) * cc.data_multiple
            cfg.run_dir = str(Path(cc.out_dir) / "runs" / f"seed{seed}" / m)
            out[(m, seed)] = cfg
    return out


def run_comparison(cc: ComparisonConfig, *, fresh: bool = False) -> dict[tuple[str, int], RunRecords]:
    """Run (or resume) every (method, seed) and return their records. `fresh` deletes earlier runs first."""
    from .session import SelfPlaySession

    configs = run_configs(cc)
    records = {}
    for (m, seed), cfg in configs.items():
        run_dir = Path(cfg.run_dir)
        if fresh and (run_dir / "manifest.json").is_file():
            shutil.rmtree(run_dir)
        logger.info("=== %s, seed %d -> %s", LABELS.get(m, m), seed, run_dir)
        SelfPlaySession(cfg, label=LABELS.get(m, m)).run()
        records[(m, seed)] = load_run(run_dir)
    return records


def score_table(records: dict[tuple[str, int], RunRecords]) -> pd.DataFrame:
    """Rows: methods (plus pi_0); columns: Iter0..Iter{n-1}, the score after each iteration (mean over seeds)."""
    rows = {}
    starts = []
    for (m, seed), r in records.items():
        starts.append(r.initial.get("score", np.nan))
        rows.setdefault(LABELS.get(m, m), []).append(r.metrics.set_index("iteration")["score_after"])
    table = pd.DataFrame({label: pd.concat(s, axis=1).mean(axis=1) for label, s in rows.items()}).T
    table.columns = [f"Iter{int(c)}" for c in table.columns]
    start = pd.DataFrame([[float(np.nanmean(starts))] * table.shape[1]], index=["pi_0 (start)"], columns=table.columns)
    return pd.concat([start, table])


def verdict(records: dict[tuple[str, int], RunRecords]) -> list[str]:
    """Plain statements about the outcome, computed from the numbers (no claim is written in advance)."""
    table = score_table(records)
    start = table.iloc[0, 0]
    lines = []
    final = table.iloc[1:, -1]
    for label, v in final.items():
        lines.append(f"{label}: {start:.3f} -> {v:.3f} ({(v - start) * 100:+.1f} points)")
    worst = (final - start).min() * 100
    lines.append(f"largest drop below pi_0 at the last iteration: {min(0.0, worst):.1f} points (limit: 5)")
    if "T-SPIN" in final and "SFT (control)" in final:
        diff = (final["T-SPIN"] - final["SFT (control)"]) * 100
        if abs(diff) < 2.0:
            lines.append(f"T-SPIN vs the continued-SFT control: {diff:+.1f} points, within 2 points: self-play does not clearly beat the control here.")
        elif diff > 0:
            lines.append(f"T-SPIN beats the continued-SFT control by {diff:.1f} points at the last iteration.")
        else:
            lines.append(f"T-SPIN ends {-diff:.1f} points below the continued-SFT control: self-play does not beat it here.")
    if "T-SPIN" in table.index:
        ts = table.loc["T-SPIN"].to_numpy()
        drops = np.diff(np.concatenate([[start], ts]))
        lines.append("T-SPIN per-iteration changes (points): " + ", ".join(f"{d * 100:+.1f}" for d in drops))
    if "SPIN" in table.index:
        sp = table.loc["SPIN"].to_numpy()
        lines.append(f"SPIN peaks at Iter{int(np.argmax(sp))} ({sp.max():.3f}) and ends at {sp[-1]:.3f}.")
    return lines


def format_table(table: pd.DataFrame) -> str:
    return table.to_string(float_format=lambda v: f"{v:.3f}")
