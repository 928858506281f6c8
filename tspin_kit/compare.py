"""The main job: pi_0, continued SFT (the control), SPIN, T-SPIN and SFT on 4x the data, side by side.

`make demo` / `tspin demo` runs it on the embedded toy world. Every method starts from the same pi_0 (SFT
on the same annotated pairs, cached) and gets the same iterations, optimiser and sampling settings, so the
only difference is the objective (and, for "SFT 4x data", the amount of annotated data: the data-rich
reference the paper compares against).

Defaults (chosen on this toy, stated in docs/departures.md): T-SPIN alpha = 1, beta = 0.1 (the paper's);
SPIN lam = 1 instead of the paper's 0.1, because with 0.1 the toy model's accuracy falls by 15-30 points
within 5 iterations (likelihood displacement; see docs/departures.md); AdamW lr 2e-5, 2 epochs, batch 64.

The runs are independent, so `run_parallel` (shared with `tspin reproduce`) runs them as worker processes
with the CPU threads split between them (on 2 cores two 1-thread runs side by side do about 1.5x the work
of one 2-thread run), longest first, under one progress display. The SFT runs make y'/y0 records only
where a reader needs them: the control's v is drawn beside the self-play runs' in the report, the 4x-data
run's are read by nothing (`RunConfig.sft_records`).
"""

from __future__ import annotations

import copy
import logging
import os
import queue as queue_mod
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable

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
    workers: int | None = None  # parallel runs; default: one per CPU core (1 runs in this process)

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
                cfg.sft_records = False  # the report reads only its scores
            cfg.run_dir = str(Path(cc.out_dir) / "runs" / f"seed{seed}" / m)
            out[(m, seed)] = cfg
    return out


def run_comparison(cc: ComparisonConfig, *, fresh: bool = False) -> dict[tuple[str, int], RunRecords]:
    """Run (or resume) every (method, seed) and return their records. `fresh` deletes earlier runs first."""
    configs = run_configs(cc)
    for cfg in configs.values():
        run_dir = Path(cfg.run_dir)
        if fresh and (run_dir / "manifest.json").is_file():
            shutil.rmtree(run_dir)
    # longest first, so that the runs share the workers evenly: cost ~ examples, x2 for self-play (sampling,
    # 2-3 responses per example; measured on the toy: SPIN/T-SPIN 33-37 s, SFT 21 s, SFT 4x 57 s of one core)
    cost = {k: (c.data.num_examples or 1000) * (1.0 if c.method.name == "sft" else 2.0) for k, c in configs.items()}
    order = sorted(configs, key=lambda k: -cost[k])
    jobs = [(key, configs[key], LABELS.get(key[0], key[0])) for key in order]

    def done(n, total, key, seconds):
        logger.info("[%d/%d] %s, seed %d: %.0f s", n, total, LABELS.get(key[0], key[0]), key[1], seconds)

    run_parallel(jobs, workers=cc.workers, on_done=done)
    return {key: load_run(configs[key].run_dir) for key in configs}


# ----------------------------------------------------------------------------- parallel runs


def _drive(cfg: RunConfig, label: str, report: Callable[[str, int, int, str], None]) -> float:
    """Run (or resume) one session phase by phase, reporting (event, phases done, phases in all, activity)."""
    from .session import SelfPlaySession

    t0 = time.perf_counter()
    s = SelfPlaySession(cfg, label=label)
    total = 1 + 3 * cfg.iterations

    def done_count() -> int:
        return sum(1 for p in s._done if p == "prepare" or p.split(":")[0] in ("generate", "train", "evaluate"))

    last = [0.0]

    def fine(i, n, desc):  # within a phase: at most a few messages per second
        now = time.perf_counter()
        if now - last[0] >= 0.25 or i >= n:
            last[0] = now
            report("progress", done_count(), total, f"{desc} {i}/{n}")

    if s.next_phase == "prepare":
        report("progress", 0, total, "prepare")
        s.prepare(fine)
    report("progress", done_count(), total, s.next_phase)
    while s.next_phase != "done":
        getattr(s, s.next_phase)(fine)
        report("progress", done_count(), total, s.next_phase)
    return time.perf_counter() - t0


