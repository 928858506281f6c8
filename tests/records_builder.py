"""Builds run records of the documented schema without training a model.

The widgets and the analysis layer read ``RunRecords`` (``docs/architecture.md``). Tests and the
benchmark need such records quickly and for several methods, so this module makes real-looking
ones: the toy addition world (``49+97=`` -> ``146``, character tokens + EOS), summed log-probs that
equal the sum of their per-token log-probs, a current advantage that shrinks across iterations, a
historical advantage that stays positive for T-SPIN, degenerate pairs that become more common, and
SPIN's reward/log-likelihood misalignment. The loss columns use the same formulas as
``tspin_kit.losses`` (checked in ``tests/test_analysis.py``).

``write_run_dir`` lays the records out as ``store.py`` documents, for browser tests and benchmarks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

ROLES = ("annotated", "synthetic", "proto")


@dataclass
class BuiltRecords:
    """Duck-types ``tspin_kit``'s ``RunRecords``: ``examples``, ``metrics``, ``manifest``, ``run_dir``."""

    examples: pd.DataFrame
    metrics: pd.DataFrame
    manifest: dict = field(default_factory=dict)
    run_dir: str | None = None


def _softplus(x):
    return np.logaddexp(0.0, x)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


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
    """Records of ``n_iterations`` iterations over ``n_examples`` addition prompts for ``method``.

    ``token_lists=False`` leaves the per-token columns as empty lists (fast for 50,000 rows).
    """
    rng = np.random.default_rng(seed)
    ids = np.arange(n_examples)
    a = rng.integers(10, 100, n_examples)
    b = rng.integers(10, 100, n_examples)
    prompts = [f"{x}+{y}=" for x, y in zip(a, b)]
    answers = [str(x + y) for x, y in zip(a, b)]
    # y0: sampled once from pi_0, fixed; correct for ~30% of prompts.
    proto_ok = rng.random(n_examples) < 0.3
    proto = [ans if ok else _wrong(rng, ans) for ans, ok in zip(answers, proto_ok)]
    triplet = method != "sft"
    reference = method in ("spin", "tspin_ref")
    uses_history = method in ("tspin", "tspin_ref")
    strength = {"sft": 0.3, "spin": 0.6, "tspin": 1.0, "tspin_no_history": 0.7, "tspin_ref": 0.8}[method]

    frames, metric_rows = [], []
    # Policy scores log pi_t of the annotated and proto responses, drifting over iterations.
    lp_annotated = -rng.gamma(6.0, 1.6, n_examples) - 2.0
    lp_proto = lp_annotated - rng.normal(-1.0, 2.0, n_examples)
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

        # Before training: u = lp(y) - lp(y') < 0 mostly (y' is the policy's own sample) and its size
        # shrinks over iterations; v = lp(y') - lp(y0) ~ 0 at t = 0, positive afterwards.
        decay = 0.55**t
        u_before = rng.normal(-6.0 * decay, 2.5 * decay + 0.5, n_examples)
        v_before = rng.normal(0.0 if t == 0 else 1.0 + 0.8 * t * (1.0 if uses_history else 0.4), 2.0, n_examples)
        lp_a_before = lp_annotated.copy()
        lp_s_before = lp_a_before - u_before
        lp_p_before = lp_s_before - v_before
        lp_s_before = np.where(synthetic_equals_annotated, lp_a_before, lp_s_before)
        lp_p_before = np.where(proto_equals_annotated, lp_a_before, lp_p_before)
        lp_p_before = np.where(synthetic_equals_proto & ~synthetic_equals_annotated, lp_s_before, lp_p_before)
        lp_s_before, lp_p_before = np.minimum(lp_s_before, -0.2), np.minimum(lp_p_before, -0.2)  # log-probs < 0

        # Training raises lp(y) and lowers lp(y'); SPIN's reward and log-likelihood disagree often.
        gain = rng.normal(3.0 * strength * decay + 0.5, 1.0, n_examples)
        lp_a_after = lp_a_before + gain * 0.6
        lp_s_after = lp_s_before - gain * 0.4 + (rng.normal(0, 3.0, n_examples) if reference else 0.0)
        lp_s_after = np.where(synthetic_equals_annotated, lp_a_after, lp_s_after)
        lp_p_after = lp_p_before - rng.normal(0.8 * strength, 0.5, n_examples)
        lp_p_after = np.where(proto_equals_annotated, lp_a_after, lp_p_after)
        lp_a_after, lp_s_after, lp_p_after = (np.minimum(x, -0.1) for x in (lp_a_after, lp_s_after, lp_p_after))

        u_after = lp_a_after - lp_s_after
        v_after = lp_s_after - lp_p_after
        beta_t = 0.0 if (t == 0 or not uses_history) else beta
        if method == "spin":
            ref = (lp_a_before, lp_s_before, lp_p_before)
            rewards = [lam * (lp_a_after - lp_a_before), lam * (lp_s_after - lp_s_before), lam * (lp_p_after - lp_p_before)]
            margin = rewards[0] - rewards[1]
            loss_current = _softplus(-margin)
            loss_historical = np.zeros(n_examples)
        elif method == "tspin_ref":
            ref = (lp_a_before, lp_s_before, lp_p_before)
            rewards = [lam * (lp_a_after - lp_a_before), lam * (lp_s_after - lp_s_before), lam * (lp_p_after - lp_p_before)]
            margin = rewards[0] - rewards[1]
            loss_current = _softplus(-margin)
            loss_historical = beta_t * _softplus(-(rewards[1] - rewards[2]))
        elif triplet:
            nan = np.full(n_examples, np.nan)
            ref = (nan, nan, nan)
            rewards = [alpha * lp_a_after, alpha * lp_s_after, alpha * lp_p_after]
            margin = rewards[0] - rewards[1]
            loss_current = _softplus(-alpha * u_after)
            loss_historical = beta_t * _softplus(-alpha * v_after)
        else:  # sft: no self-play loss, no reward
            nan = np.full(n_examples, np.nan)
            ref = (nan, nan, nan)
            rewards = [nan, nan, nan]
            margin = nan
            loss_current = -lp_a_after / np.array([len(y) + 1 for y in answers])
            loss_historical = np.zeros(n_examples)

        texts = {"annotated": answers, "synthetic": synthetic, "proto": proto}
        ntok = {r: np.array([len(s) + 1 for s in texts[r]]) for r in ROLES}  # characters + EOS
        before = {"annotated": lp_a_before, "synthetic": lp_s_before, "proto": lp_p_before}
        after = {"annotated": lp_a_after, "synthetic": lp_s_after, "proto": lp_p_after}
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
        for r, lp in zip(ROLES, ref):
            cols[f"ref_{r}_logp"] = lp
        for r, rw in zip(ROLES, rewards):
            cols[f"reward_{r}"] = rw
        logp_margin = lp_a_after - lp_s_after
        cols.update(
            current_advantage_before=lp_a_before - lp_s_before,
            current_advantage_after=u_after,
            historical_advantage_before=lp_s_before - lp_p_before,
            historical_advantage_after=v_after,
            reward_margin=margin,
            loss_current=loss_current,
            loss_historical=loss_historical,
            loss=loss_current + loss_historical,
            misaligned=(np.asarray(margin) > 0) & (logp_margin < 0),
            synthetic_equals_annotated=synthetic_equals_annotated,
            proto_equals_annotated=proto_equals_annotated,
            synthetic_equals_proto=synthetic_equals_proto,
            synthetic_correct=np.array([s == y for s, y in zip(synthetic, answers)]),
            proto_correct=np.array([p == y for p, y in zip(proto, answers)]),
        )
        df = pd.DataFrame(cols)
        frames.append(df)

        row = {"iteration": t}
        for kind in ("current", "historical"):
            for stage in ("before", "after"):
                x = df[f"{kind}_advantage_{stage}"]
                row[f"{kind}_advantage_mean_{stage}"] = float(x.mean())
                for q in (10, 50, 90):
                    row[f"{kind}_advantage_q{q}_{stage}"] = float(x.quantile(q / 100))
        syn_tokens = df["synthetic_ntokens"].sum()
        row.update(
            score_before=float(0.3 + 0.1 * t * strength),
            score_after=float(0.3 + 0.1 * (t + 1) * strength),
            misaligned_share=float(df["misaligned"].mean()),
            share_synthetic_equals_annotated=float(synthetic_equals_annotated.mean()),
            share_proto_equals_annotated=float(proto_equals_annotated.mean()),
            synthetic_token_entropy=float(-df["synthetic_logp_before"].sum() / syn_tokens),
            loss_mean=float(df["loss"].mean()),
            beta=beta_t,
            lr=2e-5,
            seconds_generate=1.0,
            seconds_train=2.0,
            seconds_evaluate=0.5,
        )
        metric_rows.append(row)
        lp_annotated = lp_a_after
        lp_proto = lp_p_after  # noqa: F841 (kept for readability of the drift model)

    manifest = {
        "config": {
            "method": {"name": method, "alpha": alpha, "beta": beta, "lam": lam, "mask_proto_equal_annotated": False},
            "iterations": n_iterations,
            "seed": seed,
            "model": {"name_or_path": "toy"},
            "train": {"lr": 2e-5, "epochs": 2, "batch_size": 64},
            "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 16},
        },
        "versions": {"tspin_kit": "0.1.0"},
        "seeds": {"seed": seed},
        "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 16},
        "created": "2025-01-01T00:00:00Z",
    }
    return BuiltRecords(pd.concat(frames, ignore_index=True), pd.DataFrame(metric_rows), manifest)


