"""Run records of the documented schema without training a model: for benchmarks, demos and tests.

The widgets and the analysis layer read ``RunRecords`` (``docs/architecture.md``). Benchmarks, demos
and tests need such records quickly and for any method, so this module makes real-looking ones: the
toy addition world (``49+97=`` -> ``146``, character tokens + EOS), summed log-probs that equal the
sum of their per-token log-probs, a current advantage that shrinks across iterations, a historical
advantage that stays positive for methods with a historical term, degenerate pairs that become more
common, and the reward/log-likelihood misalignment of reference-based rewards.

Only the log-probs are invented (a drift model over iterations). Advantages, rewards, loss terms and
the misalignment flag come from `records.method_columns`, the same pure function the session writes
its records with, at the knobs the run's `MethodConfig` gives each iteration
(`MethodConfig.knobs_at`, schedules included); so the records of any method in the table of methods
(`methods.py`) are what training would have recorded for these log-probs.

``write_run_dir`` lays the records out as ``store.py`` does, so ``tspin_kit.load_run`` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ._version import __version__
from .config import RunConfig
from .records import method_columns
from .store import write_json, write_parquet

__all__ = ["BuiltRecords", "build_records", "read_run_dir", "write_run_dir"]

ROLES = ("annotated", "synthetic", "proto")
SAMPLING = (
    "temperature",
    "top_p",
    "top_k",
    "max_new_tokens",
)  # recorded in the manifest and metrics


@dataclass
class BuiltRecords:
    """Duck-types ``RunRecords``: ``examples``, ``metrics``, ``manifest``, ``run_dir``."""

    examples: pd.DataFrame
    metrics: pd.DataFrame
    manifest: dict = field(default_factory=dict)
    run_dir: str | None = None


def _token_logps(rng, totals, ntokens):
    """Split each summed log-prob into per-token log-probs (Dirichlet shares), as float lists."""
    out = []
    for total, n in zip(totals, ntokens):
        shares = rng.dirichlet(np.full(int(n), 2.0))
        out.append((shares * total).tolist())
    return out


def _wrong(rng, answer: str) -> str:
    """A plausible wrong answer: one digit off, or a dropped/added digit."""
    digits = list(answer)
    k = int(rng.integers(len(digits)))
    choice = rng.integers(3)
    if choice == 0:
        digits[k] = str((int(digits[k]) + int(rng.integers(1, 9))) % 10)
    elif choice == 1 and len(digits) > 1:
        del digits[k]
    else:
        digits.insert(k, str(int(rng.integers(10))))
    out = "".join(digits)
    return out if out != answer else answer + "0"


def _strength(spec) -> float:
    """How fast the drift model's policy improves, from what the method reads (not its name): the
    control (no self-play) slowest, a historical term fastest, a reference in between."""
    if not spec.self_play:
        return 0.3
    if spec.history:
        return 0.8 if spec.reference else 1.0
    return 0.6 if spec.reference else 0.7


def build_records(
    method: str = "tspin",
    *,
    n_examples: int = 60,
    n_iterations: int = 3,
    alpha: float = 1.0,
    beta: float = 0.1,
    lam: float = 1.0,
    seed: int = 0,
    token_lists: bool = True,
) -> BuiltRecords:
    """Records of ``n_iterations`` iterations over ``n_examples`` addition prompts for ``method``
    (any name or alias in the table of methods).

    ``token_lists=False`` leaves the per-token columns as empty lists (fast for 50,000 rows).
    """
    config = RunConfig.from_dict(
        {
            "model": {"name_or_path": "toy"},
            "data": {"source": "toy:addition", "num_examples": n_examples},
            "method": {"name": method, "alpha": alpha, "beta": beta, "lam": lam},
            "train": {"lr": 2e-5, "epochs": 2, "batch_size": 64},
            "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 16},
            "iterations": n_iterations,
            "seed": seed,
        },
        source="synthetic records",
    )
    mc = config.method
    spec = mc.spec
    rng = np.random.default_rng(seed)
    ids = np.arange(n_examples)
    a = rng.integers(10, 100, n_examples)
    b = rng.integers(10, 100, n_examples)
    prompts = [f"{x}+{y}=" for x, y in zip(a, b)]
    answers = [str(x + y) for x, y in zip(a, b)]
    # y0: sampled once from pi_0, fixed; correct for ~30% of prompts.
    proto_ok = rng.random(n_examples) < 0.3
    proto = [ans if ok else _wrong(rng, ans) for ans, ok in zip(answers, proto_ok)]
    strength = _strength(spec)

    frames, metric_rows = [], []
    # Policy scores log pi_t of the annotated responses, drifting over iterations.
    lp_annotated = -rng.gamma(6.0, 1.6, n_examples) - 2.0
    rng.normal(-1.0, 2.0, n_examples)  # unused draw: each seed keeps giving the records it gave
    for t in range(n_iterations):
        p_equal = min(0.05 + 0.12 * t * strength, 0.6)
        syn_ok = rng.random(n_examples) < min(0.15 + 0.12 * t * strength, 0.9)
        syn_equal = syn_ok & (rng.random(n_examples) < p_equal / max(0.15 + 0.12 * t * strength, 1e-9))
        synthetic = []
        for ans, p, ok, eq in zip(answers, proto, syn_ok, syn_equal):
            if eq or ok:
                synthetic.append(ans)
            elif t == 0 and rng.random() < 0.3:
                synthetic.append(p)  # pi_0 resampled its own y0
            else:
                synthetic.append(_wrong(rng, ans))
        synthetic_equals_annotated = np.array([s == y for s, y in zip(synthetic, answers)])
        synthetic_equals_proto = np.array([s == p for s, p in zip(synthetic, proto)])
        proto_equals_annotated = np.array([p == y for p, y in zip(proto, answers)])

        # Before training: u = lp(y) - lp(y') < 0 mostly (y' is the policy's own sample) and its
        # size shrinks over iterations; v = lp(y') - lp(y0) ~ 0 at t = 0, positive afterwards.
        decay = 0.55**t
        u_before = rng.normal(-6.0 * decay, 2.5 * decay + 0.5, n_examples)
        v_before = rng.normal(0.0 if t == 0 else 1.0 + 0.8 * t * (1.0 if spec.history else 0.4), 2.0, n_examples)
        lp_a_before = lp_annotated.copy()
        lp_s_before = lp_a_before - u_before
        lp_p_before = lp_s_before - v_before
        lp_s_before = np.where(synthetic_equals_annotated, lp_a_before, lp_s_before)
        lp_p_before = np.where(proto_equals_annotated, lp_a_before, lp_p_before)
        lp_p_before = np.where(synthetic_equals_proto & ~synthetic_equals_annotated, lp_s_before, lp_p_before)
        # log-probs < 0
        lp_s_before, lp_p_before = np.minimum(lp_s_before, -0.2), np.minimum(lp_p_before, -0.2)

        # Training raises lp(y) and lowers lp(y'); a reference-based reward and the log-likelihood
        # often disagree.
        gain = rng.normal(3.0 * strength * decay + 0.5, 1.0, n_examples)
        lp_a_after = lp_a_before + gain * 0.6
        lp_s_after = lp_s_before - gain * 0.4 + (rng.normal(0, 3.0, n_examples) if spec.reference else 0.0)
        lp_s_after = np.where(synthetic_equals_annotated, lp_a_after, lp_s_after)
        lp_p_after = lp_p_before - rng.normal(0.8 * strength, 0.5, n_examples)
        lp_p_after = np.where(proto_equals_annotated, lp_a_after, lp_p_after)
        lp_a_after, lp_s_after, lp_p_after = (np.minimum(x, -0.1) for x in (lp_a_after, lp_s_after, lp_p_after))

        texts = {"annotated": answers, "synthetic": synthetic, "proto": proto}
        ntok = {r: np.array([len(s) + 1 for s in texts[r]]) for r in ROLES}  # characters + EOS
        before = {"annotated": lp_a_before, "synthetic": lp_s_before, "proto": lp_p_before}
        after = {"annotated": lp_a_after, "synthetic": lp_s_after, "proto": lp_p_after}
        # the method's advantages, rewards and loss terms, as the session records them (no mask)
        method_cols = method_columns(spec, before, after, knobs=mc.knobs_at(t), annotated_tokens=ntok["annotated"])
        cols = {
            "iteration": np.full(n_examples, t),
            "example_id": ids,
            "prompt": prompts,
            **texts,
        }
        for r in ROLES:
            cols[f"{r}_logp_before"] = before[r]
            cols[f"{r}_logp_after"] = after[r]
            cols[f"{r}_ntokens"] = ntok[r]
        for r in ROLES:
            for stage, lp in (("before", before[r]), ("after", after[r])):
                cols[f"{r}_token_logps_{stage}"] = (
                    _token_logps(rng, lp, ntok[r]) if token_lists else [[] for _ in range(n_examples)]
                )
            # the text of each token: the toy tokenizer's characters, then its EOS
            cols[f"{r}_tokens"] = (
                [[*text, "<eos>"] for text in texts[r]] if token_lists else [[] for _ in range(n_examples)]
            )
        # per example, the sampled y' tokens' mean entropy; here the estimate -log pi(y') / tokens
        cols["synthetic_token_entropy"] = -lp_s_before / ntok["synthetic"]
        cols.update(method_cols)
        cols.update(
            synthetic_equals_annotated=synthetic_equals_annotated,
            proto_equals_annotated=proto_equals_annotated,
            synthetic_equals_proto=synthetic_equals_proto,
            synthetic_correct=np.array([s == y for s, y in zip(synthetic, answers)]),
            proto_correct=np.array([p == y for p, y in zip(proto, answers)]),
        )
        df = pd.DataFrame(cols)
        frames.append(df)

        # the metrics the session writes (session.evaluate), under the same names
        row = {"iteration": t, "method": mc.name, "label": mc.name, "score_name": "accuracy"}
        row.update(
            score_before=float(0.3 + 0.1 * t * strength),
            score_after=float(0.3 + 0.1 * (t + 1) * strength),
        )
        for kind in ("current", "historical"):
            for stage in ("before", "after"):
                x = df[f"{kind}_advantage_{stage}"].to_numpy(float)
                row[f"{kind}_advantage_{stage}_mean"] = float(x.mean())
                for q in (10, 50, 90):
                    row[f"{kind}_advantage_{stage}_q{q}"] = float(np.quantile(x, q / 100))
        syn_tokens = df["synthetic_ntokens"].sum()
        row.update(
            misaligned_share=float(df["misaligned"].mean()),
            share_synthetic_equals_annotated=float(synthetic_equals_annotated.mean()),
            share_proto_equals_annotated=float(proto_equals_annotated.mean()),
            share_synthetic_equals_proto=float(synthetic_equals_proto.mean()),
            synthetic_accuracy=float(df["synthetic_correct"].mean()),
            synthetic_token_entropy=float(-df["synthetic_logp_before"].sum() / syn_tokens),
            loss_mean=float(df["loss"].mean()),
            beta=mc.beta_at(t),
            lam=mc.lam_at(t),
            lr=config.train.lr_at(t),
            seconds_generate=1.0,
            seconds_train=2.0,
            seconds_evaluate=0.5,
            **{f"sampling_{k}": getattr(config.sampling, k) for k in SAMPLING},
        )
        metric_rows.append(row)
        lp_annotated = lp_a_after

    sampling = {k: getattr(config.sampling, k) for k in SAMPLING}
    manifest = {
        "config": config.to_dict(),
        "versions": {"tspin_kit": __version__},
        "seeds": {"run": seed, "data": config.data.seed},
        "sampling": sampling,
        "created": "2025-01-01T00:00:00Z",
    }
    return BuiltRecords(pd.concat(frames, ignore_index=True), pd.DataFrame(metric_rows), manifest)


def write_run_dir(records: BuiltRecords, run_dir: str | Path) -> Path:
    """Lay ``records`` out as ``store.py`` does: manifest, proto, per-iteration examples and
    metrics, state."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "manifest.json", records.manifest)
    ex = records.examples
    first = ex[ex["iteration"] == ex["iteration"].min()]
    write_parquet(run_dir / "proto.parquet", first[["example_id", "prompt", "proto"]])
    for t, part in ex.groupby("iteration"):
        d = run_dir / "iterations" / f"iter_{int(t):03d}"
        write_parquet(d / "examples.parquet", part)
        row = records.metrics[records.metrics["iteration"] == t].iloc[0].to_dict()
        write_json(d / "metrics.json", {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
    # every phase done, as a finished run's state.json records it (written last, like the store does)
    done = ["prepare"] + [
        f"{phase}:{int(t)}" for t in sorted(ex["iteration"].unique()) for phase in ("generate", "train", "evaluate")
    ]
    write_json(run_dir / "state.json", {"done": done})
    return run_dir


def read_run_dir(run_dir: str | Path) -> BuiltRecords:
    """Read what ``write_run_dir`` wrote, without the checks of ``tspin_kit.load_run`` (a light
    stand-in)."""
    import json

    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    iters = sorted((run_dir / "iterations").glob("iter_*"))
    examples = pd.concat([pd.read_parquet(d / "examples.parquet") for d in iters], ignore_index=True)
    metrics = pd.DataFrame([json.loads((d / "metrics.json").read_text()) for d in iters])
    return BuiltRecords(examples, metrics, manifest, str(run_dir))
