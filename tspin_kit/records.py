"""Run records from log-probs: one pure function for every method, used by the session when it writes an
iteration, by `analysis` when it recomputes under other knobs, and by the test helpers.

Log-probs in (numpy, per example), columns out. No model, no I/O; the method's loss comes from the table of
methods (`methods.py`), so a new objective gets its records without touching this file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from . import methods as M

__all__ = ["logprobs_of", "method_columns", "objective_table", "one_thread"]

ROLES = ("annotated", "synthetic", "proto")


@contextlib.contextmanager
def one_thread():
    """Run small (B,) tensor ops on one thread.

    On a busy machine (a training run beside the notebook) torch's intra-op thread pool made a
    10,000-example recompute 30x slower (20 ms instead of 0.6 ms; the landscape 470 ms instead of
    10 ms). These tensors are too small to gain from threads. ``set_num_threads`` is process-wide,
    so it is restored at once.
    """
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _t(x) -> torch.Tensor | None:
    return None if x is None else torch.from_numpy(np.array(x, dtype=np.float64))


def logprobs_of(
    method: M.Method,
    policy: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray] | None = None,
    *,
    annotated_tokens=None,
    historical_mask=None,
) -> M.LogProbs:
    """`methods.LogProbs` (float64) from per-role arrays: ``policy`` is log pi_theta of y, y', y0 (missing roles
    may be absent), ``reference`` log pi_t (read only when the method has a reference). ``historical_mask`` is
    applied only to methods that honour the y0 == y mask."""
    ref = reference if method.reference and reference is not None else {}
    mask = historical_mask if method.maskable else None
    return M.LogProbs(
        annotated=_t(policy["annotated"]),
        synthetic=_t(policy.get("synthetic")),
        proto=_t(policy.get("proto")),
        ref_annotated=_t(ref.get("annotated")),
        ref_synthetic=_t(ref.get("synthetic")),
        ref_proto=_t(ref.get("proto")),
        annotated_tokens=_t(annotated_tokens),
        historical_mask=None if mask is None else torch.as_tensor(np.asarray(mask, dtype=bool)),
    )


def method_columns(
    method: M.Method | str,
    before: Mapping[str, np.ndarray],
    after: Mapping[str, np.ndarray],
    *,
    knobs: Mapping[str, float],
    annotated_tokens,
    historical_mask=None,
) -> dict[str, np.ndarray]:
    """The per-example columns an iteration's records hold for ``method``, from the log-probs of y, y', y0 under
    pi_t (``before``, which is also the reference pi_t) and pi_{t+1} (``after``).

    Columns: ``current_advantage_{before,after}`` (u = lp(y) - lp(y')) and ``historical_advantage_{...}``
    (v = lp(y') - lp(y0)), raw log-prob differences whatever the method; ``ref_{role}_logp`` (pi_t, NaN for
    reference-free methods); the method's ``reward_{annotated,synthetic,proto}``, ``reward_margin``,
    ``loss_current``, ``loss_historical`` and ``loss`` at pi_{t+1} with ``knobs`` (the iteration's values); and
    ``misaligned``: the reward ranks y above y' while the likelihood used to generate ranks it below.
    """
    m = M.get(method) if isinstance(method, str) else method
    n = len(before["annotated"])
    nan = np.full(n, np.nan)
    cols: dict[str, np.ndarray] = {}
    for when, lp in (("before", before), ("after", after)):
        a, s, p = (np.asarray(lp.get(r, nan), dtype=np.float64) for r in ROLES)
        cols[f"current_advantage_{when}"] = a - s
        cols[f"historical_advantage_{when}"] = s - p
    for role in ROLES:
        cols[f"ref_{role}_logp"] = np.asarray(before.get(role, nan), dtype=np.float64) if m.reference else nan
    with one_thread():
        out = m.loss(
            logprobs_of(m, after, before, annotated_tokens=annotated_tokens, historical_mask=historical_mask), knobs
        )
    cols["reward_annotated"] = out.annotated_rewards.numpy()
    cols["reward_synthetic"] = out.synthetic_rewards.numpy()
    cols["reward_proto"] = out.proto_rewards.numpy()
    cols["reward_margin"] = out.reward_margin.numpy()
    cols["loss_current"] = out.current_term.numpy()
    cols["loss_historical"] = out.historical_term.numpy()
    cols["loss"] = out.losses.detach().numpy()
    cols["misaligned"] = (cols["reward_margin"] > 0) & (cols["current_advantage_after"] < 0)
    return cols


def objective_table(
    method: M.Method | str, lp: M.LogProbs, knobs: Mapping[str, float], example_id=None
) -> pd.DataFrame:
    """Per example, ``method``'s loss at ``knobs`` and its gradient on each log-prob (no model).

    Columns: ``example_id, current_advantage (u), historical_advantage (v), reward_margin, loss_current,
    loss_historical, loss, weight_current, weight_historical, weight_synthetic, drive, grad_annotated,
    grad_synthetic, grad_proto``. ``grad_<role>`` = dL/d log pi(role), by autograd, for any objective (0 for a
    role the loss does not read). For the logistic family ``weight_current`` = sigmoid(-s*u) and
    ``weight_historical`` = beta*mask*sigmoid(-s*v) are Theorem 1's weights (dL/dlp(y) = -s*weight_current);
    ``weight_synthetic`` = their difference and ``drive`` = their sum (how hard an example pushes). For other
    objectives the weights are the gradient magnitudes on y and y0.
    """
    m = M.get(method) if isinstance(method, str) else method
    with one_thread():  # (B,) vectors: the whole table on one thread (zeros() alone took 20 ms at 50k on a busy pool)
        leaves = {r: getattr(lp, r).detach().clone().requires_grad_(True) for r in m.roles}
        out = m.loss(M.LogProbs(**{**{f: getattr(lp, f) for f in lp.__dataclass_fields__}, **leaves}), knobs)
        grads = dict(zip(leaves, torch.autograd.grad(out.losses.sum(), list(leaves.values()), allow_unused=True)))
        n = len(lp.annotated)
        zeros = torch.zeros(n, dtype=torch.float64)
        grad = {r: (grads.get(r) if grads.get(r) is not None else zeros).detach() for r in ROLES}
        if m.logistic:
            w_cur, w_hist = out.current_weight, out.historical_weight
        else:
            w_cur, w_hist = grad["annotated"].abs(), grad["proto"].abs()
        cols = {
            "current_advantage": out.current_advantage,
            "historical_advantage": out.historical_advantage,
            "reward_margin": out.reward_margin,
            "loss_current": out.current_term,
            "loss_historical": out.historical_term,
            "loss": out.losses.detach(),
            "weight_current": w_cur,
            "weight_historical": w_hist,
            "weight_synthetic": w_cur - w_hist,
            "drive": w_cur + w_hist,
            "grad_annotated": grad["annotated"],
            "grad_synthetic": grad["synthetic"],
            "grad_proto": grad["proto"],
        }
        # one (B, k) block: pandas then keeps the columns without copying them one by one
        block = torch.stack(list(cols.values()), dim=1).numpy()
    table = pd.DataFrame(block, columns=list(cols))
    table.insert(0, "example_id", np.arange(n) if example_id is None else np.asarray(example_id))
    return table
