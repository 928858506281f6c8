"""alpha / beta / lam panel: recompute the loss from cached log-probs as the sliders move.

Sliders: alpha (T-SPIN's entropy coefficient and reward scale), beta (historical weight), lam
(SPIN's reward scale). From one iteration's cached log-probs it recomputes, with the training
loss functions, each example's loss terms and gradient weights, the examples that drive the
update, the loss landscape over (alpha, beta), and Proposition 1's opponent softmax(c/alpha)
with its entropy. Moving a slider touches only cached tensors: no model runs.
"""

from __future__ import annotations

import html
import json

import ipywidgets as W
import numpy as np

from tspin_kit import analysis as A
from tspin_kit import figures as F

from ._common import (
    CARD_STYLE,
    ErrorLog,
    FigureSlots,
    FollowsIteration,
    OpensTriplets,
    figure_row,
    fmt,
    resolve_source,
    tips,
)

SCALE_GRID = np.geomspace(0.05, 5.0, 25)
BETA_GRID = np.linspace(0.0, 1.0, 21)
ENTROPY_ALPHAS = np.geomspace(0.05, 20.0, 60)


class AlphaBetaPanel(OpensTriplets, FollowsIteration, FigureSlots, W.VBox):
    """Interactive loss recomputation for one run. ``source``: session, run directory or records."""

    _redraw = "_on_data"  # the dashboard's iteration changes the cached tensors, not only the view

    def __init__(self, source, iteration: int | None = None, kind: str | None = None, stage: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.errors = ErrorLog()
        self.records, self.session = resolve_source(source)
        s = A.run_settings(self.records)
        self.settings = s
        kind = kind or A.default_loss_kind(s["method"])
        iters = A.iterations_of(self.records.examples)

        self.iteration = W.Dropdown(options=iters, value=iteration if iteration is not None else (iters[-1] if iters else None), description="iteration")
        self.kind = W.Dropdown(options=[("T-SPIN", "tspin"), ("SPIN", "spin"), ("T-SPIN_ref", "tspin_ref")], value=kind, description="loss")
        self.stage = W.ToggleButtons(
            options=[("log π_t (before training)", "before"), ("log π_t+1 (after)", "after")],
            value=stage or A.default_stage(kind),
            description="log-probs",
            style={"button_width": "190px"},
        )
        self.alpha = W.FloatLogSlider(value=s["alpha"], base=10, min=-1.3, max=0.7, step=0.02, description="alpha", readout_format=".3f", continuous_update=True)
        self.beta = W.FloatSlider(value=s["beta"], min=0.0, max=1.0, step=0.01, description="beta", readout_format=".2f", continuous_update=True)
        self.lam = W.FloatLogSlider(value=s["lam"], base=10, min=-2, max=1, step=0.02, description="lam", readout_format=".3f", continuous_update=True)
        self.example = W.Dropdown(options=[], description="prompt #")
        self.summary = W.HTML()
        self.help = W.HTML()
        tips(
            (self.iteration, "iteration t whose cached log-probs the loss is recomputed from"),
            (self.kind, "loss to recompute: T-SPIN (reference-free, alpha), SPIN (lam, log-ratios to pi_t), T-SPIN_ref"),
            (self.stage, "use log pi_t (the policy that generated y') or log pi_t+1 (after this iteration's training)"),
            (self.alpha, "alpha: T-SPIN's entropy coefficient and reward scale, reward = alpha * log pi(z|x)"),
            (self.beta, "beta: weight of the historical term l(alpha * v), v = log pi(y') - log pi(y0)"),
            (self.lam, "lam: SPIN's reward scale, reward = lam * (log pi - log pi_ref)"),
            (self.example, "prompt whose candidates (y, y', y0) the opponent softmax(c/alpha) is shown for"),
        )

        self._quiet = False
        self._inputs = None
        self._landscape = None
        self._candidates = None
        self.table = None  # the latest recompute_losses table
        self._slot("weights")
        self._slot("landscape")
        self._slot("drivers")
        self._slot("opponent")
        self._slot("entropy")

        self._link_clicks("weights", "drivers")  # click a point or a bar: open that triplet
        g = self.errors.guard
        self.alpha.observe(g(self._on_settings, "alpha"), names=["value"])
        self.beta.observe(g(self._on_settings, "beta"), names=["value"])
        self.lam.observe(g(self._on_settings, "lam"), names=["value"])
        self.iteration.observe(g(self._on_data, "iteration"), names=["value"])
        self.stage.observe(g(self._on_data, "stage"), names=["value"])
        self.kind.observe(g(self._on_data, "loss"), names=["value"])
        self.example.observe(g(self._on_example, "prompt"), names=["value"])

        self.children = [
            W.HTML("<h3 style='margin:4px 0'>α / β / λ: the loss from cached log-probs</h3>"),
            W.HBox([self.iteration, self.kind]),
            self.stage,
            W.HBox([self.alpha, self.beta, self.lam]),
            self.help,
            self.summary,
            self._slots["weights"],
            figure_row(self._slots["landscape"], self._slots["drivers"]),
            W.HTML("<h4 style='margin:4px 0'>Entropy view (Proposition 1)</h4>"),
            self.example,
            self._slots["opponent"],
            self._slots["entropy"],
            self.triplet_box,
            self._export_bar("alpha-beta", lambda: self.table),
            self.errors.box,
        ]

        g(self._on_data, "initial view")()

    # -- callbacks -----------------------------------------------------------------------------
    def _on_data(self, change=None) -> None:
        """Iteration, stage or loss changed: rebuild the cached tensors, landscape and candidates."""
        if self._quiet:
            return
        t = self.iteration.value
        kind = self.kind.value
        self.lam.disabled = kind == "tspin"
        self.beta.disabled = kind == "spin"
        self.help.value = _help(kind, self.settings, t)
        if t is None:
            self.summary.value = f"<div style='{CARD_STYLE}'>No finished iteration yet.</div>"
            return
        ex = self.records.examples
        self._inputs = A.loss_inputs(ex, t, self.stage.value, mask_proto_equal_annotated=self.settings["mask_proto_equal_annotated"])
        self._landscape = A.loss_landscape(self._inputs, kind=kind, scales=SCALE_GRID, betas=BETA_GRID)
        # Entropy view: offer the prompts with the most distinct candidates first.
        part = ex[ex["iteration"] == t]
        distinct = (part["synthetic"] != part["annotated"]).astype(int) + (part["proto"] != part["annotated"]).astype(int) + (part["synthetic"] != part["proto"]).astype(int)
        order = part.assign(_d=distinct.to_numpy()).sort_values(["_d", "example_id"], ascending=[False, True])["example_id"].head(200)
        options = [int(e) for e in order]
        current = self.example.value if self.example.value in options else (options[0] if options else None)
        self._quiet = True  # options/value swaps must not fire _on_example half-way
        try:
            self.example.options = options
            self.example.value = current
        finally:
            self._quiet = False
        self._load_candidates()
        self._slots["entropy"].show(F.token_entropy({A.run_label(self.records): (A.token_entropy_table(self.records.metrics, ex), self.settings["method"])}))
        self._on_settings()

    def _on_example(self, change=None) -> None:
        if self._quiet:
            return
        self._load_candidates()
        self._on_settings()  # redraws the opponent and records the prompt in the summary's state

    def _load_candidates(self) -> None:
        e, t = self.example.value, self.iteration.value
        if e is None or t is None:
            self._candidates = _empty_candidates()
        else:  # c = alpha_run * log pi: the opponent is the policy itself at the alpha the run trained with
            self._candidates = A.candidate_confidences(self.records.examples, t, e, self.stage.value, alpha_run=A.opponent_alpha(self.records))

    def _on_settings(self, change=None) -> None:
        """A slider moved: recompute every dependent figure from the cached tensors."""
        if self._inputs is None:
            return
        kind = self.kind.value
        alpha, beta, lam = float(self.alpha.value), float(self.beta.value), float(self.lam.value)
        scale = A.loss_scale(kind, alpha, lam)
        beta_used = 0.0 if kind == "spin" else beta
        self.table = A.recompute_losses(self._inputs, kind=kind, alpha=alpha, beta=beta, lam=lam)
        summary = A.loss_summary(self.table)
        top = A.top_drivers(self.table)
        self._slots["weights"].show(F.gradient_weights(self.table, kind=kind, scale=scale, beta=beta_used))
        self._slots["drivers"].show(F.top_drivers(top))
        self._slots["landscape"].show(F.loss_landscape(self._landscape, kind=kind, scale=scale, beta=beta_used))
        self._update_opponent()
        state = {"alpha": alpha, "beta": beta, "lam": lam, "kind": kind, "stage": self.stage.value, "iteration": self.iteration.value,
                 "example": self.example.value}  # what the figures were computed from (browser tests)
        self.summary.value = _summary_html(summary, kind, alpha, beta_used, lam, top, state)

    def _update_opponent(self) -> None:
        c = self._candidates
        alpha = float(self.alpha.value)
        self._slots["opponent"].show(F.opponent(A.opponent_table(c, alpha), A.opponent_entropy_curve(c, ENTROPY_ALPHAS), alpha, A.opponent_alpha(self.records)))


def _help(kind: str, s: dict, t) -> str:
    what = {
        "tspin": "L = l(α·u) + β·l(α·v), u = log π(y) − log π(y'), v = log π(y') − log π(y0); λ unused",
        "spin": "L = l(λ·[(log π(y) − log π_t(y)) − (log π(y') − log π_t(y'))]); β unused, α drives the entropy view only",
        "tspin_ref": "L = l(λ·u) + β·l(λ·v) on log-ratios to π_t; α drives the entropy view only",
    }[kind]
    note = " Training used β = 0 at iteration 0." if t == 0 and s["method"].startswith("tspin") else ""
    return f"<div style='{CARD_STYLE};opacity:0.85'>{html.escape(what)}. Run settings: α={s['alpha']:g}, β={s['beta']:g}, λ={s['lam']:g} ({html.escape(s['method'])}).{note}</div>"


def _summary_html(s: dict, kind: str, alpha: float, beta: float, lam: float, top, state: dict | None = None) -> str:
    ids = ", ".join(f"#{int(e)}" for e in top["example_id"].head(5))
    return (
        f"<div id='tspin-loss-summary' style='{CARD_STYLE}' data-alpha='{alpha:.4f}' data-beta='{beta:.4f}' data-lam='{lam:.4f}' data-state='{html.escape(json.dumps(state or {}))}' data-loss='{s['loss']:.6f}'>"
        f"<b>mean loss</b> {fmt(s['loss'], '.4f')} nats = current {fmt(s['loss_current'], '.4f')} + historical {fmt(s['loss_historical'], '.4f')}"
        f" &nbsp;|&nbsp; <b>mean weights</b> w_cur {fmt(s['weight_current'], '.3f')}, w_hist {fmt(s['weight_historical'], '.3f')}"
        f" &nbsp;|&nbsp; top {s['top_share']:.0%} of examples carry {fmt(s['top_drive_share'] * 100, '.1f')}% of the push"
        f" ({s['n']:,} examples; strongest: {ids})</div>"
    )


def _empty_candidates():
    import pandas as pd

    return pd.DataFrame({"candidate": [], "role": [], "text": [], "logp": np.zeros(0), "confidence": np.zeros(0)})
