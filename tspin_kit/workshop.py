"""Checks for the workshop exercises in ``notebooks/workshop/``.

Each exercise notebook leaves a function blank (its body raises ``NotImplementedError``); the
participant fills it in and runs the exercise's ``check_...`` function, which compares the answer
with the library on fixed inputs. A check never raises on a wrong or missing answer: it returns a
:class:`CheckResult` whose status is ``"passed"``, ``"not done yet"`` (the blank is still there) or
``"failed"`` (with what differs), so an exercise notebook with its blanks still executes end to
end in CI. The solution notebooks assert ``result.passed``.

Exercises:

1. ``check_tspin_loss(fn)``: write the T-SPIN loss l(alpha*u) + beta*l(alpha*v) per example.
2. ``check_drivers(fn, inputs)``: predict how hard each triplet pushes the update (Theorem 1's
   weights) and so which triplets drive it.
3. ``check_find_alpha(fn)``: tune alpha so that Proposition 1's opponent softmax(c/alpha) has a
   target entropy.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import losses as L

__all__ = ["CheckResult", "check_drivers", "check_find_alpha", "check_tspin_loss", "example_confidences"]

PASSED, NOT_DONE, FAILED = "passed", "not done yet", "failed"


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one exercise check; shows itself as one line in a notebook."""

    exercise: str
    status: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        mark = {PASSED: "PASSED", NOT_DONE: "NOT DONE YET", FAILED: "FAILED"}[self.status]
        return f"[{mark}] {self.exercise}: {self.message}"

    __repr__ = __str__

    def _repr_markdown_(self) -> str:
        icon = {PASSED: "✅", NOT_DONE: "⏳", FAILED: "❌"}[self.status]
        return f"{icon} **{self.exercise}**: {self.status}. {self.message}"


def _call(exercise: str, fn: Callable, *args, **kwargs):
    """Run the participant's function; turn a blank or a crash into a CheckResult."""
    try:
        return fn(*args, **kwargs), None
    except NotImplementedError:
        return None, CheckResult(exercise, NOT_DONE, "the function still raises NotImplementedError: fill in the blank")
    except Exception as e:  # noqa: BLE001 - a participant's bug is reported, not raised
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        return None, CheckResult(exercise, FAILED, f"your function raised {last}")


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), atol=tol, rtol=tol))


# ----------------------------------------------------------------------------- exercise 1


def _triplet_cases() -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, float, float]]:
    g = torch.Generator().manual_seed(0)
    a, s, p = (-10 * torch.rand(8, generator=g, dtype=torch.float64) for _ in range(3))
    return [
        ("random log-probs, alpha=1, beta=0.1", a, s, p, 1.0, 0.1),
        ("random log-probs, alpha=0.3, beta=1", a, s, p, 0.3, 1.0),
        ("beta=0 (the 'w/o H-A' ablation)", a, s, p, 2.0, 0.0),
        ("y' identical to y (SPIN's vanishing case)", a, a.clone(), p, 1.0, 0.1),
        (
            "large advantages (numerical stability)",
            torch.tensor([0.0, -200.0]),
            torch.tensor([-200.0, 0.0]),
            torch.tensor([-100.0, -100.0]),
            1.0,
            0.5,
        ),
    ]


def check_tspin_loss(fn: Callable) -> CheckResult:
    """Exercise 1. ``fn(annotated_logps, synthetic_logps, proto_logps, *, alpha, beta)`` -> ``(B,)`` losses.

    Compared with ``tspin_kit.losses.tspin_loss`` on fixed cases (values and gradients).
    """
    name = "Exercise 1: the T-SPIN loss"
    for label, a, s, p, alpha, beta in _triplet_cases():
        args = [x.clone().requires_grad_(True) for x in (a, s, p)]
        out, bad = _call(name, fn, *args, alpha=alpha, beta=beta)
        if bad is not None:
            return bad
        if not isinstance(out, torch.Tensor):
            return CheckResult(name, FAILED, f"expected a torch.Tensor of shape (B,), got {type(out).__name__}")
        ref = L.tspin_loss(a, s, p, alpha=alpha, beta=beta).losses
        if out.shape != ref.shape:
            return CheckResult(
                name,
                FAILED,
                f"{label}: shape {tuple(out.shape)}, expected {tuple(ref.shape)} "
                "(one loss per example, not the batch mean)",
            )
        if not torch.isfinite(out).all():
            return CheckResult(
                name,
                FAILED,
                f"{label}: non-finite losses {out.detach().tolist()}; "
                "use torch.nn.functional.logsigmoid for l(x) = -log sigmoid(x)",
            )
        if not _close(out.detach(), ref):
            return CheckResult(
                name,
                FAILED,
                f"{label}: got {[round(v, 4) for v in out.detach().tolist()[:4]]}..., "
                f"expected {[round(v, 4) for v in ref.tolist()[:4]]}...",
            )
        if not out.requires_grad:
            return CheckResult(name, FAILED, f"{label}: the losses carry no gradient (a .item() or .detach() inside?)")
        out.sum().backward()
        ref_args = [x.clone().requires_grad_(True) for x in (a, s, p)]
        L.tspin_loss(*ref_args, alpha=alpha, beta=beta).losses.sum().backward()
        for role, mine, theirs in zip(("annotated", "synthetic", "proto"), args, ref_args):
            if mine.grad is None or not _close(mine.grad, theirs.grad):
                return CheckResult(
                    name, FAILED, f"{label}: the gradient with respect to the {role} log-probs differs from Theorem 1's"
                )
    return CheckResult(name, PASSED, f"matches tspin_loss in value and gradient on {len(_triplet_cases())} cases")


