"""Advantage decay: what vanishes over the iterations of one or more runs, shown separately.

Per iteration, side by side for the runs given (e.g. the SFT control, SPIN and T-SPIN):

- the share of degenerate pairs (y' == y, and y0 == y), where u and SPIN's margin are 0 by construction;
- the current advantage u over the non-degenerate pairs (y' != y, with its q10-q90 band) next to u
  over all pairs, so a mean that falls only because more pairs became degenerate is visible as such;
- the reward margin r(y) - r(y') after training (runs with a reference-based reward, SPIN and
  T-SPIN_ref, when any is given: their margins share a scale);
- the historical advantage v per run beside the SFT control's v (the run of method ``sft``), which
  shows how far plain training drifts from pi_0 anyway;
- the task score, the policy's token entropy, and the reward-vs-log-likelihood misalignment
  scatter of the chosen iteration.

The tables come from ``tspin_kit.analysis``, the figures from ``tspin_kit.figures``.
"""

from __future__ import annotations

import ipywidgets as W

from tspin_kit import analysis as A
from tspin_kit import figures as F

from ._common import ErrorLog, FigureSlots, OpensTriplets, figure_row, resolve_runs, tips


class AdvantageDecay(OpensTriplets, FigureSlots, W.VBox):
    """``runs``: one source, a list of sources or a ``{label: source}`` mapping."""

    def __init__(self, runs, **kwargs):
        super().__init__(**kwargs)
        self.errors = ErrorLog()
        self.runs = resolve_runs(runs)
        self._quiet = False
        self.stage = W.ToggleButtons(
            options=[("at generation (π_t)", "before"), ("after training (π_t+1)", "after")],
            value="before",
            description="log-probs",
        )
        self.iteration = W.Dropdown(options=[], description="iteration")
        tips(
            (self.stage, "advantages under log pi_t (when y' was generated) or log pi_t+1 (after training)"),
            (
                self.iteration,
                "iteration of the reward-vs-likelihood misalignment scatter; click a point to open its triplet",
            ),
        )
        self._slot("decay")
        self._slot("degenerate")
        self._slot("margin")
        self._slot("score")
        self._slot("entropy")
        self._slot("misalignment")
        self._link_clicks("misalignment")  # click a point: open that triplet
        g = self.errors.guard
        self.stage.observe(g(self._on_stage, "stage"), names=["value"])
        self.iteration.observe(g(self._on_iteration, "iteration"), names=["value"])
        self.children = [
            W.HTML("<h3 style='margin:4px 0'>Advantage decay</h3>"),
            self.stage,
            self._slots["decay"],
            figure_row(self._slots["degenerate"], self._slots["margin"]),
            figure_row(self._slots["score"], self._slots["entropy"]),
            self.iteration,
            self._slots["misalignment"],
            self.triplet_box,
            self._export_bar("advantages", lambda: A.vanishing_summary(self._with_examples(), self.stage.value)),
            self.errors.box,
        ]

        g(self.refresh, "initial view")()

    def set_records(self, records, label: str | None = None) -> None:
        """Replace one run (the only one, or ``label``) with fresh records (dashboard)."""
        label = label or (next(iter(self.runs)) if len(self.runs) == 1 else A.run_label(records))
        self.runs[label] = records
        self.errors.guard(self.refresh, "refresh")()

    def set_iteration(self, t: int) -> None:
        if t in self.iteration.options:
            self.iteration.value = t

    def _clicked(self, point: dict, where: str = "") -> None:
        # the misalignment chart has one panel (two traces: aligned, misaligned) per run shown
        t = self.iteration.value
        shown = [k for k, r in self._with_examples().items() if t in A.iterations_of(r.examples)]
        k = int(point.get("curve") or 0) // 2
        self._clicked_run = shown[k] if k < len(shown) else next(iter(self.runs))
        super()._clicked(point, where)

    def _click_records(self):
        return self.runs[getattr(self, "_clicked_run", None) or next(iter(self.runs))]

    def _methods(self):
        return {k: A.run_settings(r)["method"] for k, r in self.runs.items()}

    def _with_examples(self):
        return {k: r for k, r in self.runs.items() if r.examples is not None and len(r.examples)}

    def refresh(self) -> None:
        m = self._methods()
        runs = self._with_examples()
        self._slots["degenerate"].show(
            F.degenerate_shares({k: (A.degenerate_shares(r.examples), m[k]) for k, r in runs.items()})
        )
        ref = {k: r for k, r in runs.items() if A.reference_based(m[k])}  # margins on one scale
        self._slots["margin"].show(
            F.reward_margins({k: (A.reward_margin_split(r.examples), m[k]) for k, r in (ref or runs).items()})
        )
        self._slots["score"].show(
            F.scores(
                {k: (A.policy_scores(r.metrics), m[k]) for k, r in self.runs.items()},
                score_name=A.score_name(next(iter(self.runs.values())).metrics) if self.runs else "accuracy",
            )
        )
        self._slots["entropy"].show(
            F.token_entropy({k: (A.token_entropy_table(r.metrics, r.examples), m[k]) for k, r in runs.items()})
        )
        iters = sorted({t for r in runs.values() for t in A.iterations_of(r.examples)})
        keep = self.iteration.value if self.iteration.value in iters else (iters[-1] if iters else None)
        self._quiet = True
        try:
            self.iteration.options = iters
            self.iteration.value = keep
        finally:
            self._quiet = False
        self._on_stage()
        self._on_iteration()

    def _on_stage(self, change=None) -> None:
        m = self._methods()
        runs = self._with_examples()
        stage = self.stage.value
        u = {k: (A.current_advantage_split(r.examples, stage), m[k]) for k, r in runs.items()}
        self._slots["decay"].show(
            F.vanishing_advantages(u, A.historical_advantage_table(runs, stage), stage, self.iteration.value)
        )

    def _on_iteration(self, change=None) -> None:
        if self._quiet:
            return
        t = self.iteration.value
        m = self._methods()
        runs = {k: r for k, r in self._with_examples().items() if t in A.iterations_of(r.examples)}
        self._slots["misalignment"].show(
            F.misalignment({k: (A.misalignment_table(r.examples, t), m[k]) for k, r in runs.items()}, t)
        )
        if change is not None:
            self._on_stage()  # move the iteration marker
