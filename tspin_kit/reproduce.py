"""`tspin reproduce`: the papers' claims on the embedded world, methods x seeds x iterations, with verdicts.

    from tspin_kit.reproduce import ReproduceConfig, reproduce
    result = reproduce(ReproduceConfig(seeds=3, iterations=10, out_dir="reproduce_output"))

Arms (all from the same shipped pi_0, same optimiser and sampling; only the objective or the amount
of annotated data differs):

    sft               continued SFT on the same 1000 pairs: the control, always present
    spin              SPIN (lam = 1, docs/departures.md)
    tspin             T-SPIN (alpha = 1, beta = 0.1, beta = 0 at Iter0)
    tspin_no_history  T-SPIN without the historical term (beta = 0)
    tspin_ref         T-SPIN with SPIN's reference-based reward
    sft_4x            SFT on 4x the annotated data
    tspin_25          T-SPIN on 25% of the annotated data (250 pairs), set against `sft` on all of them

Independent runs go to parallel worker processes with the CPU threads split between them (on 2
cores, two 1-thread runs side by side do more per second than one 2-thread run). The run folders are
resumable: a second call with the same out_dir only recomputes the analysis.

Outputs in out_dir: ``reproduce.json`` (every number), ``claims.md`` (tables) and ``reproduce.html``
(self-contained page). The statistics and verdict rules are in `tspin_kit.claims`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import claims as C
from .config import ConfigError, RunConfig

logger = logging.getLogger(__name__)

# The claims' arms (the papers' comparisons, by definition named here): each runs a method of the table of
# methods (tspin_kit/methods.py) with a data size; the labels are the arms', as printed in the results.
ARMS: dict[str, dict] = {
    "sft": {"label": "SFT (control)", "method": "sft"},
    "spin": {"label": "SPIN", "method": "spin"},
    "tspin": {"label": "T-SPIN", "method": "tspin"},
    "tspin_no_history": {"label": "T-SPIN w/o H-A", "method": "tspin_no_history"},
    "tspin_ref": {"label": "T-SPIN_ref", "method": "tspin_ref"},
    "sft_4x": {"label": "SFT 4x data", "method": "sft", "data_multiple": 4.0},
    "tspin_25": {"label": "T-SPIN 25% data", "method": "tspin", "data_multiple": 0.25},
}
# Settings outside the defaults that bear on a claim, run with the same seeds and reported as findings
# (an estimate and interval against the arm named in "versus"; no verdict, since no paper claims them).
# They are not used to pick defaults.
FINDINGS: dict[str, dict] = {
    "tspin_mask": {
        "label": "T-SPIN, y0 == y masked",
        "method": "tspin",
        "versus": "tspin",
        "overrides": {"mask_proto_equal_annotated": True},
        "why": "the historical term pushes y0 down; where y0 == y it pushes the annotated answer down",
    },
    "spin_lam01": {
        "label": "SPIN, lam = 0.1 (paper)",
        "method": "spin",
        "versus": "spin",
        "overrides": {"lam": 0.1},
        "why": "docs/departures.md uses lam = 1 instead of the paper's 0.1",
    },
}
ALL_ARMS = {**ARMS, **FINDINGS}
# Per-example columns the claims read, as (seeds, iterations, examples) arrays.
PAIR_COLUMNS = (
    "misaligned",
    "synthetic_equals_annotated",
    "reward_margin",
    "current_advantage_before",
    "current_advantage_after",
    "historical_advantage_before",
    "historical_advantage_after",
    "annotated_logp_after",
)
POINT_MARGIN = 1.0  # accuracy points: the smallest difference between methods that would matter here
MATCH_MARGIN = 2.0  # points: "matches" in claim (d) means no more than 2 points below


@dataclass
class ReproduceConfig:
    seeds: int = 3
    iterations: int = 10
    task: str = "addition"
    out_dir: str = "reproduce_output"
    runs_dir: str | None = None  # default: out_dir/runs
    arms: tuple[str, ...] = tuple(ARMS)
    findings: tuple[str, ...] = tuple(FINDINGS)
    workers: int | None = None  # parallel runs; default: one per CPU core
    bootstrap: int = 2000
    quick: bool = False  # CI: 2 seeds x 2 iterations, fewer bootstrap draws
    base: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        if self.quick:
            self.seeds, self.iterations, self.bootstrap = (
                min(self.seeds, 2),
                min(self.iterations, 2),
                min(self.bootstrap, 400),
            )
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ConfigError(f"reproduce.arms: unknown {unknown}; expected some of {', '.join(ARMS)}")
        if "sft" not in self.arms:
            raise ConfigError("reproduce.arms: the continued-SFT control 'sft' must be present")
        if self.seeds < 1 or self.iterations < 1:
            raise ConfigError(f"reproduce: seeds = {self.seeds}, iterations = {self.iterations}: expected >= 1")
        unknown = [f for f in self.findings if f not in FINDINGS]
        if unknown:
            raise ConfigError(f"reproduce.findings: unknown {unknown}; expected some of {', '.join(FINDINGS)}")
        if self.bootstrap < 100:
            raise ConfigError(f"reproduce.bootstrap = {self.bootstrap}: expected >= 100 draws")

    @property
    def runs_path(self) -> Path:
        return Path(self.runs_dir) if self.runs_dir else Path(self.out_dir) / "runs"


def run_configs(rc: ReproduceConfig) -> dict[tuple[str, int], RunConfig]:
    out = {}
    base_n = rc.base.data.num_examples or 1000
    for seed in range(rc.seeds):
        for arm in (*rc.arms, *rc.findings):
            spec = ALL_ARMS[arm]
            cfg = copy.deepcopy(rc.base)
            cfg.seed = seed
            cfg.iterations = rc.iterations
            cfg.data.source = f"toy:{rc.task}"
            if rc.task == "scratchpad":
                cfg.sampling.max_new_tokens = max(cfg.sampling.max_new_tokens, 32)
            cfg.method.name = spec["method"]
            for k, v in spec.get("overrides", {}).items():
                setattr(cfg.method, k, v)
            cfg.data.num_examples = int(round(base_n * spec.get("data_multiple", 1.0)))
            if not cfg.method.spec.self_play:
                cfg.sft_records = arm == "sft"  # the control's u and v are read by the claims; 4x-data SFT's by nothing
            cfg.keep_weights = "last"
            cfg.run_dir = str(rc.runs_path / f"seed{seed}" / arm)
            out[(arm, seed)] = cfg
    return out


def run_grid(rc: ReproduceConfig, *, echo=print) -> dict[tuple[str, int], float]:
    """Run (or resume) every (arm, seed); returns each run's wall seconds in its worker."""
    configs = run_configs(rc)
    cores = os.cpu_count() or 1
    workers = max(1, min(rc.workers or cores, len(configs)))
    threads = max(1, cores // workers)
    # longest first, so the last runs to finish are short ones (the 4x-data SFT costs about 4 runs)
    order = sorted(configs, key=lambda k: -ALL_ARMS[k[0]].get("data_multiple", 1.0))
    seconds: dict[tuple[str, int], float] = {}
    echo(
        f"reproduce: {len(configs)} runs ({len(rc.arms) + len(rc.findings)} arms x {rc.seeds} seeds x "
        f"{rc.iterations} iterations), "
        f"{workers} worker(s) x {threads} thread(s)"
    )
    from .compare import run_parallel

    def done(n, total, key, secs):
        seconds[key] = secs
        echo(f"  [{n}/{total}] {ALL_ARMS[key[0]]['label']}, seed {key[1]}: {secs:.0f} s")

    # the same parallel runner as `tspin demo`: spawned workers, threads split, one progress display
    run_parallel([(k, configs[k], ALL_ARMS[k[0]]["label"]) for k in order], workers=workers, on_done=done)
    return seconds


# ----------------------------------------------------------------------------- arrays from records


def score_cube(records: list) -> np.ndarray:
    """(seeds, 1 + iterations, problems): per-problem score of pi_0 and of the policy after each iteration."""
    cubes = []
    for r in records:
        h = r.heldout
        if h is None or len(h) == 0:
            raise ValueError(f"{r.run_dir}: no per-problem scores (heldout.parquet); rerun with tspin-kit >= 0.2")
        table = h.pivot(index="iteration", columns="problem_id", values="value").sort_index()
        cubes.append(table.to_numpy(float))
    return np.stack(cubes)


def pair_cube(records: list, column: str) -> np.ndarray:
    """(seeds, iterations, examples) of one per-example column."""
    out = []
    for r in records:
        e = r.examples
        table = e.pivot(index="iteration", columns="example_id", values=column).sort_index()
        out.append(table.to_numpy(float))
    return np.stack(out)


# ----------------------------------------------------------------------------- the claims


def evaluate(
    scores: dict[str, np.ndarray], pairs: dict[str, dict[str, np.ndarray]], *, n_boot: int, seed: int = 0
) -> dict:
    """Every table and claim of the report, from the arrays alone."""
    any_cube = next(iter(scores.values()))
    n_seeds, n_idx, n_problems = any_cube.shape
    n_examples = next(iter(pairs.values()))["misaligned"].shape[2] if pairs else 1
    rs = C.draws(n_seeds, {"problems": n_problems, "examples": n_examples}, n_boot, seed)
    halves = C.problem_halves(n_problems, seed)
    T = n_idx - 1

    # score table: mean and interval per arm and policy (pi_0, after Iter0, ...)
    table = {}
    for arm, cube in scores.items():
        curves = np.array([C.curve(cube, r) for r in rs])
        lo, hi = np.quantile(curves[1:], [0.025, 0.975], axis=0)
        table[arm] = {
            "label": ALL_ARMS[arm]["label"],
            "mean": curves[0].tolist(),
            "low": lo.tolist(),
            "high": hi.tolist(),
            "per_seed": cube.mean(axis=2).tolist(),
            "peak_iteration": C.peak_iteration(cube),
        }

    def final(arm):
        return lambda r: C.to_points(C.curve(scores[arm], r)[-1])

    def diff(f, g):
        return lambda r: f(r) - g(r)

    def est(name, fn, rule, margin, unit="points"):
        e, lo, hi = C.bootstrap(fn, rs)
        return C.Estimate(name, e, lo, hi, rule(lo, hi, margin), unit, margin)

    out_claims: list[C.Claim] = []
    have = set(scores)

    # (a) SPIN peaks early and ends below its peak; T-SPIN does not
    if {"spin", "tspin"} <= have and T >= 2:
        drop = {a: (lambda r, a=a: C.to_points(C.peak_drop(scores[a], r, halves))) for a in ("spin", "tspin")}
        parts = [
            est("SPIN: peak minus last iteration (cross-fitted)", drop["spin"], C.verdict_positive, POINT_MARGIN),
            est("SPIN's drop minus T-SPIN's drop", diff(drop["spin"], drop["tspin"]), C.verdict_positive, POINT_MARGIN),
        ]
        tdrop = est("T-SPIN: peak minus last iteration (cross-fitted)", drop["tspin"], C.verdict_positive, POINT_MARGIN)
        verdict = C.combine([p.verdict for p in parts])
        peak = table["spin"]["peak_iteration"]
        notes = [
            f"SPIN's mean curve peaks at Iter{peak} of Iter0..Iter{T - 1}; T-SPIN's at "
            f"Iter{table['tspin']['peak_iteration']}.",
            f"T-SPIN's own drop: {tdrop.estimate:+.1f} [{tdrop.low:+.1f}, {tdrop.high:+.1f}] points.",
        ]
        if verdict == C.REPRODUCED and peak >= T // 2:
            verdict = C.INCONCLUSIVE
            notes.append("SPIN ends below its peak, but the peak is not early (second half of the iterations).")
        out_claims.append(
            C.Claim("a", "SPIN peaks early and ends below its peak; T-SPIN does not", verdict, parts + [tdrop], notes)
        )
    elif {"spin", "tspin"} <= have:
        out_claims.append(
            C.Claim(
                "a",
                "SPIN peaks early and ends below its peak; T-SPIN does not",
                C.INCONCLUSIVE,
                [],
                ["needs at least 2 iterations"],
            )
        )

    def beats(cid, a, b, text):
        if {a, b} <= have:
            e = est(
                f"{ARMS[a]['label']} minus {ARMS[b]['label']}, last iteration",
                diff(final(a), final(b)),
                C.verdict_positive,
                POINT_MARGIN,
            )
            out_claims.append(C.Claim(cid, text, e.verdict, [e]))

    beats("b", "tspin", "tspin_no_history", "T-SPIN beats its no-history ablation (T-SPIN w/o H-A)")
    beats("c", "tspin", "tspin_ref", "T-SPIN beats T-SPIN_ref (reference-free reward helps)")
    if {"tspin_25", "sft"} <= have:
        e = est(
            "T-SPIN on 25% minus SFT on 100%, last iteration",
            diff(final("tspin_25"), final("sft")),
            C.verdict_noninferior,
            MATCH_MARGIN,
        )
        out_claims.append(
            C.Claim(
                "d",
                "T-SPIN on 25% of the data matches or beats SFT on all of it",
                e.verdict,
                [e],
                [f"'matches' = no more than {MATCH_MARGIN:g} points below"],
            )
        )

    # (e) misalignment, over all pairs and over non-degenerate pairs (y' != y), averaged over iterations
    if {"spin", "tspin"} <= have:

        def mis_share(arm, nondeg):
            p = pairs[arm]
            mask = (p["synthetic_equals_annotated"] < 0.5) if nondeg else np.ones_like(p["misaligned"], bool)
            return lambda r: 100.0 * float(np.nanmean(C.masked_curve(p["misaligned"], mask, r)))

        parts = [
            est(
                "SPIN minus T-SPIN misaligned share, all pairs",
                diff(mis_share("spin", False), mis_share("tspin", False)),
                C.verdict_positive,
                POINT_MARGIN,
                "percentage points",
            ),
            est(
                "SPIN minus T-SPIN misaligned share, non-degenerate pairs",
                diff(mis_share("spin", True), mis_share("tspin", True)),
                C.verdict_positive,
                POINT_MARGIN,
                "percentage points",
            ),
        ]
        tspin_max = float(np.nanmax(pairs["tspin"]["misaligned"]))
        notes = [
            f"T-SPIN's misaligned share is {100 * np.nanmean(pairs['tspin']['misaligned']):.2f}%: its reward is "
            "alpha * log pi, so the reward margin and the likelihood margin always share a sign "
            "(zero by construction" + ("" if tspin_max == 0 else ", yet a non-zero value was recorded: check") + ")."
        ]
        out_claims.append(
            C.Claim(
                "e",
                "The reward/likelihood misalignment share is higher for SPIN than for T-SPIN",
                C.combine([p.verdict for p in parts]),
                parts,
                notes,
            )
        )

    # (f) what vanishes
    def first_minus_last(values, mask_fn, arm, name, unit, sign=+1):
        p = pairs[arm]

        def f(r):
            c = C.masked_curve(p[values], mask_fn(p), r)
            return sign * float(c[0] - c[-1])

        return est(name, f, C.verdict_positive, 0.0, unit)

    every = lambda p: np.ones_like(p["misaligned"], bool)  # noqa: E731
    nondeg = lambda p: p["synthetic_equals_annotated"] < 0.5  # noqa: E731
    if "spin" in have and T >= 2:
        e = first_minus_last(
            "reward_margin", every, "spin", "SPIN reward margin after training, Iter0 minus last", "nats"
        )
        out_claims.append(C.Claim("f1", "SPIN's reward margin after training decays over iterations", e.verdict, [e]))
        parts = [
            first_minus_last(
                "synthetic_equals_annotated", every, a, f"{ARMS[a]['label']}: last minus Iter0", "share", sign=-1
            )
            for a in ("spin", "tspin")
            if a in have
        ]
        for p in parts:
            p.estimate, p.low, p.high = 100 * p.estimate, 100 * p.low, 100 * p.high
            p.unit = "percentage points"
        out_claims.append(
            C.Claim(
                "f2",
                "The degenerate share (y' == y) grows over iterations",
                C.combine([p.verdict for p in parts]),
                parts,
            )
        )
        e = first_minus_last(
            "current_advantage_before", nondeg, "spin", "SPIN: u at generation over y' != y, Iter0 minus last", "nats"
        )
        out_claims.append(
            C.Claim("f3", "The current advantage u over non-degenerate pairs shrinks (SPIN)", e.verdict, [e])
        )
    if {"tspin", "sft"} <= have and T >= 2:

        def v_mean(arm):
            p = pairs[arm]
            return lambda r: float(np.nanmean(C.masked_curve(p["historical_advantage_after"], every(p), r)[1:]))

        e = est(
            "T-SPIN's v after training minus the SFT control's, mean over Iter1..",
            diff(v_mean("tspin"), v_mean("sft")),
            C.verdict_positive,
            0.0,
            "nats",
        )
        out_claims.append(
            C.Claim(
                "f4",
                "T-SPIN's historical advantage v exceeds the same v in the SFT control "
                "(the historical term at work, not only drift away from pi_0)",
                e.verdict,
                [e],
            )
        )

    # findings: settings outside the defaults, each against its default arm and the SFT control
    findings = []
    for arm, spec in FINDINGS.items():
        if arm not in have or spec["versus"] not in have:
            continue
        parts = []
        for other in (spec["versus"], "sft"):
            if other in have:
                e, lo, hi = C.bootstrap(diff(final(arm), final(other)), rs)
                parts.append(
                    {
                        "name": f"{spec['label']} minus {ALL_ARMS[other]['label']}, last iteration",
                        "estimate": e,
                        "low": lo,
                        "high": hi,
                        "unit": "points",
                    }
                )
        findings.append(
            {
                "id": arm,
                "label": spec["label"],
                "why": spec["why"],
                "parts": parts,
                "final": table[arm]["mean"][-1],
                "peak": max(table[arm]["mean"][1:]),
                "peak_iteration": table[arm]["peak_iteration"],
            }
        )

    # per-iteration vanishing table (point estimates)
    vanishing = {}
    ident = rs[0]
    for arm, p in pairs.items():
        ones = every(p)
        vanishing[arm] = {
            "label": ALL_ARMS[arm]["label"],
            "degenerate_share": C.masked_curve(p["synthetic_equals_annotated"], ones, ident).tolist(),
            "u_before_all": C.masked_curve(p["current_advantage_before"], ones, ident).tolist(),
            "u_before_nondegenerate": C.masked_curve(p["current_advantage_before"], nondeg(p), ident).tolist(),
            "reward_margin_after": C.masked_curve(p["reward_margin"], ones, ident).tolist(),
            "v_after": C.masked_curve(p["historical_advantage_after"], ones, ident).tolist(),
            "misaligned_share": C.masked_curve(p["misaligned"], ones, ident).tolist(),
            "misaligned_share_nondegenerate": C.masked_curve(p["misaligned"], nondeg(p), ident).tolist(),
            "annotated_logp_after": C.masked_curve(p["annotated_logp_after"], ones, ident).tolist(),
        }
    return {
        "scores": table,
        "claims": [c.to_dict() for c in out_claims],
        "findings": findings,
        "vanishing": vanishing,
        "bootstrap": {"draws": n_boot, "seed": seed, "resamples": "seeds, then test problems / training examples"},
    }


def _nan_to_none(x):
    if isinstance(x, float) and (np.isnan(x) or np.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


def analyse(rc: ReproduceConfig, seconds: dict | None = None) -> dict:
    """Read every run of the grid and compute the result (no training)."""
    from .store import load_run

    configs = run_configs(rc)
    records = {key: load_run(cfg.run_dir) for key, cfg in configs.items()}
    scores, pairs = {}, {}
    for arm in (*rc.arms, *rc.findings):
        runs = [records[(arm, s)] for s in range(rc.seeds)]
        scores[arm] = score_cube(runs)
        if ALL_ARMS[arm].get("data_multiple", 1.0) == 1.0:  # paired by example id with the other 1x arms
            pairs[arm] = {c: pair_cube(runs, c) for c in PAIR_COLUMNS}
    result = evaluate(scores, pairs, n_boot=rc.bootstrap)
    first = records[("sft", 0)]
    result["pi0"] = {"score": float(first.initial.get("score", float("nan"))), **first.initial.get("pi0", {})}
    result["alarms"] = _alarm_validation([records[k] for k in records], rc)
    result["settings"] = {
        "seeds": list(range(rc.seeds)),
        "iterations": rc.iterations,
        "task": rc.task,
        "arms": list(rc.arms),
        "findings": list(rc.findings),
        "quick": rc.quick,
        "bootstrap": rc.bootstrap,
        "eval_size": int(scores["sft"].shape[2]),
        "base_config": first.manifest["config"],
    }
    if seconds:
        result["run_seconds"] = {f"{a}/seed{s}": v for (a, s), v in seconds.items()}
    return result


def _alarm_validation(records: list, rc: ReproduceConfig) -> dict | None:
    try:
        from .alarms import validate_alarms
    except ImportError:
        return None
    table = validate_alarms(records, drop_points=2.0, horizon=2)
    return {"drop_points": 2.0, "horizon": 2, "table": json.loads(table.reset_index().to_json(orient="records"))}


def reproduce(rc: ReproduceConfig, *, command: str | None = None, echo=print) -> dict:
    """Run the grid (resuming what exists), analyse it, write JSON, markdown and HTML into rc.out_dir."""
    from .toy import machine_info

    out = Path(rc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    code = code_version()  # before the runs: the code they import
    t0 = time.perf_counter()
    seconds = run_grid(rc, echo=echo)
    wall = time.perf_counter() - t0
    result = analyse(rc, seconds)
    cores = os.cpu_count() or 1
    workers = max(1, min(rc.workers or cores, rc.seeds * (len(rc.arms) + len(rc.findings))))
    result = {
        "command": command or "tspin_kit.reproduce.reproduce(...)",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "code": code,
        "machine": {
            **machine_info(),
            "threads": max(1, cores // workers),
            "workers": workers,
            "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
        "wall_seconds": wall,
        **result,
    }
    write_outputs(result, out)
    return result


def code_version() -> dict:
    """The commit the package was run from and whether its tree had uncommitted changes (None outside git)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "tspin_kit"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def write_outputs(result: dict, out: Path) -> None:
    from .reproduce_render import render_html, render_markdown
    from .store import write_text

    result = _nan_to_none(result)
    write_text(out / "reproduce.json", json.dumps(result, indent=1) + "\n")
    write_text(out / "claims.md", render_markdown(result))
    write_text(out / "reproduce.html", render_html(result))


def command_line(argv: list[str] | None = None) -> str:
    return "tspin " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))


__all__ = [
    "ARMS",
    "FINDINGS",
    "ReproduceConfig",
    "reproduce",
    "run_configs",
    "run_grid",
    "analyse",
    "evaluate",
    "write_outputs",
]
