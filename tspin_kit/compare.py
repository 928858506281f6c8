"""The grid runner: methods (and presets) x seeds from one base config, side by side, and their one score table.

`make demo` / `tspin demo` runs pi_0, continued SFT (the control), SPIN, T-SPIN and SFT on 4x the data on the
embedded toy world; the notebooks run their grids through `presets.run_toy_methods`, a thin wrapper over the same
`run_grid`. Every run of a grid starts from the same pi_0 (SFT on the same annotated pairs, cached) and gets the
same iterations, optimiser and sampling settings, so the only difference is the objective (and, for a preset such
as "SFT 4x data", the amount of annotated data: the data-rich reference the paper compares against).

A grid entry is a method of the table of methods (`tspin_kit.methods`) or a preset (`PRESETS`): a method run
with other data or settings. Labels come from the table; a method that does not self-play (SFT) is the control
the self-play methods are compared with, labelled "<label> (control)".

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
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import methods
from .config import RunConfig
from .store import RunRecords, load_run

logger = logging.getLogger(__name__)

__all__ = [
    "PRESETS",
    "ComparisonConfig",
    "Preset",
    "configure",
    "format_table",
    "is_control",
    "label",
    "run_configs",
    "run_grid",
    "run_parallel",
    "score_table",
    "verdict",
]


# ----------------------------------------------------------------------------- grid entries: methods and presets


@dataclass(frozen=True)
class Preset:
    """A grid entry that is not a method of its own: a registered method run with more annotated data."""

    method: str  # a name of the table of methods
    label: str
    data_multiple: int = 1  # annotated pairs x this (a grid's ``data_multiple`` replaces it where given)
    sft_records: bool | None = None  # replaces RunConfig.sft_records where not None


PRESETS: dict[str, Preset] = {
    # the data-rich reference: SFT on 4x the pairs; the report reads only its scores, so no y'/y0 records
    "sft_4x": Preset(method="sft", label="SFT 4x data", data_multiple=4, sft_records=False),
}


def _known(name: str) -> bool:
    if name in PRESETS:
        return True
    try:
        methods.resolve(name)
    except ValueError:
        return False
    return True


def is_control(name: str) -> bool:
    """A registered method that does not self-play (SFT): the control the self-play methods are compared with."""
    return name not in PRESETS and not methods.get(name).self_play


def label(name: str) -> str:
    """How a grid entry is named in tables and reports: a preset's label, else the method's label from the table
    of methods, with " (control)" for a method that does not self-play."""
    if name in PRESETS:
        return PRESETS[name].label
    return methods.label(name) + (" (control)" if _known(name) and is_control(name) else "")


def configure(cfg: RunConfig, name: str, *, data_multiple: int | None = None) -> RunConfig:
    """Set ``cfg`` (in place) up for grid entry ``name``: its method, and for a preset its data and records.

    ``data_multiple`` replaces a preset's own multiple of the annotated pairs (``ComparisonConfig.data_multiple``).
    """
    preset = PRESETS.get(name)
    if preset is None:
        cfg.method.name = name
        return cfg
    cfg.method.name = preset.method
    multiple = preset.data_multiple if data_multiple is None else data_multiple
    if multiple != 1:
        cfg.data.num_examples = (cfg.data.num_examples or 1000) * multiple
    if preset.sft_records is not None:
        cfg.sft_records = preset.sft_records
    return cfg


# ----------------------------------------------------------------------------- the grid


@dataclass
class ComparisonConfig:
    """A grid: every name in ``methods`` (methods of the table or presets) x every seed, from ``base``."""

    base: RunConfig = field(default_factory=RunConfig)
    methods: tuple[str, ...] = ("sft", "spin", "tspin", "sft_4x")
    seeds: tuple[int, ...] = (0,)
    data_multiple: int = 4  # the presets' multiple of the annotated pairs
    out_dir: str = "demo_output"
    workers: int | None = None  # parallel runs; default: one per CPU core (1 runs in this process)

    def __post_init__(self):
        from .config import ConfigError

        known = (*methods.names(), *PRESETS)
        for m in self.methods:
            if not _known(m):
                raise ConfigError(f"compare.methods: unknown method {m!r}; expected some of {', '.join(known)}")
        if not self.seeds:
            raise ConfigError("compare.seeds: expected at least one seed")
        if self.data_multiple < 1:
            raise ConfigError(f"compare.data_multiple = {self.data_multiple}: expected an integer >= 1")


def run_configs(cc: ComparisonConfig) -> dict[tuple[str, int], RunConfig]:
    """One RunConfig per (method or preset, seed), in ``out_dir/runs/seed<s>/<name>``; they differ only where the
    method or preset demands."""
    out = {}
    for seed in cc.seeds:
        for m in cc.methods:
            cfg = configure(copy.deepcopy(cc.base), m, data_multiple=cc.data_multiple)
            cfg.seed = seed
            cfg.run_dir = str(Path(cc.out_dir) / "runs" / f"seed{seed}" / m)
            out[(m, seed)] = cfg
    return out


def _cost(cfg: RunConfig) -> float:
    # cost ~ examples, x2 for self-play (sampling, 2-3 responses per example; measured on the toy: SPIN/T-SPIN
    # 33-37 s, SFT 21 s, SFT 4x 57 s of one core)
    return (cfg.data.num_examples or 1000) * (2.0 if methods.get(cfg.method.name).self_play else 1.0)


def run_grid(
    grid: ComparisonConfig | Mapping[tuple[str, int], RunConfig], *, workers: int | None = None, fresh: bool = False
) -> dict[tuple[str, int], RunRecords]:
    """Run (or resume) every run of a grid and return their records, keyed ``(method or preset, seed)``.

    ``grid``: a `ComparisonConfig` (its runs are `run_configs`), or the configs themselves keyed by
    ``(name, seed)`` (how `presets.run_toy_methods` passes its toy configs). Runs with a ``run_dir`` go through
    `run_parallel` (``workers``, default ``grid.workers``, else one per CPU core; 1 runs them one after the other
    in this process), longest first; a run kept in memory (``run_dir`` None) runs in this process. A finished run
    is reloaded, a half-finished one resumed; ``fresh`` deletes earlier runs first.
    """
    if isinstance(grid, ComparisonConfig):
        configs = run_configs(grid)
        workers = grid.workers if workers is None else workers
    else:
        configs = dict(grid)
    for cfg in configs.values():
        if fresh and cfg.run_dir and (Path(cfg.run_dir) / "manifest.json").is_file():
            shutil.rmtree(cfg.run_dir)
    on_disk = [k for k, c in configs.items() if c.run_dir]
    jobs = [(key, configs[key], label(key[0])) for key in sorted(on_disk, key=lambda k: -_cost(configs[k]))]

    def done(n, total, key, seconds):
        logger.info("[%d/%d] %s, seed %d: %.0f s", n, total, label(key[0]), key[1], seconds)

    if jobs:
        run_parallel(jobs, workers=workers, on_done=done)
    out = {}
    for key, cfg in configs.items():
        if cfg.run_dir:
            out[key] = load_run(cfg.run_dir)
        else:
            from .session import SelfPlaySession

            out[key] = SelfPlaySession(copy.deepcopy(cfg), label=label(key[0])).run()
    return out


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
    s.close_trackers()
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
        except Exception:  # noqa: BLE001, S110 - a full or closed queue must never stop a run
            pass

    return cfg.run_dir, _drive(cfg, label, report)


class _Display:
    """One progress line for several runs: phases done over all runs, and what each active run is doing."""

    def __init__(self, jobs, enabled: bool):
        self.labels = {
            key: f"{label} s{key[1]}" if isinstance(key, tuple) and len(key) > 1 else str(label)
            for key, _, label in jobs
        }
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


def run_parallel(
    jobs: list[tuple[Hashable, RunConfig, str]],
    *,
    workers: int | None = None,
    on_done: Callable[[int, int, Hashable, float], None] | None = None,
) -> dict[Hashable, float]:
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
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(q, threads)
        ) as pool:
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


# ----------------------------------------------------------------------------- the score table


def score_table(runs: Mapping[Hashable, RunRecords]) -> pd.DataFrame:
    """The task score per run (rows) and policy (columns ``pi_0``, ``pi_1``, ...; pi_{t+1} is the policy after
    iteration t): the one table of a comparison's scores.

    ``runs`` keyed ``(method or preset, seed)``, as `run_grid` returns them: one row per method or preset, named by
    `label`, the mean over its seeds. Keyed by labels, as `presets.run_toy_methods` returns them: one row per run.
    """
    from .analysis import policy_scores  # one run's long table: policy, score

    rows: dict[str, list[pd.Series]] = {}
    for key, rec in runs.items():
        row = label(key[0]) if isinstance(key, tuple) else str(key)
        t = policy_scores(rec.metrics)
        rows.setdefault(row, []).append(pd.Series(t["score"].to_numpy(float), index=t["policy"].astype(int).to_numpy()))
    table = pd.DataFrame({row: pd.concat(s, axis=1).mean(axis=1) for row, s in rows.items()}).T
    table = table.reindex(columns=sorted(table.columns))
    table.columns = [f"pi_{int(p)}" for p in table.columns]
    return table


def verdict(records: Mapping[tuple[str, int], RunRecords]) -> list[str]:
    """Plain statements about the outcome of a grid, computed from the numbers (no claim is written in advance).

    ``records`` as `run_grid` returns them. Each self-play method is set against the control (a method that does
    not self-play, `is_control`) where the grid has one.
    """
    table = score_table(records)
    names = list(dict.fromkeys(name for name, _ in records))
    start = table["pi_0"].mean()
    final = table.iloc[:, -1]
    lines = [f"{row}: {start:.3f} -> {v:.3f} ({(v - start) * 100:+.1f} points)" for row, v in final.items()]
    worst = (final - start).min() * 100
    lines.append(f"largest drop below pi_0 at the last iteration: {min(0.0, worst):.1f} points (limit: 5)")
    control = next((n for n in names if is_control(n)), None)
    self_play = [n for n in names if n not in PRESETS and methods.get(n).self_play]
    for name in self_play:
        row = label(name)
        if control is not None:
            ctrl = label(control)
            diff = (final[row] - final[ctrl]) * 100
            if abs(diff) < 2.0:
                lines.append(
                    f"{row} vs {ctrl}: {diff:+.1f} points, within 2 points: self-play does not clearly beat "
                    "the control here."
                )
            elif diff > 0:
                lines.append(f"{row} beats {ctrl} by {diff:.1f} points at the last iteration.")
            else:
                lines.append(f"{row} ends {-diff:.1f} points below {ctrl}: self-play does not beat the control here.")
        scores = table.loc[row].to_numpy()
        lines.append(f"{row} per-iteration changes (points): " + ", ".join(f"{d * 100:+.1f}" for d in np.diff(scores)))
        after = scores[1:]
        lines.append(f"{row} peaks at Iter{int(np.argmax(after))} ({after.max():.3f}) and ends at {after[-1]:.3f}.")
    return lines


def format_table(table: pd.DataFrame) -> str:
    return table.to_string(float_format=lambda v: f"{v:.3f}")