def write_run_dir(records: BuiltRecords, run_dir: str | Path) -> Path:
    """Lay ``records`` out as ``store.py`` does: manifest, proto, per-iteration examples + metrics."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "manifest.json").write_text(json.dumps(records.manifest, indent=1))
    ex = records.examples
    first = ex[ex["iteration"] == ex["iteration"].min()]
    first[["example_id", "prompt", "proto"]].to_parquet(run_dir / "proto.parquet", index=False)
    for t, part in ex.groupby("iteration"):
        d = run_dir / "iterations" / f"iter_{int(t):03d}"
        d.mkdir(parents=True, exist_ok=True)
        part.to_parquet(d / "examples.parquet", index=False)
        row = records.metrics[records.metrics["iteration"] == t].iloc[0].to_dict()
        (d / "metrics.json").write_text(json.dumps({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}))
    last = int(ex["iteration"].max())
    (run_dir / "state.json").write_text(json.dumps({"iteration": last, "phase": "evaluate"}))
    return run_dir


def read_run_dir(run_dir: str | Path) -> BuiltRecords:
    """Read what ``write_run_dir`` wrote (stand-in for ``tspin_kit.load_run`` in tests)."""
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    iters = sorted((run_dir / "iterations").glob("iter_*"))
    examples = pd.concat([pd.read_parquet(d / "examples.parquet") for d in iters], ignore_index=True)
    metrics = pd.DataFrame([json.loads((d / "metrics.json").read_text()) for d in iters])
    return BuiltRecords(examples, metrics, manifest, str(run_dir))
