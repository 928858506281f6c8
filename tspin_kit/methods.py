"""The table of methods: every training objective is declared here once, and nothing else switches on a name.

A method is its objective (a pure function of per-example summed log-probs and knob values, returning the one
record schema `Terms`) plus what the rest of the engine needs to know about it: which log-probs it reads (y, y',
y0, the frozen reference pi_t), which knobs it has, its label and colour, its docs page, and whether
training may skip examples whose gradient is exactly zero. Training (`training.compute_loss`), record building
(`records.py`), the analysis and its figures, the widgets' objective lab, the comparison runner and the docs
index all read this table.

Adding an objective is one function and one registration, anywhere that is imported (the built-ins below; more
in ``tspin_kit/objectives/``, whose modules are imported on first use of the table)::

    @register(name="my_loss", label="My loss", knobs=("alpha", "beta"), roles=TRIPLET, doc="docs/methods/my_loss.md")
    def my_loss(lp: LogProbs, k: Knobs) -> Terms:
        ...

The papers' losses themselves stay in `losses.py` (pure, literal tests); the built-in objectives here only adapt
their outputs to `Terms`, so every method's records share one schema with absent terms explicit.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields

import torch

from . import losses as L

__all__ = [
    "KNOBS",
    "PAIR",
    "SINGLE",
    "TRIPLET",
    "Knob",
    "Knobs",
    "LogProbs",
    "Method",
    "Terms",
    "get",
    "names",
    "register",
    "resolve",
    "table",
]

SINGLE = ("annotated",)
PAIR = ("annotated", "synthetic")
TRIPLET = ("annotated", "synthetic", "proto")


# ---------------------------------------------------------------------------------------------
# Knobs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Knob:
    """One scalar an objective reads. ``alpha``, ``beta`` and ``lam`` are fields of ``MethodConfig`` (with their
    schedules); any other knob is set in ``method.params`` and is constant over iterations."""

    name: str
    default: float
    symbol: str  # how figures and the panel write it
    help: str
    allow_zero: bool = False  # valid range: > 0, or >= 0 when allow_zero
    log_slider: bool = True  # the panel's slider is logarithmic (scales) or linear (weights in [0, 1])
    slider: tuple[float, float] = (0.05, 5.0)  # the panel's slider range

    def check(self, value) -> float:
        bound = ">= 0" if self.allow_zero else "> 0"
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name} must be a finite number {bound}, got {value!r}") from None
        if not (math.isfinite(v) and (v >= 0 if self.allow_zero else v > 0)):
            raise ValueError(f"{self.name} must be a finite number {bound}, got {value!r}")
        return v


KNOBS: dict[str, Knob] = {}


def knob(name: str, default: float, symbol: str, help: str, **kw) -> Knob:
    """Declare a knob (once per name; objectives refer to it by name)."""
    k = Knob(name, default, symbol, help, **kw)
    if name in KNOBS and KNOBS[name] != k:
        raise ValueError(f"knob {name!r} is already declared differently")
    KNOBS[name] = k
    return k


knob(
    "alpha", 1.0, "α", "T-SPIN's entropy coefficient and reward scale: reward = alpha * log pi(z|x)", slider=(0.05, 5.0)
)
knob(
    "beta",
    0.1,
    "β",
    "weight of the historical term l(s * v), v = log pi(y') - log pi(y0)",
    allow_zero=True,
    log_slider=False,
    slider=(0.0, 1.0),
)
knob("lam", 1.0, "λ", "SPIN's reward scale: reward = lam * (log pi - log pi_t)", slider=(0.01, 10.0))


class Knobs(Mapping):
    """The knob values one loss call uses (``k.alpha`` or ``k["alpha"]``)."""

    def __init__(self, values: Mapping[str, float] | None = None, **kw):
        self._v = {**(values or {}), **kw}

    def __getattr__(self, name: str) -> float:
        try:
            return self.__dict__["_v"][name]
        except KeyError:
            raise AttributeError(f"knob {name!r} is not set (have {sorted(self.__dict__['_v'])})") from None

    def __getitem__(self, name: str) -> float:
        return self._v[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._v)

    def __len__(self) -> int:
        return len(self._v)

    def __repr__(self) -> str:
        return f"Knobs({self._v})"


# ---------------------------------------------------------------------------------------------
# Inputs and the one record schema
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogProbs:
    """Per-example ``(B,)`` summed response log-probs; None where a method does not read that role."""

    annotated: torch.Tensor  # log pi_theta(y|x)
    synthetic: torch.Tensor | None = None  # log pi_theta(y'|x)
    proto: torch.Tensor | None = None  # log pi_theta(y0|x)
    ref_annotated: torch.Tensor | None = None  # log pi_t(y|x), the frozen reference (methods with reference=True)
    ref_synthetic: torch.Tensor | None = None
    ref_proto: torch.Tensor | None = None
    annotated_tokens: torch.Tensor | None = None  # response tokens of y (incl. EOS), for per-token losses
    historical_mask: torch.Tensor | None = None  # bool, False drops the historical term (y0 == y)

    def proto_ratio(self, like: torch.Tensor) -> torch.Tensor:
        """log pi(y0) - log pi_t(y0), detached: how pair methods record y0 on their own scale (NaN without y0)."""
        if self.proto is None or self.ref_proto is None:
            return torch.full_like(like, math.nan)  # (a new tensor: never part of a graph)
        return (self.proto - self.ref_proto).detach()

    def need(self, name: str) -> torch.Tensor:
        v = getattr(self, name)
        if v is None:
            raise ValueError(f"this objective needs {name} log-probs; the method's roles/reference must declare it")
        return v


@dataclass(frozen=True)
class Terms(L._Record):
    """What every objective returns, one ``(B,)`` tensor per field; only ``losses`` carries gradient.

    A term an objective does not have is explicit: 0 where it contributes nothing (SPIN's historical term),
    NaN where the quantity is undefined for it (SFT's rewards). Advantages are in the method's own units
    (log-probs, or log-ratios to pi_t for reference methods); rewards are what the method's loss compares.
    """

    losses: torch.Tensor
    current_term: torch.Tensor  # the part of the loss that compares y with y'
    historical_term: torch.Tensor  # the part that compares y' with y0 (beta included)
    annotated_rewards: torch.Tensor
    synthetic_rewards: torch.Tensor
    proto_rewards: torch.Tensor
    current_advantage: torch.Tensor  # u
    historical_advantage: torch.Tensor  # v
    reward_margin: torch.Tensor  # reward(y) - reward(y')
    current_weight: torch.Tensor  # Theorem 1's w_cur (0-1) where the method has it, else NaN
    historical_weight: torch.Tensor  # w_hist (beta included), 0 without a historical term

    @classmethod
    def from_triplet(cls, out: L.TripletLossOutput) -> Terms:
        return cls(**{name: getattr(out, name) for name in _TERM_FIELDS})  # (called once per training step)

    def replace(self, **kw) -> Terms:
        return Terms(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **kw})


_TERM_FIELDS = tuple(f.name for f in fields(Terms))


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One row of the table of methods."""

    name: str
    label: str
    color: str
    objective: Callable[[LogProbs, Knobs], Terms]
    roles: tuple[str, ...]  # policy log-probs the loss reads, in row order: SINGLE, PAIR or TRIPLET
    knobs: tuple[str, ...] = ()  # knob names (KNOBS) the loss reads
    reference: bool = False  # reads log pi_t of each role (the frozen previous policy)
    history: bool = False  # has a historical term weighted by beta (beta = 0 at iteration 0)
    scale: str | None = None  # the knob in front of the advantages (figures' x axis), if any
    logistic: bool = False  # weights are sigmoid(-s*u) and beta*sigmoid(-s*v) (Theorem 1's curves apply)
    skip: str | None = None  # zero-gradient rule training may use: "pair" (y' == y), "triplet", or None
    maskable: bool = False  # honours method.mask_proto_equal_annotated
    aliases: tuple[str, ...] = ()
    doc: str = ""  # docs page, relative to the repository root
    formula: str = ""  # one line for the objective lab
    summary: str = ""  # one line for the docs index
    params: Mapping[str, float] = field(default_factory=dict)  # defaults of knobs outside alpha/beta/lam

    @property
    def self_play(self) -> bool:
        """Samples y' (and y0) every iteration: everything but SFT."""
        return "synthetic" in self.roles

    @property
    def triplet(self) -> bool:
        return "proto" in self.roles

    def loss(self, lp: LogProbs, knobs: Mapping[str, float]) -> Terms:
        """The objective, with its knobs checked (a clear error names the knob)."""
        k = {}
        for name in self.knobs:
            if name not in knobs:
                raise ValueError(f"{self.name}: knob {name!r} is not set")
            k[name] = KNOBS[name].check(knobs[name])
        return self.objective(lp, Knobs(k))


_TABLE: dict[str, Method] = {}
_ALIASES: dict[str, str] = {}
_LOADED = False


def register(*, name: str, label: str, color: str, roles: tuple[str, ...], **kw) -> Callable:
    """Decorator: add an objective to the table under ``name`` (and ``aliases``)."""

    def deco(fn: Callable[[LogProbs, Knobs], Terms]) -> Callable:
        m = Method(name=name, label=label, color=color, objective=fn, roles=tuple(roles), **kw)
        for key in (m.name, *m.aliases):
            if key in _TABLE or key in _ALIASES:
                raise ValueError(f"method name {key!r} is already registered")
        unknown = [k for k in m.knobs if k not in KNOBS]
        if unknown:
            raise ValueError(f"{name}: undeclared knobs {unknown}; declare them with methods.knob(...)")
        if m.scale is not None and m.scale not in m.knobs:
            raise ValueError(f"{name}: scale {m.scale!r} must be one of its knobs {m.knobs}")
        if m.roles not in (SINGLE, PAIR, TRIPLET):
            raise ValueError(f"{name}: roles must be SINGLE, PAIR or TRIPLET, got {m.roles}")
        _TABLE[m.name] = m
        for a in m.aliases:
            _ALIASES[a] = m.name
        return fn

    return deco


def unregister(name: str) -> None:
    """Drop a method (tests that register a throwaway objective clean up with this)."""
    m = _TABLE.pop(name)
    for a in m.aliases:
        _ALIASES.pop(a, None)


def _load_plugins() -> None:
    """Import every module of ``tspin_kit.objectives`` once, so objectives declared there are in the table."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from . import objectives

    for info in pkgutil.iter_modules(objectives.__path__):
        importlib.import_module(f"{objectives.__name__}.{info.name}")


def table() -> dict[str, Method]:
    """Every registered method by name, in registration order (built-ins first)."""
    _load_plugins()
    return dict(_TABLE)


def names() -> tuple[str, ...]:
    return tuple(table())


def resolve(name: str) -> str:
    """The registered name for ``name`` or one of its aliases; ValueError naming the choices otherwise."""
    t = table()
    if name in t:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    raise ValueError(f"unknown method {name!r}; expected one of {', '.join(t)}")


def get(name: str) -> Method:
    _load_plugins()
    found = _TABLE.get(name) or _TABLE.get(_ALIASES.get(name, ""))  # no copy of the table: a per-step lookup
    return found if found is not None else _TABLE[resolve(name)]  # resolve raises the error naming the choices


def label(name: str) -> str:
    """The method's label, or the name itself for something not in the table (e.g. a preset such as sft_4x)."""
    try:
        return get(name).label
    except ValueError:
        return name


def color(name: str, default: str = "#666666") -> str:
    try:
        return get(name).color
    except ValueError:
        return default


def docs_table() -> str:
    """The docs index's table of methods (docs/index.md between its ``methods`` markers), from the registry."""
    rows = ["| method (`method.name`) | label | reads | knobs | page |", "|---|---|---|---|---|"]
    for m in table().values():
        reads = ", ".join({"annotated": "y", "synthetic": "y'", "proto": "y0"}[r] for r in m.roles)
        if m.reference:
            reads += ", log pi_t"
        page = f"[{m.doc.removeprefix('docs/')}]({m.doc.removeprefix('docs/')})" if m.doc else ""
        alias = f" (also `{'`, `'.join(m.aliases)}`)" if m.aliases else ""
        rows.append(
            f"| `{m.name}`{alias} | {m.label}: {m.summary} | {reads} | {', '.join(m.knobs) or 'none'} | {page} |"
        )
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# The built-in methods: the papers' losses (losses.py) adapted to Terms
# ---------------------------------------------------------------------------------------------


def _nan(like: torch.Tensor) -> torch.Tensor:
    return torch.full_like(like, math.nan)  # a new tensor: never part of a graph (no detach needed)


@register(
    name="sft",
    label="SFT",
    color="#7f7f7f",
    roles=SINGLE,
    doc="docs/methods/sft.md",
    formula="L = −log π(y) / n_tokens(y) (mean token NLL); no knobs",
    summary="continued SFT on the annotated data, the control",
)
def sft(lp: LogProbs, k: Knobs) -> Terms:
    out = L.sft_loss(lp.annotated, lp.need("annotated_tokens"))
    nan = _nan(lp.annotated)
    # no rewards, advantages or weights: every record column but the loss is undefined (NaN)
    return Terms(
        losses=out.losses,
        current_term=nan,
        historical_term=nan,
        annotated_rewards=nan,
        synthetic_rewards=nan,
        proto_rewards=nan,
        current_advantage=nan,
        historical_advantage=nan,
        reward_margin=nan,
        current_weight=nan,
        historical_weight=nan,
    )


@register(
    name="spin",
    label="SPIN",
    color="#1f78b4",
    roles=PAIR,
    knobs=("lam",),
    reference=True,
    scale="lam",
    logistic=True,
    skip="pair",
    doc="docs/methods/spin.md",
    formula="L = l(λ·[(log π(y) − log π_t(y)) − (log π(y') − log π_t(y'))]); β unused",
    summary="the pair baseline, reward lam * log(pi / pi_t)",
)
def spin(lp: LogProbs, k: Knobs) -> Terms:
    out = L.spin_loss(lp.annotated, lp.synthetic, lp.need("ref_annotated"), lp.need("ref_synthetic"), lam=k.lam)
    zeros = torch.zeros_like(out.losses)  # (factory tensors are never part of a graph)
    # y0 is not in SPIN's loss; its reward and advantage are recorded on SPIN's own scale for comparison (NaN where
    # there is no y0, as in training, which reads neither: the NaNs then cost no arithmetic, once per step)
    proto_ratio = lp.proto_ratio(out.losses)
    if lp.proto is None or lp.ref_proto is None:
        proto_rewards, historical_advantage = proto_ratio, _nan(out.losses)
    else:
        proto_rewards = k.lam * proto_ratio
        historical_advantage = (lp.synthetic - lp.ref_synthetic).detach() - proto_ratio
    return Terms(
        losses=out.losses,
        current_term=out.losses.detach(),
        historical_term=zeros,
        annotated_rewards=out.annotated_rewards,
        synthetic_rewards=out.synthetic_rewards,
        proto_rewards=proto_rewards,
        current_advantage=out.current_advantage,
        historical_advantage=historical_advantage,
        reward_margin=out.reward_margin,
        current_weight=out.current_weight,
        historical_weight=zeros,
    )


@register(
    name="tspin",
    label="T-SPIN",
    color="#e31a1c",
    roles=TRIPLET,
    knobs=("alpha", "beta"),
    history=True,
    scale="alpha",
    logistic=True,
    skip="triplet",
    maskable=True,
    doc="docs/methods/tspin.md",
    formula="L = l(α·u) + β·l(α·v), u = log π(y) − log π(y'), v = log π(y') − log π(y0); λ unused",
    summary="current + historical advantage, reward alpha * log pi (no reference)",
)
def tspin(lp: LogProbs, k: Knobs) -> Terms:
    return Terms.from_triplet(
        L.tspin_loss(
            lp.annotated, lp.synthetic, lp.proto, alpha=k.alpha, beta=k.beta, historical_mask=lp.historical_mask
        )
    )


@register(
    name="tspin_no_history",
    label="T-SPIN w/o H-A",
    color="#ff7f00",
    roles=TRIPLET,
    knobs=("alpha",),
    scale="alpha",
    logistic=True,
    skip="triplet",
    aliases=("tspin_without_history",),
    doc="docs/methods/ablations.md",
    formula="L = l(α·u): T-SPIN with β = 0 (reference-free SPIN, λ = α)",
    summary="the ablation without the historical advantage (beta = 0)",
)
def tspin_no_history(lp: LogProbs, k: Knobs) -> Terms:
    return Terms.from_triplet(L.tspin_without_history_loss(lp.annotated, lp.synthetic, lp.proto, alpha=k.alpha))


@register(
    name="tspin_ref",
    label="T-SPIN_ref",
    color="#6a3d9a",
    roles=TRIPLET,
    knobs=("lam", "beta"),
    reference=True,
    history=True,
    scale="lam",
    logistic=True,
    skip="triplet",
    maskable=True,
    doc="docs/methods/ablations.md",
    formula="L = l(λ·u) + β·l(λ·v) on log-ratios to π_t",
    summary="the T-SPIN form with SPIN's reference-based reward",
)
def tspin_ref(lp: LogProbs, k: Knobs) -> Terms:
    return Terms.from_triplet(
        L.tspin_ref_loss(
            lp.annotated,
            lp.synthetic,
            lp.proto,
            lp.need("ref_annotated"),
            lp.need("ref_synthetic"),
            lp.need("ref_proto"),
            lam=k.lam,
            beta=k.beta,
            historical_mask=lp.historical_mask,
        )
    )


# ---------------------------------------------------------------------------------------------
# Rules that read the table
# ---------------------------------------------------------------------------------------------


def zero_gradient(
    method: Method,
    beta: float,
    annotated: list[int],
    synthetic: list[int],
    proto: list[int] | None,
    keep_historical: bool = True,
) -> bool:
    """True when an example's loss cannot depend on the parameters, so its gradient is exactly zero.

    ``skip="pair"`` (SPIN): y' == y gives identical log-probs, so the margin is a constant. ``skip="triplet"``
    (the T-SPIN family): the current term is constant when y' == y, and the example is constant when its
    historical term is also off (beta = 0, as at Iter0 and in the no-history ablation, or masked because
    y0 == y) or compares y' with an identical y0. Objectives without a rule (SFT, anchors on y) never skip.
    """
    if method.skip is None or synthetic != annotated:
        return False
    if method.skip == "pair":
        return True
    return beta == 0 or not keep_historical or proto == synthetic