# ----------------------------------------------------------------------------- exercise 2


def check_drivers(fn: Callable, inputs=None, *, alpha: float = 1.0, beta: float = 0.1, k: int = 10) -> CheckResult:
    """Exercise 2. ``fn(u, v, *, alpha, beta)`` -> ``(B,)`` push of each triplet on the update.

    The push is Theorem 1's w_cur + w_hist = sigmoid(-alpha*u) + beta*sigmoid(-alpha*v) (the
    ``drive`` column of ``analysis.recompute_losses``). ``inputs``: an ``analysis.LossInputs`` of a
    real run (u and v are taken from it); None uses fixed random advantages.
    """
    from . import analysis as A

    name = "Exercise 2: which triplets drive the update"
    if inputs is None:
        g = torch.Generator().manual_seed(1)
        n = 200
        a = -3 - 4 * torch.rand(n, generator=g, dtype=torch.float64)
        s = a + 3 * torch.randn(n, generator=g, dtype=torch.float64)
        p = s + 3 * torch.randn(n, generator=g, dtype=torch.float64)
        inputs = A.LossInputs(0, "before", torch.arange(n).numpy(), a, s, p, a, s, p, torch.ones(n, dtype=torch.bool))
    u = (inputs.annotated - inputs.synthetic).detach()
    v = (inputs.synthetic - inputs.proto).detach()
    out, bad = _call(name, fn, u.clone(), v.clone(), alpha=alpha, beta=beta)
    if bad is not None:
        return bad
    if not isinstance(out, torch.Tensor) or out.shape != u.shape:
        return CheckResult(
            name,
            FAILED,
            f"expected a tensor of shape {tuple(u.shape)}, got "
            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}",
        )
    table = A.recompute_losses(inputs, kind="tspin", alpha=alpha, beta=beta)
    ref = torch.tensor(table["drive"].to_numpy())
    k = min(k, len(ref))
    mine_top = set(torch.topk(out.detach().double(), k).indices.tolist())
    ref_top = set(torch.topk(ref, k).indices.tolist())
    overlap = len(mine_top & ref_top)
    if not _close(out.detach(), ref, tol=1e-4):
        return CheckResult(
            name,
            FAILED,
            f"your top-{k} shares {overlap}/{k} triplets with the library's, but the "
            "values differ: the push is sigmoid(-alpha*u) + beta*sigmoid(-alpha*v)",
        )
    return CheckResult(name, PASSED, f"matches Theorem 1's weights on {len(ref)} triplets; top-{k} identical")


# ----------------------------------------------------------------------------- exercise 3


def example_confidences() -> torch.Tensor:
    """Four candidate responses' confidences c(z) = log pi(z|x) (nats), best first."""
    return torch.tensor([-1.0, -2.5, -4.0, -7.0], dtype=torch.float64)


def check_find_alpha(fn: Callable) -> CheckResult:
    """Exercise 3. ``fn(confidences, target_entropy)`` -> alpha > 0 such that the entropy of
    softmax(c/alpha) equals ``target_entropy`` (within 0.01 nats)."""
    name = "Exercise 3: tune alpha to a target entropy"
    cases = [(example_confidences(), 0.5), (example_confidences(), 1.2), (torch.tensor([0.0, -0.5, -10.0]), 0.3)]
    for c, target in cases:
        alpha, bad = _call(name, fn, c.clone(), target)
        if bad is not None:
            return bad
        try:
            alpha = float(alpha)
        except (TypeError, ValueError):
            return CheckResult(name, FAILED, f"expected a number, got {alpha!r}")
        if not (alpha > 0 and math.isfinite(alpha)):
            return CheckResult(name, FAILED, f"alpha must be a finite number > 0, got {alpha}")
        h = float(L.entropy(L.opponent_distribution(c, alpha)))
        if abs(h - target) > 0.01:
            return CheckResult(
                name,
                FAILED,
                f"with c = {c.tolist()} your alpha = {alpha:.4g} gives entropy {h:.3f} nats, target {target}",
            )
    return CheckResult(name, PASSED, f"hits the target entropy on {len(cases)} cases")