_QUEUE = None  # the parent's progress queue, in each worker process


def _init_worker(q, threads: int) -> None:
    global _QUEUE
    _QUEUE = q
    import torch

    os.environ["TSPIN_PROGRESS"] = "0"  # one display, in the parent
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _worker(key, cfg_dict: dict, label: str) -> tuple[str, float]:
    cfg = RunConfig.from_dict(cfg_dict)

    def report(event, done, total, what):
        try:
            _QUEUE.put_nowait((key, done, total, what))
        except Exception:  # noqa: BLE001 - a full or closed queue must never stop a run
            pass

    return cfg.run_dir, _drive(cfg, label, report)


class _Display:
    """One progress line for several runs: phases done over all runs, and what each active run is doing."""

    def __init__(self, jobs, enabled: bool):
        self.labels = {key: f"{label} s{key[1]}" if isinstance(key, tuple) and len(key) > 1 else str(label)
                       for key, _, label in jobs}
        self.totals = {key: 1 + 3 * cfg.iterations for key, cfg, _ in jobs}
        self.done = {key: 0 for key, _, _ in jobs}
        self.what: dict = {}
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=sum(self.totals.values()), desc="runs", leave=False, dynamic_ncols=True)

    def update(self, key, done: int, what: str | None) -> None:
        self.done[key] = done
        if what is None or what == "done":
            self.what.pop(key, None)
        else:
            self.what[key] = what
        if self.bar is not None:
            self.bar.n = sum(self.done.values())
            self.bar.set_postfix_str(" | ".join(f"{self.labels[k]}: {w}" for k, w in self.what.items()), refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_parallel(jobs: list[tuple[Hashable, RunConfig, str]], *, workers: int | None = None,
                 on_done: Callable[[int, int, Hashable, float], None] | None = None) -> dict[Hashable, float]:
    """Run (or resume) independent runs ``(key, config, label)``; returns each run's seconds.

    ``workers`` processes (default: one per CPU core, at most one per run) each take a run at a time in the
    order given (put the long ones first) with ``cores // workers`` torch threads. One worker runs everything
    in this process, with the usual per-phase bars. Several: spawned processes (no state shared with this
    one), each reporting its phases to one progress line drawn here (off with ``TSPIN_PROGRESS=0``).
    ``on_done(n, total, key, seconds)`` is called as each run finishes.
    """
    cores = os.cpu_count() or 1
    workers = max(1, min(workers or cores, len(jobs)))
    threads = max(1, cores // workers)
    seconds: dict = {}
    if workers == 1:
        for n, (key, cfg, label) in enumerate(jobs, 1):
            seconds[key] = _drive(cfg, label, lambda *a: None)
            if on_done:
                on_done(n, len(jobs), key, seconds[key])
        return seconds
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from .progress import in_notebook

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    display = _Display(jobs, enabled=os.environ.get("TSPIN_PROGRESS") != "0" and not in_notebook())
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(q, threads)) as pool:
            futures = {pool.submit(_worker, key, cfg.to_dict(), label): key for key, cfg, label in jobs}
            pending, n = set(futures), 0
            while pending:
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                while True:
                    try:
                        key, done, _total, what = q.get_nowait()
                    except queue_mod.Empty:
                        break
                    if key not in seconds:
                        display.update(key, done, what)
                for fut in finished:
                    key = futures[fut]
                    _, seconds[key] = fut.result()
                    n += 1
                    display.update(key, display.totals[key], None)
                    if on_done:
                        on_done(n, len(jobs), key, seconds[key])
    finally:
        display.close()
        q.close()
    return seconds


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
