"""The objective lab: any registered objective over a saved run's log-probs, recomputed as its knobs move.

Pick an objective from the table of methods (`tspin_kit.methods`) and its knobs (alpha, beta, lam, and any
knob the objective declares, e.g. the NLL anchor's weight). From one iteration's cached log-probs it
recomputes, with the training loss functions, each example's loss terms and its gradient on log pi(y),
log pi(y') and log pi(y0), the examples that drive the update, the loss landscape over (scale, beta), and
Proposition 1's opponent softmax(c/alpha) with its entropy, next to the knobs training used at that iteration
(the recorded config and per-iteration schedule). Moving a slider touches only cached tensors: no model runs.
"""

from __future__ import annotations

import html
import json

import ipywidgets as W
import numpy as np

from tspin_kit import analysis as A
from tspin_kit import figures as F
from tspin_kit import methods as M

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

BETA_GRID = np.linspace(0.0, 1.0, 21)
ENTROPY_ALPHAS = np.geomspace(0.05, 20.0, 60)


class ObjectiveLab(OpensTriplets, FollowsIteration, FigureSlots, W.VBox):
    """Interactive loss recomputation for one run, any objective. ``source``: session, run directory or records."""

    _redraw = "_on_data"  # the dashboard's iteration changes the cached tensors, not only the view

    def __init__(
        self, source, iteration: int | None = None, kind: str | None = None, stage: str | None = None, **kwargs
    ):
        super().__init__(**kwargs)
        self.errors = ErrorLog()
        self.records, self.session = resolve_source(source)
        s = A.run_settings(self.records)
        self.settings = s
        kind = kind or A.default_loss_kind(s["method"])
        iters = A.iterations_of(self.records.examples)

        self.iteration = W.Dropdown(
            options=iters,
            value=iteration if iteration is not None else (iters[-1] if iters else None),
            description="iteration",
        )
        self.kind = W.Dropdown(
            options=[(m.label, n) for n, m in M.table().items()], value=kind, description="objective"
        )
        self.stage = W.ToggleButtons(
            options=[("log π_t (before training)", "before"), ("log π_t+1 (after)", "after")],
            value=stage or A.default_stage(kind),
            description="log-probs",
            style={"button_width": "190px"},
        )
        # one slider per knob of the table (alpha, beta, lam first); the objective's own are enabled
        self.knobs: dict[str, W.Widget] = {name: _slider(k) for name, k in M.KNOBS.items()}
        self.alpha, self.beta, self.lam = self.knobs["alpha"], self.knobs["beta"], self.knobs["lam"]
        self.reset = W.Button(
            description="training's values", tooltip="set every knob to what training used at this iteration"
        )
        self.example = W.Dropdown(options=[], description="prompt #")
        self.summary = W.HTML()
        self.help = W.HTML()
        tips(
            (self.iteration, "iteration t whose cached log-probs the loss is recomputed from"),
            (self.kind, "objective to recompute: any method of the table of methods (tspin_kit/methods.py)"),
            (self.stage, "use log pi_t (the policy that generated y') or log pi_t+1 (after this iteration's training)"),
            (self.example, "prompt whose candidates (y, y', y0) the opponent softmax(c/alpha) is shown for"),
            *[(w, f"{name}: {M.KNOBS[name].help}") for name, w in self.knobs.items()],
        )
        self._set_knobs(
            A.knobs_used(self.records, self.iteration.value, kind) if self.iteration.value is not None else {}
        )

        self._quiet = False
        self._inputs = None
        self._landscape = None
        self._landscape_key = None
        self._candidates = None
        self._opponent_alpha = None
        self.table = None  # the latest recompute_losses table
        self._slot("weights")
        self._slot("gradients")
        self._slot("landscape")
        self._slot("drivers")
        self._slot("opponent")
        self._slot("entropy")

        self._link_clicks("weights", "drivers")  # click a point or a bar: open that triplet
        g = self.errors.guard
        for name, w in self.knobs.items():
            w.observe(g(self._on_settings, name), names=["value"])
        self.reset.on_click(g(lambda _b: self._reset(), "training's values"))
        self.iteration.observe(g(self._on_data, "iteration"), names=["value"])
        self.stage.observe(g(self._on_data, "stage"), names=["value"])
        self.kind.observe(g(self._on_data, "loss"), names=["value"])
        self.example.observe(g(self._on_example, "prompt"), names=["value"])

        self.children = [
            W.HTML("<h3 style='margin:4px 0'>Objective lab: any objective's loss from cached log-probs</h3>"),
            W.HBox([self.iteration, self.kind]),
            self.stage,
            W.HBox([*self.knobs.values(), self.reset], layout=W.Layout(flex_flow="row wrap")),
            self.help,
            self.summary,
            self._slots["weights"],
            self._slots["gradients"],
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
        spec = M.get(kind)
        for name, w in self.knobs.items():  # only the objective's knobs move; the others are shown, disabled
            w.disabled = name not in spec.knobs
            w.layout.display = None if name in spec.knobs or name in ("alpha", "beta", "lam") else "none"
        self.help.value = _help(spec, self.records, t)
        if t is None:
            self.summary.value = f"<div style='{CARD_STYLE}'>No finished iteration yet.</div>"
            return
        ex = self.records.examples
        self._inputs = A.loss_inputs(
            ex, t, self.stage.value, mask_proto_equal_annotated=self.settings["mask_proto_equal_annotated"]
        )
        self._landscape, self._landscape_key = None, None  # computed by _on_settings for the current knobs

        # Entropy view: offer the prompts with the most distinct candidates first.
        part = ex[ex["iteration"] == t]
        distinct = (
            (part["synthetic"] != part["annotated"]).astype(int)
            + (part["proto"] != part["annotated"]).astype(int)
            + (part["synthetic"] != part["proto"]).astype(int)
        )
        order = (
            part.assign(_d=distinct.to_numpy())
            .sort_values(["_d", "example_id"], ascending=[False, True])["example_id"]
            .head(200)
        )
        options = [int(e) for e in order]
        current = self.example.value if self.example.value in options else (options[0] if options else None)
        self._quiet = True  # options/value swaps must not fire _on_example half-way
        try:
            self.example.options = options
            self.example.value = current
        finally:
            self._quiet = False
        self._load_candidates()
        self._slots["entropy"].show(
            F.token_entropy(
                {A.run_label(self.records): (A.token_entropy_table(self.records.metrics, ex), self.settings["method"])}
            )
        )
        self._on_settings()

    def _values(self) -> dict[str, float]:
        return {name: float(w.value) for name, w in self.knobs.items()}

    def _set_knobs(self, values: dict) -> None:
        quiet, self._quiet = getattr(self, "_quiet", False), True
        try:
            for name, v in values.items():
                self.knobs[name].value = v
        finally:
            self._quiet = quiet

    def _reset(self) -> None:
        """Every knob of the objective back to what training used at this iteration (recorded schedule)."""
        if self.iteration.value is not None:
            self._set_knobs(A.knobs_used(self.records, self.iteration.value, self.kind.value))
            self._on_settings()

    def _on_example(self, change=None) -> None:
        if self._quiet:
            return
        self._load_candidates()
        self._on_settings()  # redraws the opponent and records the prompt in the summary's state

    def _load_candidates(self) -> None:
        self._opponent_alpha = None  # new candidates: the opponent figure is redrawn whatever alpha is
        e, t = self.example.value, self.iteration.value
        if e is None or t is None:
            self._candidates = _empty_candidates()
        else:  # c = alpha_run * log pi: the opponent is the policy itself at the alpha the run trained with
            self._candidates = A.candidate_confidences(
                self.records.examples, t, e, self.stage.value, alpha_run=A.opponent_alpha(self.records)
            )

    def _on_settings(self, change=None) -> None:
        """A slider moved: recompute every dependent figure from the cached tensors."""
        if self._inputs is None or self._quiet:
            return
        kind = self.kind.value
        spec = M.get(kind)
        v = self._values()
        alpha, beta, lam = v.pop("alpha"), v.pop("beta"), v.pop("lam")
        scale = A.loss_scale(kind, alpha, lam, **v)
        beta_used = beta if "beta" in spec.knobs else 0.0
        self.table = A.recompute_losses(self._inputs, kind=kind, alpha=alpha, beta=beta, lam=lam, **v)
        # the landscape's axes are the scale and beta; it is recomputed only when another knob (e.g. anchor) moved
        key = tuple(sorted((k, x) for k, x in {**v, "alpha": alpha, "lam": lam}.items() if k != spec.scale))
        if key != self._landscape_key:
            self._landscape = A.loss_landscape(
                self._inputs, kind=kind, scales=landscape_scales(kind), betas=BETA_GRID, alpha=alpha, lam=lam, **v
            )
            self._landscape_key = key
        summary = A.loss_summary(self.table)
        top = A.top_drivers(self.table)
        with F.figure_specs():  # plain dicts to the browser; a go.Figure only if someone reads slot.figure
            self._slots["weights"].show(F.gradient_weights(self.table, kind=kind, scale=scale, beta=beta_used))
            self._slots["gradients"].show(F.objective_gradients(self.table, spec.label))
            self._slots["drivers"].show(F.top_drivers(top))
            self._slots["landscape"].show(F.loss_landscape(self._landscape, kind=kind, scale=scale, beta=beta_used))
            self._update_opponent()
        state = {
            "alpha": alpha,
            "beta": beta,
            "lam": lam,
            **v,
            "kind": kind,
            "stage": self.stage.value,
            "iteration": self.iteration.value,
            "example": self.example.value,
        }  # what the figures were computed from (browser tests)
        self.summary.value = _summary_html(summary, kind, alpha, beta_used, lam, top, state)

    def _update_opponent(self) -> None:
        c = self._candidates
        alpha = float(self.alpha.value)
        if alpha == self._opponent_alpha:  # it reads alpha and the prompt's candidates only: a beta move skips it
            return
        self._slots["opponent"].show(
            F.opponent(
                A.opponent_table(c, alpha),
                A.opponent_entropy_curve(c, ENTROPY_ALPHAS),
                alpha,
                A.opponent_alpha(self.records),
            )
        )
        self._opponent_alpha = alpha  # only once drawn: a failed draw is tried again on the next move


def landscape_scales(kind: str) -> np.ndarray:
    """The landscape's x axis: 25 values over the objective's scale-knob slider range (log-spaced)."""
    spec = M.get(kind)
    lo, hi = M.KNOBS[spec.scale].slider if spec.scale else (0.05, 5.0)
    return np.geomspace(max(lo, 1e-3), hi, 25)


def _slider(k: M.Knob) -> W.Widget:
    lo, hi = k.slider
    if k.log_slider:
        # the ends on the 0.02 grid of log10 values, so that round values (1.0, 0.1) are slider positions: with
        # min = log10(0.05) = -1.30103 the browser snapped alpha = 1 to 0.998 and redrew
        return W.FloatLogSlider(
            value=k.default,
            base=10,
            min=round(float(np.log10(lo)) / 0.02) * 0.02,
            max=round(float(np.log10(hi)) / 0.02) * 0.02,
            step=0.02,
            description=k.name,
            readout_format=".3f",
            continuous_update=True,
        )
    return W.FloatSlider(
        value=k.default,
        min=lo,
        max=hi,
        step=(hi - lo) / 100,
        description=k.name,
        readout_format=".2f",
        continuous_update=True,
    )


def _help(spec: M.Method, records, t) -> str:
    """The objective's formula, and what training used at this iteration (recorded config and schedule)."""
    s = A.run_settings(records)
    run = M.get(s["method"])
    if t is None:
        used = ""
    else:
        knobs = A.knobs_used(records, t)
        values = ", ".join(f"{M.KNOBS[k].symbol} = {v:g}" for k, v in knobs.items()) or "no knobs"
        part = records.examples[records.examples["iteration"] == t]
        loss = float(part["loss"].mean()) if "loss" in part and len(part) else float("nan")
        used = (
            f" Training at iteration {t}: {html.escape(run.label)} with {values}; recorded mean loss "
            f"{fmt(loss, '.4f')} nats (after training)."
        )
    return (
        f"<div id='tspin-objective-help' style='{CARD_STYLE};opacity:0.85'><b>{html.escape(spec.label)}</b>: "
        f"{html.escape(spec.formula)}.{used}</div>"
    )


def _summary_html(s: dict, kind: str, alpha: float, beta: float, lam: float, top, state: dict | None = None) -> str:
    ids = ", ".join(f"#{int(e)}" for e in top["example_id"].head(5))
    return (
        f"<div id='tspin-loss-summary' style='{CARD_STYLE}' "
        f"data-alpha='{alpha:.4f}' data-beta='{beta:.4f}' data-lam='{lam:.4f}' "
        f"data-state='{html.escape(json.dumps(state or {}))}' data-loss='{s['loss']:.6f}'>"
        f"<b>mean loss</b> {fmt(s['loss'], '.4f')} nats = current {fmt(s['loss_current'], '.4f')} "
        f"+ historical {fmt(s['loss_historical'], '.4f')}"
        " &nbsp;|&nbsp; <b>mean weights</b> "
        f"w_cur {fmt(s['weight_current'], '.3f')}, w_hist {fmt(s['weight_historical'], '.3f')}"
        f" &nbsp;|&nbsp; top {s['top_share']:.0%} of examples carry "
        f"{fmt(s['top_drive_share'] * 100, '.1f')}% of the push"
        f" ({s['n']:,} examples; strongest: {ids})</div>"
    )


def _empty_candidates():
    import pandas as pd

    return pd.DataFrame({"candidate": [], "role": [], "text": [], "logp": np.zeros(0), "confidence": np.zeros(0)})


AlphaBetaPanel = ObjectiveLab  # the name the notebooks, the workshop and the dashboard use
