"""Run comparison: two or more runs (SFT control, SPIN, T-SPIN, ablations, seeds) on common axes."""

from __future__ import annotations

import ipywidgets as W

from tspin_kit import analysis as A
from tspin_kit import figures as F

from ._common import ErrorLog, FigureSlots, fmt, html_table, resolve_runs, tips

DEFAULT_METRICS = ("score", "current_advantage_mean", "historical_advantage_mean")


class RunComparison(FigureSlots, W.VBox):
    """``runs``: a list of sources or a ``{label: source}`` mapping (sources: run dirs, records)."""

    def __init__(self, runs, metrics=DEFAULT_METRICS, **kwargs):
        super().__init__(**kwargs)
        self.errors = ErrorLog()
        self.runs = resolve_runs(runs)
        self.table = A.comparison_table(self.runs)
        labels = list(self.runs)
        self.run_select = W.SelectMultiple(
            options=labels, value=tuple(labels), description="runs", rows=min(6, max(2, len(labels)))
        )
        self.metric_select = W.SelectMultiple(
            options=[(v, k) for k, v in A.COMPARISON_METRICS.items()],
            value=tuple(metrics),
            description="metrics",
            rows=len(A.COMPARISON_METRICS),
            layout=W.Layout(width="420px"),
        )
        tips(
            (self.run_select, "runs to draw (ctrl/shift-click for several)"),
            (self.metric_select, "one panel per metric (ctrl/shift-click for several)"),
        )
        self._slot("comparison")
        self.final_html = W.HTML()
        g = self.errors.guard
        self.run_select.observe(g(self._update, "runs"), names=["value"])
        self.metric_select.observe(g(self._update, "metrics"), names=["value"])
        self.children = [
            W.HTML("<h3 style='margin:4px 0'>Run comparison</h3>"),
            W.HBox([self.run_select, self.metric_select]),
            self._slots["comparison"],
            self.final_html,
            self._export_bar("comparison", lambda: self.table),
            self.errors.box,
        ]
        g(self._update, "initial view")()

    def _update(self, change=None) -> None:
        runs = list(self.run_select.value)
        metrics = list(self.metric_select.value) or ["score"]
        self._slots["comparison"].show(F.run_comparison(self.table, metrics, runs))
        last = self.table[self.table["run"].isin(runs)].sort_values("x").groupby(["run", "metric"]).tail(1)
        wide = last.pivot(index="run", columns="metric", values="value").reset_index()
        cols = {"run": ("run", str)}
        for m in metrics:
            if m in wide:
                cols[m] = (A.COMPARISON_METRICS[m] + " (last)", lambda v: fmt(v, ".3f"))
        self.final_html.value = html_table(wide, cols, table_id="tspin-comparison-table")
