"""Pure functions from run records to tables: what the widgets and ``tspin report`` plot.

Every function here takes the record DataFrames of ``docs/architecture.md`` (``examples``,
``metrics``) or small objects made from them and returns a pandas DataFrame (or a plain dict).
Nothing here draws, holds state or imports a UI toolkit; ``figures.py`` turns these tables into
plotly figures and ``widgets/`` wires them to sliders.

The loss recomputation calls the very loss functions training uses (``tspin_kit.losses``) on the
cached per-example log-probs, so what the alpha/beta panel shows is what training would compute.

Choices the papers leave open, made here:

- "Which log-probs" for a recomputed loss: ``stage="before"`` uses log pi_t (the policy that
  generated y', i.e. the gradient at the start of the iteration), ``"after"`` uses log pi_{t+1}.
  For SPIN and T-SPIN_ref the reference is pi_t, so at ``"before"`` every reward is 0 (loss log 2);
  their natural default is ``"after"`` (``default_stage``). Reference log-probs missing from a
  reference-free run (NaN) are taken from ``*_logp_before``, which is pi_t by definition.
- The opponent view of Proposition 1 needs several candidates for one prompt scored by one policy.
  The records hold y, y' and y0 under pi_t (``before``) and pi_{t+1} (``after``), and y'_{t-1}
  under pi_t (the previous iteration's ``after``); those are the candidates, with the confidence
  T-SPIN implies, c(z) = alpha_run * log pi(z|x), alpha_run being the alpha the run trained with
  (``opponent_alpha``). Then softmax(c/alpha) = softmax(alpha_run * log pi / alpha), which is the
  policy itself (renormalised over the candidates) at alpha = alpha_run. Runs whose reward is not
  alpha * log pi (SFT, SPIN, T-SPIN_ref) use alpha_run = 1: c = log pi.
- "What vanishes" is split by the degenerate pairs: where y' == y, u and SPIN's reward margin are 0
  by construction, so a mean over all pairs falls whenever the share of such pairs grows, even
  when the pairs that still differ keep (or grow) their advantage. ``degenerate_split`` reports both
  means, and ``vanishing_summary`` puts the four quantities of the vanishing-advantage view (the
  degenerate share, u over all and over y' != y, the reward margin after training, v beside the SFT
  control's v) in one table.
- The policy's token entropy per iteration is the metrics' ``synthetic_token_entropy`` when present;
  otherwise it is estimated as the mean negative log-prob per token of y' under the policy that
  sampled it (an unbiased estimate of the per-token entropy at temperature 1).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from tspin_kit import losses
from tspin_kit import methods as M
from tspin_kit import records as R

__all__ = [
    "ADVANTAGES",
    "ROLES",
    "STAGES",
    "LossInputs",
    "advantage_summary",
    "candidate_confidences",
    "comparison_table",
    "control_label",
    "current_advantage_split",
    "default_loss_kind",
    "default_stage",
    "degenerate_shares",
    "degenerate_split",
    "historical_advantage_table",
    "iteration_examples",
    "iterations_of",
    "loss_inputs",
    "loss_landscape",
    "loss_summary",
    "misalignment_shares",
    "misalignment_table",
    "opponent_alpha",
    "opponent_entropy_curve",
    "opponent_table",
    "recompute_losses",
    "reference_based",
    "reward_margin_split",
    "run_label",
    "run_settings",
    "score_name",
    "policy_scores",
    "synthetic_history",
    "token_entropy_table",
    "token_shading",
    "top_drivers",
    "triplet_detail",
    "triplet_table",
    "vanishing_summary",
]

ROLES = ("annotated", "synthetic", "proto")  # y, y', y0
STAGES = ("before", "after")  # log pi_t (generated y') and log pi_{t+1} (after training)
ADVANTAGES = ("current", "historical")  # u = lp(y) - lp(y'), v = lp(y') - lp(y0)
QUANTILES = (0.1, 0.5, 0.9)


# ---------------------------------------------------------------------------------------------
# Run settings
# ---------------------------------------------------------------------------------------------


def run_config(records: Any):
    """The `RunConfig` a run recorded (``manifest["config"]``), read with the config's own defaults and checks,
    never hand-written ones; a manifest without a config (a test double) gives the defaults."""
    from .config import RunConfig

    manifest = getattr(records, "manifest", None) or {}
    return RunConfig.from_dict(manifest.get("config") or {}, source="manifest")


def run_settings(records: Any) -> dict:
    """The settings a view shows and starts from: method, alpha, beta, lam, sampling, iterations.

    Read through `run_config` (the recorded config with `RunConfig`'s defaults); ``defaults_used`` lists the
    method knobs the manifest did not record.
    """
    manifest = getattr(records, "manifest", None) or {}
    recorded = (manifest.get("config") or {}).get("method") or {}
    cfg = run_config(records)
    m = cfg.method
    examples = getattr(records, "examples", None)
    iters = iterations_of(examples) if examples is not None and len(examples) else []
    seeds = manifest.get("seeds") or {}
    return {
        "method": m.name,
        "alpha": float(m.alpha),
        "beta": float(m.beta),
        "lam": float(m.lam),
        "params": dict(m.params),
        "mask_proto_equal_annotated": bool(m.mask_proto_equal_annotated),
        "sampling": dict(manifest.get("sampling") or dataclasses.asdict(cfg.sampling)),
        "iterations_planned": (manifest.get("config") or {}).get("iterations"),
        "iterations_done": len(iters),
        # the manifest writes seeds["run"]; a bare config's seed otherwise
        "seed": seeds.get("run", (manifest.get("config") or {}).get("seed")),
        "model": cfg.model.name_or_path if "model" in (manifest.get("config") or {}) else None,
        "run_dir": str(getattr(records, "run_dir", "") or ""),
        "defaults_used": [k for k in ("name", "alpha", "beta", "lam") if k not in recorded],
    }


def knobs_used(records: Any, iteration: int, method: str | None = None) -> dict[str, float]:
    """The knob values training used at ``iteration`` for ``method`` (default: the run's): the recorded
    config's schedule (`MethodConfig.knobs_at`), with the per-iteration ``beta`` and ``lam`` the metrics
    recorded taking precedence. For another method than the run's, its knobs read the run's values where it
    has them and their declared defaults otherwise."""
    from . import methods as M

    m = run_config(records).method
    spec = M.get(method or m.name)
    values = {
        "alpha": float(m.alpha),
        "beta": m.beta_at(iteration) if spec.history else float(m.beta),
        "lam": m.lam_at(iteration),
        **m.params,
    }
    if spec.history and not m.spec.history:  # the run had no historical term: show beta as configured
        values["beta"] = float(m.beta)
    metrics = getattr(records, "metrics", None)
    if metrics is not None and len(metrics) and "iteration" in metrics:
        row = metrics[metrics["iteration"] == iteration]
        for k in ("beta", "lam"):
            if len(row) and k in row and (k != "beta" or m.spec.history) and pd.notna(row[k].iloc[0]):
                values[k] = float(row[k].iloc[0])
    return {k: float(values.get(k, M.KNOBS[k].default)) for k in spec.knobs}


def run_label(records: Any, fallback: str = "run") -> str:
    """A short label for legends: the manifest's ``label``, else the method plus the seed."""
    manifest = getattr(records, "manifest", None) or {}
    if manifest.get("label"):
        return str(manifest["label"])
    s = run_settings(records)
    label = s["method"] if s["method"] else fallback
    return f"{label} (seed {s['seed']})" if s["seed"] is not None else label


def default_loss_kind(method: str) -> str:
    """The objective the objective lab starts on for a run of ``method``: the run's own when it compares
    responses, T-SPIN for a run that does not (SFT: a T-SPIN what-if)."""
    spec = M.get(method)
    return spec.name if spec.self_play else "tspin"


def default_stage(kind: str) -> str:
    """Reference-based losses are trivial at ``before`` (policy == reference), so use ``after``."""
    return "after" if M.get(kind).reference else "before"


# ---------------------------------------------------------------------------------------------
# Iterations and per-iteration summaries
# ---------------------------------------------------------------------------------------------


def iterations_of(examples: pd.DataFrame) -> list[int]:
    """Sorted iteration indices present in ``examples``."""
    if examples is None or len(examples) == 0:
        return []
    return sorted(int(t) for t in pd.unique(examples["iteration"]))


def iteration_examples(examples: pd.DataFrame, iteration: int) -> pd.DataFrame:
    """The rows of one iteration, indexed by ``example_id``; raises ``KeyError`` if absent."""
    part = examples[examples["iteration"] == iteration]
    if part.empty:
        raise KeyError(f"iteration {iteration} is not in the records (have {iterations_of(examples)})")
    return part.set_index("example_id", drop=False)


def advantage_summary(examples: pd.DataFrame, stage: str = "before") -> pd.DataFrame:
    """Per iteration and advantage: mean, q10, q50, q90 and n, in nats.

    Columns: ``iteration, advantage ('current'|'historical'), mean, q10, q50, q90, n``.
    ``stage`` picks the log-probs: ``before`` (pi_t, at generation time) or ``after`` (pi_{t+1}).
    """
    _check_stage(stage)
    rows = []
    for t, part in examples.groupby("iteration", sort=True):
        for kind in ADVANTAGES:
            x = part[f"{kind}_advantage_{stage}"].to_numpy(dtype=float)
            x = x[np.isfinite(x)]
            q = np.quantile(x, QUANTILES) if len(x) else [math.nan] * 3
            rows.append(
                {
                    "iteration": int(t),
                    "advantage": kind,
                    "mean": float(x.mean()) if len(x) else math.nan,
                    "q10": float(q[0]),
                    "q50": float(q[1]),
                    "q90": float(q[2]),
                    "n": len(x),
                }
            )
    return pd.DataFrame(rows, columns=["iteration", "advantage", "mean", "q10", "q50", "q90", "n"])


def degenerate_shares(examples: pd.DataFrame) -> pd.DataFrame:
    """Per iteration, the share of degenerate triplets: y' == y, y0 == y, y' == y0 (0..1)."""
    cols = ["synthetic_equals_annotated", "proto_equals_annotated", "synthetic_equals_proto"]
    out = examples.groupby("iteration", sort=True)[cols].mean().astype(float).reset_index()
    out["iteration"] = out["iteration"].astype(int)
    return out


SUBSETS = ("all", "non-degenerate")  # every pair; only the pairs with y' != y


def degenerate_split(examples: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per iteration, ``column`` summarised over all pairs and over the non-degenerate ones (y' != y).

    Columns: ``iteration, subset ('all'|'non-degenerate'), mean, q10, q50, q90, n``; NaN values
    (e.g. SFT's reward margin) are left out, so a column with none finite gives n = 0, mean NaN.
    """
    rows = []
    for t, part in examples.groupby("iteration", sort=True):
        x_all = part[column].to_numpy(dtype=float)
        keep = ~part["synthetic_equals_annotated"].to_numpy(dtype=bool)
        for subset, x in zip(SUBSETS, (x_all, x_all[keep])):
            x = x[np.isfinite(x)]
            q = np.quantile(x, QUANTILES) if len(x) else [math.nan] * 3
            rows.append(
                {
                    "iteration": int(t),
                    "subset": subset,
                    "mean": float(x.mean()) if len(x) else math.nan,
                    "q10": float(q[0]),
                    "q50": float(q[1]),
                    "q90": float(q[2]),
                    "n": len(x),
                }
            )
    return pd.DataFrame(rows, columns=["iteration", "subset", "mean", "q10", "q50", "q90", "n"])


def current_advantage_split(examples: pd.DataFrame, stage: str = "before") -> pd.DataFrame:
    """u = lp(y) - lp(y') per iteration over all pairs and over y' != y (``degenerate_split``)."""
    _check_stage(stage)
    return degenerate_split(examples, f"current_advantage_{stage}")


def reward_margin_split(examples: pd.DataFrame) -> pd.DataFrame:
    """The reward margin r(y) - r(y') after training per iteration, over all pairs and over y' != y.

    For SPIN the reward is lam * (lp_{t+1} - lp_t): 0 for every pair at the start of an iteration,
    so this is what training moved it to. NaN for SFT (n = 0).
    """
    return degenerate_split(examples, "reward_margin")


def reference_based(method: str) -> bool:
    """Whether the method's reward is a log-ratio to pi_t (SPIN, T-SPIN_ref): its margins share a scale."""
    return M.get(method).reference


def is_control(method: str) -> bool:
    """Whether a run of ``method`` is a control (compares no responses: continued SFT)."""
    return not M.get(method).self_play


def control_label(runs: dict[str, Any], for_run: str | None = None) -> str | None:
    """The label of the continued-SFT control among ``runs`` (a run of method ``sft``), or None.

    With ``for_run``: the SFT run with that run's seed if there is one (runs of several seeds each
    get their own control), else the first SFT run; None when ``for_run`` is itself an SFT run.
    """
    controls = [k for k, r in runs.items() if is_control(run_settings(r)["method"])]
    if for_run is None:
        return controls[0] if controls else None
    if for_run in controls or not controls:
        return None
    seed = run_settings(runs[for_run])["seed"]
    return next((k for k in controls if run_settings(runs[k])["seed"] == seed), controls[0])


def historical_advantage_table(runs: dict[str, Any], stage: str = "before") -> pd.DataFrame:
    """v = lp(y') - lp(y0) per run and iteration, the SFT control flagged.

    Columns: ``run, method, control, iteration, mean, q10, q50, q90, n``; ``control`` marks the
    SFT runs. The control's v measures how far any training drifts from pi_0; a self-play run's v
    is read against it.
    """
    frames = []
    for label, rec in runs.items():
        if rec.examples is None or not len(rec.examples):
            continue
        a = advantage_summary(rec.examples, stage)
        a = a[a["advantage"] == "historical"].drop(columns="advantage")
        method = run_settings(rec)["method"]
        frames.append(a.assign(run=label, method=method, control=is_control(method)))
    cols = ["run", "method", "control", "iteration", "mean", "q10", "q50", "q90", "n"]
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True)[cols]


def vanishing_summary(runs: dict[str, Any], stage: str = "before") -> pd.DataFrame:
    """The vanishing-advantage view as one table: per run and iteration, what shrinks and what does not.

    Columns: ``run, method, iteration, share_synthetic_equals_annotated`` (y' == y),
    ``current_advantage_mean`` and ``current_advantage_mean_nondegenerate`` (u over all pairs and
    over y' != y, at ``stage``), ``n_nondegenerate``, ``reward_margin_mean`` and
    ``reward_margin_mean_nondegenerate`` (after training; NaN for SFT), ``historical_advantage_mean``
    (v at ``stage``), ``control`` (the run's SFT control, ``control_label(runs, run)``; None for
    SFT runs and without one) and ``historical_advantage_mean_control`` (that control's v at the
    same iteration; NaN without a control).
    """
    hist = historical_advantage_table(runs, stage)
    rows = []
    for label, rec in runs.items():
        ex = rec.examples
        if ex is None or not len(ex):
            continue
        method = run_settings(rec)["method"]
        deg = degenerate_shares(ex).set_index("iteration")["synthetic_equals_annotated"]
        u = current_advantage_split(ex, stage).set_index(["iteration", "subset"])
        rm = reward_margin_split(ex).set_index(["iteration", "subset"])
        v = hist[hist["run"] == label].set_index("iteration")["mean"]
        control = control_label(runs, label)
        ctrl_v = hist[hist["run"] == control].set_index("iteration")["mean"]
        for t in iterations_of(ex):
            rows.append(
                {
                    "run": label,
                    "method": method,
                    "iteration": t,
                    "share_synthetic_equals_annotated": float(deg.loc[t]),
                    "current_advantage_mean": float(u.loc[(t, "all"), "mean"]),
                    "current_advantage_mean_nondegenerate": float(u.loc[(t, "non-degenerate"), "mean"]),
                    "n_nondegenerate": int(u.loc[(t, "non-degenerate"), "n"]),
                    "reward_margin_mean": float(rm.loc[(t, "all"), "mean"]),
                    "reward_margin_mean_nondegenerate": float(rm.loc[(t, "non-degenerate"), "mean"]),
                    "historical_advantage_mean": float(v.get(t, math.nan)),
                    "control": control,
                    "historical_advantage_mean_control": float(ctrl_v.get(t, math.nan)),
                }
            )
    cols = [
        "run",
        "method",
        "iteration",
        "share_synthetic_equals_annotated",
        "current_advantage_mean",
        "current_advantage_mean_nondegenerate",
        "n_nondegenerate",
        "reward_margin_mean",
        "reward_margin_mean_nondegenerate",
        "historical_advantage_mean",
        "control",
        "historical_advantage_mean_control",
    ]
    return pd.DataFrame(rows, columns=cols)


def score_name(metrics: pd.DataFrame | None) -> str:
    """What the task score measures (the metrics' ``score_name``; ``accuracy`` when absent)."""
    if metrics is not None and "score_name" in metrics and metrics["score_name"].notna().any():
        return str(metrics["score_name"].dropna().iloc[0])
    return "accuracy"


def policy_scores(metrics: pd.DataFrame) -> pd.DataFrame:
    """The task score per policy: ``policy`` t (0 = pi_0), ``score``.

    Iteration t's ``score_before`` is pi_t's and its ``score_after`` pi_{t+1}'s; the table lists pi_0
    from iteration 0's ``score_before`` and then every ``score_after``.
    """
    rows = []
    if metrics is None or len(metrics) == 0:
        return pd.DataFrame(columns=["policy", "score"])
    m = metrics.sort_values("iteration")
    first = m.iloc[0]
    if "score_before" in m and pd.notna(first.get("score_before")):
        rows.append({"policy": int(first["iteration"]), "score": float(first["score_before"])})
    if "score_after" in m:
        for _, r in m.iterrows():
            if pd.notna(r.get("score_after")):
                rows.append({"policy": int(r["iteration"]) + 1, "score": float(r["score_after"])})
    return pd.DataFrame(rows, columns=["policy", "score"])


def misalignment_table(examples: pd.DataFrame, iteration: int | None = None) -> pd.DataFrame:
    """Per example: reward margin r(y) - r(y') against log-likelihood margin under pi_{t+1}.

    Columns: ``iteration, example_id, reward_margin, logp_margin, misaligned``; an example is
    misaligned when the reward ranks y above y' but log pi ranks y below y' (the T-SPIN paper's
    Fig. 3). Examples with y' == y (both margins 0) are kept; rows with a NaN margin (SFT) dropped.
    """
    part = examples if iteration is None else examples[examples["iteration"] == iteration]
    out = pd.DataFrame(
        {
            "iteration": part["iteration"].astype(int).to_numpy(),
            "example_id": part["example_id"].astype(int).to_numpy(),
            "reward_margin": part["reward_margin"].to_numpy(dtype=float),
            "logp_margin": (part["annotated_logp_after"] - part["synthetic_logp_after"]).to_numpy(dtype=float),
        }
    )
    out = out[np.isfinite(out["reward_margin"]) & np.isfinite(out["logp_margin"])].reset_index(drop=True)
    out["misaligned"] = (out["reward_margin"] > 0) & (out["logp_margin"] < 0)
    return out


def misalignment_shares(examples: pd.DataFrame) -> pd.DataFrame:
    """Per iteration: ``misaligned_share`` (0..1) and ``n`` examples with a finite reward margin."""
    table = misalignment_table(examples)
    if table.empty:
        return pd.DataFrame(columns=["iteration", "misaligned_share", "n"])
    g = table.groupby("iteration", sort=True)["misaligned"]
    return pd.DataFrame({"misaligned_share": g.mean().astype(float), "n": g.size()}).reset_index()


def token_entropy_table(metrics: pd.DataFrame | None, examples: pd.DataFrame | None) -> pd.DataFrame:
    """Per iteration, the policy's token entropy in nats/token (see the module docstring)."""
    if (
        metrics is not None
        and "synthetic_token_entropy" in metrics
        and metrics["synthetic_token_entropy"].notna().any()
    ):
        out = metrics[["iteration", "synthetic_token_entropy"]].rename(
            columns={"synthetic_token_entropy": "token_entropy"}
        )
        out = out.assign(source="metrics")
    else:
        g = examples.groupby("iteration", sort=True)
        est = -g["synthetic_logp_before"].sum() / g["synthetic_ntokens"].sum()
        out = pd.DataFrame({"iteration": est.index, "token_entropy": est.to_numpy(dtype=float), "source": "estimate"})
    out = out.astype({"iteration": int, "token_entropy": float})
    return out.sort_values("iteration").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Triplets
# ---------------------------------------------------------------------------------------------

TRIPLET_COLUMNS = [
    "example_id",
    "prompt",
    "annotated",
    "synthetic",
    "proto",
    "current_advantage",
    "historical_advantage",
    "synthetic_correct",
    "synthetic_equals_annotated",
    "proto_equals_annotated",
    "reward_margin",
    "loss",
]


def triplet_table(
    examples: pd.DataFrame,
    iteration: int,
    *,
    stage: str = "before",
    current: tuple[float, float] | None = None,
    historical: tuple[float, float] | None = None,
    correct: bool | None = None,
    synthetic_equals_annotated: bool | None = None,
    proto_equals_annotated: bool | None = None,
    sort_by: str = "current_advantage",
    ascending: bool = True,
) -> pd.DataFrame:
    """The triplets of one iteration, filtered and sorted, with the columns of ``TRIPLET_COLUMNS``.

    ``current`` / ``historical`` are inclusive (low, high) ranges in nats on u and v at ``stage``
    (called "current advantage" for the chosen stage; the other stage is not shown). ``correct``
    filters on ``synthetic_correct``; the two ``*_equals_*`` filters on the degenerate flags. None
    means "any". Sorting is stable (ties keep ``example_id`` order).
    """
    _check_stage(stage)
    part = examples[examples["iteration"] == iteration]
    out = pd.DataFrame(
        {
            "example_id": part["example_id"].astype(int).to_numpy(),
            "prompt": part["prompt"].to_numpy(),
            "annotated": part["annotated"].to_numpy(),
            "synthetic": part["synthetic"].to_numpy(),
            "proto": part["proto"].to_numpy(),
            "current_advantage": part[f"current_advantage_{stage}"].to_numpy(dtype=float),
            "historical_advantage": part[f"historical_advantage_{stage}"].to_numpy(dtype=float),
            "synthetic_correct": part["synthetic_correct"].to_numpy()
            if "synthetic_correct" in part
            else np.full(len(part), np.nan),
            "synthetic_equals_annotated": part["synthetic_equals_annotated"].to_numpy(dtype=bool),
            "proto_equals_annotated": part["proto_equals_annotated"].to_numpy(dtype=bool),
            "reward_margin": part["reward_margin"].to_numpy(dtype=float),
            "loss": part["loss"].to_numpy(dtype=float),
        }
    )
    keep = np.ones(len(out), dtype=bool)
    if current is not None:
        keep &= out["current_advantage"].between(*current).to_numpy()
    if historical is not None:
        keep &= out["historical_advantage"].between(*historical).to_numpy()
    if correct is not None:
        keep &= (out["synthetic_correct"] == correct).to_numpy(dtype=bool)
    if synthetic_equals_annotated is not None:
        keep &= (out["synthetic_equals_annotated"] == synthetic_equals_annotated).to_numpy()
    if proto_equals_annotated is not None:
        keep &= (out["proto_equals_annotated"] == proto_equals_annotated).to_numpy()
    out = out[keep]
    if sort_by not in out.columns:
        raise KeyError(f"sort_by must be one of {list(out.columns)}, got {sort_by!r}")
    return out.sort_values([sort_by, "example_id"], ascending=[ascending, True], kind="stable").reset_index(drop=True)


def _row(examples: pd.DataFrame, iteration: int, example_id: int) -> pd.Series:
    part = examples[(examples["iteration"] == iteration) & (examples["example_id"] == example_id)]
    if part.empty:
        raise KeyError(f"no triplet for example {example_id} at iteration {iteration}")
    return part.iloc[0]


def triplet_detail(examples: pd.DataFrame, iteration: int, example_id: int) -> dict:
    """One triplet in detail: the prompt, per-role texts/log-probs/rewards, and the advantages.

    Returns ``{"iteration", "example_id", "prompt", "roles": DataFrame, "advantages": dict}``;
    ``roles`` has one row per role (annotated, synthetic, proto) with ``text, logp_before,
    logp_after, ntokens, logp_per_token_after, reward``; ``advantages`` holds u and v at both stages,
    the reward margin, the loss terms and the degenerate/correctness flags.
    """
    r = _row(examples, iteration, example_id)
    roles = pd.DataFrame(
        [
            {
                "role": role,
                "text": r[role],
                "logp_before": float(r[f"{role}_logp_before"]),
                "logp_after": float(r[f"{role}_logp_after"]),
                "ntokens": int(r[f"{role}_ntokens"]),
                "logp_per_token_after": float(r[f"{role}_logp_after"]) / max(int(r[f"{role}_ntokens"]), 1),
                "reward": float(r[f"reward_{role}"]) if pd.notna(r.get(f"reward_{role}")) else math.nan,
            }
            for role in ROLES
        ]
    )
    keys = [
        "current_advantage_before",
        "current_advantage_after",
        "historical_advantage_before",
        "historical_advantage_after",
        "reward_margin",
        "loss_current",
        "loss_historical",
        "loss",
        "misaligned",
        "synthetic_equals_annotated",
        "proto_equals_annotated",
        "synthetic_equals_proto",
        "synthetic_correct",
        "proto_correct",
    ]
    adv = {k: (r[k].item() if hasattr(r[k], "item") else r[k]) for k in keys if k in r.index}
    return {
        "iteration": int(iteration),
        "example_id": int(example_id),
        "prompt": r["prompt"],
        "roles": roles,
        "advantages": adv,
    }


def _split_tokens(text: str, n: int, tokens: Any = None) -> tuple[list[str], str]:
    """Token strings for ``n`` per-token log-probs of ``text`` (the last one is EOS).

    Runs record the text of every token in ``{role}_tokens`` (any tokenizer: BPE, SentencePiece,
    characters); use it when its length matches. Records without it (runs made before it existed)
    fall back to characters (the toy tokenizer is character-level) or words when their count + EOS
    matches; else unlabelled positions.
    """
    if tokens is not None and not isinstance(tokens, (str, float)) and len(tokens) == n:
        return [str(t) for t in tokens], "tokens"
    if len(text) + 1 == n:
        return list(text) + ["⟨eos⟩"], "characters"
    words = text.split()
    if len(words) + 1 == n:
        return [w + " " for w in words[:-1]] + words[-1:] + ["⟨eos⟩"], "words"
    if len(text) == n:
        return list(text), "characters"
    return [f"·{i}" for i in range(n)], "positions"


def token_shading(examples: pd.DataFrame, iteration: int, example_id: int, stage: str = "after") -> pd.DataFrame:
    """Per token of y, y', y0: ``role, position, token, logp`` (nats) and ``segmentation``.

    ``stage`` picks log pi_t (``before``) or log pi_{t+1} (``after``). ``segmentation`` says how the
    token strings were recovered (see ``_split_tokens``).
    """
    _check_stage(stage)
    r = _row(examples, iteration, example_id)
    rows = []
    for role in ROLES:
        logps = r.get(f"{role}_token_logps_{stage}")
        logps = [] if logps is None else [float(x) for x in logps]
        toks, how = _split_tokens(str(r[role]), len(logps), r.get(f"{role}_tokens"))
        for i, (tok, lp) in enumerate(zip(toks, logps)):
            rows.append({"role": role, "position": i, "token": tok, "logp": lp, "segmentation": how})
    return pd.DataFrame(rows, columns=["role", "position", "token", "logp", "segmentation"])


def synthetic_history(examples: pd.DataFrame, example_id: int) -> pd.DataFrame:
    """How one prompt's synthetic response y' changed across iterations.

    Columns: ``iteration, synthetic, synthetic_logp_before, synthetic_logp_after,
    current_advantage_before, historical_advantage_before, synthetic_equals_annotated,
    synthetic_correct, changed`` (y' differs from the previous iteration's).
    """
    part = examples[examples["example_id"] == example_id].sort_values("iteration")
    cols = [
        "iteration",
        "synthetic",
        "synthetic_logp_before",
        "synthetic_logp_after",
        "current_advantage_before",
        "historical_advantage_before",
        "synthetic_equals_annotated",
    ]
    out = part[cols + (["synthetic_correct"] if "synthetic_correct" in part else [])].reset_index(drop=True)
    out["changed"] = out["synthetic"].ne(out["synthetic"].shift()) & (out.index > 0)
    return out


# ---------------------------------------------------------------------------------------------
# Loss recomputation (alpha / beta / lam panel)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossInputs:
    """Cached ``(B,)`` float64 tensors of one iteration at one stage, ready for any objective."""

    iteration: int
    stage: str
    example_id: np.ndarray  # (B,)
    annotated: torch.Tensor  # (B,) log pi(y|x)
    synthetic: torch.Tensor  # (B,) log pi(y'|x)
    proto: torch.Tensor  # (B,) log pi(y0|x)
    ref_annotated: torch.Tensor  # (B,) log pi_t(y|x), the SPIN reference
    ref_synthetic: torch.Tensor
    ref_proto: torch.Tensor
    historical_mask: torch.Tensor  # (B,) bool, False drops the historical term
    annotated_tokens: torch.Tensor | None = None  # (B,) response tokens of y, for per-token objectives

    def __len__(self) -> int:
        return len(self.example_id)

    def logprobs(self, method: M.Method) -> M.LogProbs:
        """What ``method``'s objective reads: the reference only for reference methods, the mask only for
        methods that honour it."""
        ref = method.reference
        return M.LogProbs(
            annotated=self.annotated,
            synthetic=self.synthetic,
            proto=self.proto,
            ref_annotated=self.ref_annotated if ref else None,
            ref_synthetic=self.ref_synthetic if ref else None,
            ref_proto=self.ref_proto if ref else None,
            annotated_tokens=self.annotated_tokens,
            historical_mask=self.historical_mask if method.maskable else None,
        )


def loss_inputs(
    examples: pd.DataFrame, iteration: int, stage: str = "before", *, mask_proto_equal_annotated: bool = False
) -> LossInputs:
    """Collect one iteration's cached log-probs as tensors (do this once per iteration and stage)."""
    _check_stage(stage)
    part = examples[examples["iteration"] == iteration]
    if part.empty:
        raise KeyError(f"iteration {iteration} is not in the records (have {iterations_of(examples)})")

    def col(name: str) -> torch.Tensor:
        return torch.from_numpy(part[name].to_numpy(dtype=np.float64).copy())

    def ref(role: str) -> torch.Tensor:
        # The reference is pi_t; reference-free runs store NaN there, and pi_t's log-probs are *_before.
        r = (
            col(f"ref_{role}_logp")
            if f"ref_{role}_logp" in part
            else torch.full((len(part),), math.nan, dtype=torch.float64)
        )
        return torch.where(torch.isnan(r), col(f"{role}_logp_before"), r)

    if mask_proto_equal_annotated:
        mask = torch.from_numpy(~part["proto_equals_annotated"].to_numpy(dtype=bool))
    else:
        mask = torch.ones(len(part), dtype=torch.bool)
    return LossInputs(
        iteration=int(iteration),
        stage=stage,
        example_id=part["example_id"].to_numpy(dtype=np.int64),
        annotated=col(f"annotated_logp_{stage}"),
        synthetic=col(f"synthetic_logp_{stage}"),
        proto=col(f"proto_logp_{stage}"),
        ref_annotated=ref("annotated"),
        ref_synthetic=ref("synthetic"),
        ref_proto=ref("proto"),
        historical_mask=mask,
        annotated_tokens=col("annotated_ntokens") if "annotated_ntokens" in part else None,
    )


def _knobs(kind: str, alpha: float, beta: float, lam: float, params: dict) -> dict[str, float]:
    """The values ``kind``'s objective reads, from the panel's alpha, beta, lam and any other knobs."""
    spec = M.get(kind)
    values = {"alpha": alpha, "beta": beta, "lam": lam, **params}
    return {k: float(values.get(k, M.KNOBS[k].default)) for k in spec.knobs}


def loss_scale(kind: str, alpha: float = 1.0, lam: float = 1.0, **params) -> float:
    """The factor in front of the advantages: the value of the objective's scale knob (alpha for T-SPIN, lam for
    SPIN and T-SPIN_ref); 1.0 for an objective without one."""
    spec = M.get(kind)
    if spec.scale is None:
        return 1.0
    return {"alpha": alpha, "lam": lam, **params}.get(spec.scale, M.KNOBS[spec.scale].default)


def recompute_losses(
    inputs: LossInputs, *, kind: str = "tspin", alpha: float = 1.0, beta: float = 0.1, lam: float = 1.0, **params
) -> pd.DataFrame:
    """Per example, the loss of objective ``kind`` (any registered method) at these knobs, from cached log-probs.

    Columns: ``example_id, current_advantage (u), historical_advantage (v), reward_margin,
    loss_current, loss_historical, loss, weight_current, weight_historical, weight_synthetic,
    drive, grad_annotated, grad_synthetic, grad_proto`` (`records.objective_table`). For T-SPIN u and v are
    log-prob differences; for SPIN/T-SPIN_ref they are differences of log-ratios to the reference.
    ``weight_current`` = sigmoid(-s*u) and ``weight_historical`` = beta*mask*sigmoid(-s*v) (s = alpha or lam)
    are Theorem 1's weights: the gradient on lp(y) is -s*weight_current, on lp(y0) +s*weight_historical, on lp(y')
    the difference; ``grad_<role>`` is that gradient for any objective (autograd). ``drive`` =
    weight_current + weight_historical (how hard the example pushes the update). Methods without a historical
    term have 0 there. ``params``: values of knobs other than alpha, beta, lam (e.g. ``anchor``).
    """
    spec = M.get(kind)
    return R.objective_table(spec, inputs.logprobs(spec), _knobs(kind, alpha, beta, lam, params), inputs.example_id)


def loss_summary(table: pd.DataFrame, top_share: float = 0.1) -> dict:
    """Batch view of a ``recompute_losses`` table: mean loss terms and how concentrated the push is.

    ``top_drive_share`` is the share of the summed ``drive`` held by the top ``top_share`` of
    examples; ``n_driving`` counts examples whose ``drive`` exceeds half of the largest one.
    """
    drive = table["drive"].to_numpy()
    total = float(drive.sum())
    k = max(1, int(math.ceil(top_share * len(drive)))) if len(drive) else 0
    top = float(np.sort(drive)[::-1][:k].sum()) if k else 0.0
    return {
        "n": len(table),
        "loss": float(table["loss"].mean()) if len(table) else math.nan,
        "loss_current": float(table["loss_current"].mean()) if len(table) else math.nan,
        "loss_historical": float(table["loss_historical"].mean()) if len(table) else math.nan,
        "weight_current": float(table["weight_current"].mean()) if len(table) else math.nan,
        "weight_historical": float(table["weight_historical"].mean()) if len(table) else math.nan,
        "top_drive_share": top / total if total > 0 else math.nan,
        "top_share": float(top_share),
        "n_driving": int((drive > 0.5 * drive.max()).sum()) if len(drive) else 0,
    }


def top_drivers(table: pd.DataFrame, k: int = 15) -> pd.DataFrame:
    """The ``k`` examples with the largest ``drive``, largest first (ties: lower example_id)."""
    cols = [
        "example_id",
        "current_advantage",
        "historical_advantage",
        "weight_current",
        "weight_historical",
        "drive",
        "loss",
    ]
    # a partial selection first: sorting all 50,000 rows on every slider move cost ~4 ms of the 50 ms budget
    if k <= 0:
        return table.iloc[:0][cols].reset_index(drop=True)
    drive = table["drive"].to_numpy(float)
    missing = np.isnan(drive)
    key = np.where(missing, -np.inf, drive)
    rows = np.arange(len(table))
    if len(table) > k:
        kth = np.partition(key, len(key) - k)[len(key) - k]
        rows = np.flatnonzero(key >= kth)  # every row that can be among the k (ties at the k-th value included)
    ids = table["example_id"].to_numpy()[rows]
    order = rows[np.lexsort((ids, -key[rows], missing[rows]))]  # NaN last, then drive down, then id up
    return table.iloc[order[:k]][cols].reset_index(drop=True)


def loss_landscape(inputs: LossInputs, *, kind: str, scales: np.ndarray, betas: np.ndarray, **knobs) -> pd.DataFrame:
    """Mean loss over a grid of the objective's scale knob (alpha for T-SPIN, lam for SPIN) and beta.

    Objectives with a historical term are linear in beta (current term + beta * unit historical term, plus
    anything that does not read beta), so two loss calls per scale value give the whole grid; this is checked
    at beta = 0.5 for the first scale, and any objective that fails the check is evaluated at every beta.
    Objectives without beta repeat their rows over ``betas``. ``knobs`` holds the other knobs fixed.
    Columns: ``scale, beta, loss``.
    """
    spec = M.get(kind)
    base = _knobs(kind, knobs.pop("alpha", 1.0), knobs.pop("beta", 0.1), knobs.pop("lam", 1.0), knobs)
    lp = inputs.logprobs(spec)

    def mean_loss(**over) -> float:
        return float(spec.loss(lp, {**base, **over}).losses.detach().mean())

    rows = []
    linear = True
    with R.one_thread():
        for i, s in enumerate(np.asarray(scales, dtype=float)):
            at = {spec.scale: float(s)} if spec.scale is not None else {}
            if "beta" not in spec.knobs:
                loss = mean_loss(**at)
                rows += [{"scale": float(s), "beta": float(b), "loss": loss} for b in np.asarray(betas, dtype=float)]
                continue
            l0, l1 = mean_loss(**at, beta=0.0), mean_loss(**at, beta=1.0)
            if i == 0:
                linear = math.isclose(mean_loss(**at, beta=0.5), l0 + 0.5 * (l1 - l0), rel_tol=1e-9, abs_tol=1e-9)
            for b in np.asarray(betas, dtype=float):
                loss = l0 + b * (l1 - l0) if linear else mean_loss(**at, beta=float(b))
                rows.append({"scale": float(s), "beta": float(b), "loss": loss})
    return pd.DataFrame(rows, columns=["scale", "beta", "loss"])


# ---------------------------------------------------------------------------------------------
# Proposition 1: the opponent distribution and its entropy
# ---------------------------------------------------------------------------------------------


def opponent_alpha(records: Any) -> float:
    """alpha_run: the scale that turns the run's log pi into T-SPIN's confidence c = alpha_run * log pi.

    The alpha of the run's config for the reference-free T-SPIN methods (``tspin``,
    ``tspin_no_history``), whose reward is alpha * log pi; 1.0 for every other method (their
    training never used alpha, and c = log pi makes softmax(c/1) the policy itself).
    """
    s = run_settings(records)
    spec = M.get(s["method"])
    return s["alpha"] if spec.scale == "alpha" and not spec.reference else 1.0


def candidate_confidences(
    examples: pd.DataFrame, iteration: int, example_id: int, stage: str = "before", *, alpha_run: float
) -> pd.DataFrame:
    """Distinct candidate responses of one prompt scored by one policy, with c(z) = alpha_run * log pi(z|x).

    ``alpha_run`` is the alpha the run trained with (``opponent_alpha(records)``): Proposition 1's
    opponent is then softmax(c/alpha) = softmax(alpha_run * log pi / alpha), the policy itself at
    alpha = alpha_run. ``stage="before"`` scores with pi_t: y, y'_t, y0 and (t >= 1) y'_{t-1};
    ``"after"`` with pi_{t+1}: y, y'_t, y0. Identical texts are listed once (first role wins, in that
    order). Columns: ``candidate, role, text, logp, confidence``.
    """
    _check_stage(stage)
    if not (math.isfinite(alpha_run) and alpha_run > 0):
        raise ValueError(f"alpha_run must be a number > 0, got {alpha_run!r}")
    r = _row(examples, iteration, example_id)
    cands = [("y", "annotated", r["annotated"], r[f"annotated_logp_{stage}"])]
    cands.append((f"y'_{iteration}", "synthetic", r["synthetic"], r[f"synthetic_logp_{stage}"]))
    if stage == "before" and iteration > 0:
        prev = examples[(examples["iteration"] == iteration - 1) & (examples["example_id"] == example_id)]
        if not prev.empty:
            p = prev.iloc[0]
            cands.append((f"y'_{iteration - 1}", "synthetic", p["synthetic"], p["synthetic_logp_after"]))
    cands.append(("y0", "proto", r["proto"], r[f"proto_logp_{stage}"]))
    seen, rows = set(), []
    for name, role, text, lp in cands:
        if text in seen or not np.isfinite(lp):
            continue
        seen.add(text)
        rows.append(
            {
                "candidate": name,
                "role": role,
                "text": text,
                "logp": float(lp),
                "confidence": float(alpha_run) * float(lp),
            }
        )
    return pd.DataFrame(rows, columns=["candidate", "role", "text", "logp", "confidence"])


def opponent_table(candidates: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Proposition 1's opponent softmax(c/alpha) over the candidates: adds a ``probability`` column."""
    c = torch.tensor(candidates["confidence"].to_numpy(dtype=np.float64))
    with R.one_thread():
        p = losses.opponent_distribution(c, alpha)
    return candidates.assign(probability=p.numpy())


def opponent_entropy_curve(candidates: pd.DataFrame, alphas: np.ndarray) -> pd.DataFrame:
    """Entropy (nats) of softmax(c/alpha) as alpha moves: columns ``alpha, entropy, max_entropy``."""
    c = torch.tensor(candidates["confidence"].to_numpy(dtype=np.float64))
    alphas = np.asarray(alphas, dtype=float)
    with R.one_thread():
        probs = torch.softmax(c[None, :] / torch.tensor(alphas)[:, None], dim=-1)  # (A, K)
        ent = losses.entropy(probs).numpy()
    return pd.DataFrame({"alpha": alphas, "entropy": ent, "max_entropy": math.log(max(len(c), 1))})


# ---------------------------------------------------------------------------------------------
# Run comparison
# ---------------------------------------------------------------------------------------------

COMPARISON_METRICS = {
    "score": "task score",
    "current_advantage_mean": "mean current advantage u, before training",
    "historical_advantage_mean": "mean historical advantage v, before training",
    "misaligned_share": "share of misaligned examples",
    "share_synthetic_equals_annotated": "share y' == y",
    "token_entropy": "policy token entropy",
    "loss_mean": "mean training loss",
}


def comparison_table(runs: dict[str, Any]) -> pd.DataFrame:
    """Long table of per-iteration metrics for several runs on common axes.

    ``runs`` maps a label to records. Columns: ``run, method, x, metric, value`` where ``x`` is the
    iteration (for ``score`` it is the policy index, 0 = pi_0). Everything is recomputed from
    ``examples`` where possible so runs with partial metrics still line up.
    """
    rows = []
    for label, rec in runs.items():
        method = run_settings(rec)["method"]
        ex, met = rec.examples, rec.metrics

        def add(metric, xs, vs, label=label, method=method):
            for x, v in zip(xs, vs):
                rows.append({"run": label, "method": method, "x": int(x), "metric": metric, "value": float(v)})

        sc = policy_scores(met)
        add("score", sc["policy"], sc["score"])
        if len(ex):
            adv = advantage_summary(ex, "before")
            for kind in ADVANTAGES:
                a = adv[adv["advantage"] == kind]
                add(f"{kind}_advantage_mean", a["iteration"], a["mean"])
            ms = misalignment_shares(ex)
            add("misaligned_share", ms["iteration"], ms["misaligned_share"])
            dg = degenerate_shares(ex)
            add("share_synthetic_equals_annotated", dg["iteration"], dg["synthetic_equals_annotated"])
            te = token_entropy_table(met, ex)
            add("token_entropy", te["iteration"], te["token_entropy"])
        if met is not None and "loss_mean" in met:
            add("loss_mean", met["iteration"], met["loss_mean"])
        elif len(ex):
            lm = ex.groupby("iteration")["loss"].mean()
            add("loss_mean", lm.index, lm.to_numpy())
    return pd.DataFrame(rows, columns=["run", "method", "x", "metric", "value"])


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
