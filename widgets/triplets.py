"""Triplet browser: the (x, y, y', y0) triplets of one iteration, filtered, sorted, and one in detail.

Table: sortable and filterable by current advantage u, historical advantage v, correctness of y',
y' == y and y0 == y, and optionally restricted to a set of example ids (``show(iteration,
example_ids)``: how the dashboard opens the triplets behind an instability alarm). Detail: the prompt and the annotated, synthetic and proto-synthetic responses
side by side with log-probs, rewards and advantages, each token shaded by its log-probability,
and how this prompt's synthetic response changed across iterations.
"""

from __future__ import annotations

import html
import math

import ipywidgets as W
import numpy as np
import pandas as pd

from tspin_kit import analysis as A
from tspin_kit import figures as F

from ._common import CARD_STYLE, ErrorLog, FigureSlots, FollowsIteration, fmt, html_table, resolve_source, text_cell

SORT_OPTIONS = [
    ("current advantage u", "current_advantage"),
    ("historical advantage v", "historical_advantage"),
    ("reward margin", "reward_margin"),
    ("loss", "loss"),
    ("example id", "example_id"),
]
TRI = [("any", None), ("yes", True), ("no", False)]
PAGE = 25


class TripletBrowser(FollowsIteration, FigureSlots, W.VBox):
    """Browse one run's triplets. ``source``: session, run directory or records."""

    def __init__(self, source, iteration: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.errors = ErrorLog()
        self.records, self.session = resolve_source(source)
        iters = A.iterations_of(self.records.examples)
        self._quiet = False
        self.iteration = W.Dropdown(options=iters, value=iteration if iteration is not None else (iters[-1] if iters else None), description="iteration")
        self.stage = W.ToggleButtons(options=[("before training", "before"), ("after training", "after")], value="before", description="u, v at")
        self.current = W.FloatRangeSlider(description="u range", min=-1, max=1, value=(-1, 1), step=0.1, readout_format=".1f", continuous_update=False)
        self.historical = W.FloatRangeSlider(description="v range", min=-1, max=1, value=(-1, 1), step=0.1, readout_format=".1f", continuous_update=False)
        self.correct = W.Dropdown(options=[("any", None), ("correct", True), ("incorrect", False)], value=None, description="y' is")
        self.synthetic_equals_annotated = W.Dropdown(options=TRI, value=None, description="y' == y")
        self.proto_equals_annotated = W.Dropdown(options=TRI, value=None, description="y0 == y")
        self.sort_by = W.Dropdown(options=SORT_OPTIONS, value="current_advantage", description="sort by")
        self.descending = W.Checkbox(value=False, description="descending", indent=False)
        self.table_html = W.HTML()
        self.example = W.Dropdown(options=[], description="triplet")
        self.detail_html = W.HTML()
        self._slot("tokens")
        self.history_html = W.HTML()
        self._slot("history")
        self.table = None
        self.example_ids: tuple[int, ...] | None = None  # restrict the table to these examples (None: all)
        self._ids_note = ""
        self.ids_html = W.HTML()
        self.show_all = W.Button(description="show all triplets", icon="times", layout=W.Layout(width="160px", display="none"))

        g = self.errors.guard
        self.iteration.observe(g(self._on_iteration, "iteration"), names=["value"])
        self.stage.observe(g(self._on_iteration, "stage"), names=["value"])
        for w in (self.current, self.historical, self.correct, self.synthetic_equals_annotated, self.proto_equals_annotated, self.sort_by, self.descending):
            w.observe(g(self._on_filter, w.description), names=["value"])
        self.example.observe(g(self._on_example, "triplet"), names=["value"])
        self.show_all.on_click(g(lambda _b: self.show(self.iteration.value), "show all triplets"))

        self.children = [
            W.HTML("<h3 style='margin:4px 0'>Triplets (x, y, y', y0)</h3>"),
            W.HBox([self.iteration, self.stage]),
            W.HBox([self.current, self.historical]),
            W.HBox([self.correct, self.synthetic_equals_annotated, self.proto_equals_annotated]),
            W.HBox([self.sort_by, self.descending]),
            W.HBox([self.ids_html, self.show_all]),
            self.table_html,
            self.example,
            self.detail_html,
            self._slots["tokens"],
            self.history_html,
            self._slots["history"],
            self.errors.box,
        ]
        g(self._on_iteration, "initial view")()

    def show(self, iteration: int, example_ids=None, note: str = "") -> None:
        """Open ``iteration`` with only the triplets of ``example_ids`` (None: all of them).

        The other filters are reset so that none hides those triplets, and the first id of
        ``example_ids`` present is shown in detail (an alarm lists its most telling triplet
        first). ``note`` (e.g. the alarm's message) is shown above the table. The id filter stays
        when the iteration is changed (ids are stable across iterations) until ``show`` is called
        without ids or the "show all triplets" button is pressed.
        """
        if iteration not in self.iteration.options:
            raise ValueError(f"iteration {iteration} is not among this run's finished iterations {list(self.iteration.options)}")
        self.example_ids = None if example_ids is None else tuple(int(e) for e in example_ids)
        self._ids_note = note if self.example_ids is not None else ""
        self._quiet = True
        try:
            self.correct.value = None
            self.synthetic_equals_annotated.value = None
            self.proto_equals_annotated.value = None
            self.iteration.value = iteration
        finally:
            self._quiet = False
        self._on_iteration()  # resets the u, v ranges to the data's, then filters
        shown = [v for _, v in self.example.options]
        first = next((e for e in (self.example_ids or ()) if e in shown), None)
        if first is not None:
            self.example.value = first

    # -- callbacks -----------------------------------------------------------------------------
    def _on_iteration(self, change=None) -> None:
        """New iteration or stage: reset the advantage ranges to the data's, then refilter."""
        if self._quiet:
            return
        t = self.iteration.value
        if t is None:
            self.table_html.value = f"<div style='{CARD_STYLE}'>No finished iteration yet.</div>"
            return
        part = self.records.examples[self.records.examples["iteration"] == t]
        self._quiet = True
        try:
            for w, col in ((self.current, "current_advantage"), (self.historical, "historical_advantage")):
                x = part[f"{col}_{self.stage.value}"].to_numpy(dtype=float)
                x = x[np.isfinite(x)]
                lo, hi = (math.floor(x.min()), math.ceil(x.max())) if len(x) else (-1, 1)
                hi = max(hi, lo + 1)
                # widen before narrowing so min <= max holds at every step
                w.min, w.max = min(w.min, lo), max(w.max, hi)
                w.value = (lo, hi)
                w.min, w.max = lo, hi
        finally:
            self._quiet = False
        self._on_filter()

    def _on_filter(self, change=None) -> None:
        if self._quiet or self.iteration.value is None:
            return
        t = self.iteration.value
        self.table = A.triplet_table(
            self.records.examples,
            t,
            stage=self.stage.value,
            current=tuple(self.current.value),
            historical=tuple(self.historical.value),
            correct=self.correct.value,
            synthetic_equals_annotated=self.synthetic_equals_annotated.value,
            proto_equals_annotated=self.proto_equals_annotated.value,
            sort_by=self.sort_by.value,
            ascending=not self.descending.value,
        )
        if self.example_ids is not None:
            self.table = self.table[self.table["example_id"].isin(self.example_ids)]
        self._show_ids_filter()
        tab = self.table
        check = {True: "✓", False: "✗"}
        cols = {
            "example_id": ("#", lambda v: str(int(v))),
            "prompt": ("prompt x", text_cell),
            "annotated": ("y", text_cell),
            "synthetic": ("y'", text_cell),
            "proto": ("y0", text_cell),
            "current_advantage": ("u (nats)", fmt),
            "historical_advantage": ("v (nats)", fmt),
            "synthetic_correct": ("y' correct", lambda v: "–" if pd.isna(v) else check.get(bool(v), "–")),
            "synthetic_equals_annotated": ("y'==y", lambda v: "=" if v else ""),
            "proto_equals_annotated": ("y0==y", lambda v: "=" if v else ""),
            "loss": ("loss", lambda v: fmt(v, ".3f")),
        }
        n_all = int((self.records.examples["iteration"] == t).sum())
        self.table_html.value = (
            f"<div style='{CARD_STYLE}'><b>{len(tab):,}</b> of {n_all:,} triplets match</div>"
            + html_table(tab, cols, table_id="tspin-triplet-table", max_rows=PAGE)
        )
        options = [(f"#{int(r.example_id)}  u={r.current_advantage:+.2f}  v={r.historical_advantage:+.2f}  y'={str(r.synthetic)[:20]!r}", int(r.example_id)) for r in tab.head(500).itertuples()]
        keep = self.example.value if self.example.value in [v for _, v in options] else (options[0][1] if options else None)
        self._quiet = True
        try:
            self.example.options = options
            self.example.value = keep
        finally:
            self._quiet = False
        self._on_example()

    def _show_ids_filter(self) -> None:
        if self.example_ids is None:
            self.ids_html.value = ""
            self.show_all.layout.display = "none"
            return
        note = f": {html.escape(self._ids_note)}" if self._ids_note else ""
        self.ids_html.value = (
            f"<div id='tspin-ids-filter' data-count='{len(self.example_ids)}' style='{CARD_STYLE};color:#b15928'>"
            f"only {len(self.example_ids):,} chosen examples{note}</div>"
        )
        self.show_all.layout.display = None

    def _on_example(self, change=None) -> None:
        if self._quiet:
            return
        e, t = self.example.value, self.iteration.value
        if e is None or t is None:
            self.detail_html.value = f"<div style='{CARD_STYLE}'>No triplet matches the filters.</div>"
            return
        ex = self.records.examples
        detail = A.triplet_detail(ex, t, e)
        shading = A.token_shading(ex, t, e, stage=self.stage.value)
        self.detail_html.value = detail_html(detail, shading, self.stage.value)
        self._slots["tokens"].show(F.token_logps(shading, f"Per-token log-probs of example {e}, iteration {t} ({self.stage.value} training)"))
        hist = A.synthetic_history(ex, e)
        self.history_html.value = history_html(hist, detail["roles"].iloc[0]["text"])
        self._slots["history"].show(F.synthetic_history(hist, e))


def _shade(logp: float) -> str:
    """Background for a token: more opaque = less likely (0 nats clear, <= -6 nats strongest)."""
    a = min(max(-logp / 6.0, 0.0), 1.0) * 0.7
    return f"rgba(99,102,241,{a:.2f})"


def detail_html(detail: dict, shading, stage: str) -> str:
    """Three columns (y, y', y0) with header colours of ``figures.ROLE_COLORS`` and shaded tokens."""
    roles = detail["roles"].set_index("role")
    adv = detail["advantages"]
    cols = []
    for role in A.ROLES:
        r = roles.loc[role]
        toks = shading[shading["role"] == role]
        spans = "".join(
            f"<span class='tspin-token' title='{html.escape(repr(tk.token))}: {tk.logp:.3f} nats' "
            f"style='background:{_shade(tk.logp)};padding:1px 1px;margin:0 1px;border-radius:2px;white-space:pre'>{html.escape(str(tk.token))}</span>"
            for tk in toks.itertuples()
        ) or f"<span style='white-space:pre-wrap'>{html.escape(str(r['text']))}</span>"
        color = F.ROLE_COLORS[role]
        cols.append(
            f"<div style='flex:1;min-width:200px;border:1px solid var(--jp-border-color2,#ddd);border-top:4px solid {color};padding:6px;border-radius:4px'>"
            f"<div style='color:{color};font-weight:bold'>{html.escape(F.ROLE_LABELS[role])}</div>"
            f"<div style='font-family:var(--jp-code-font-family,monospace);font-size:14px;margin:6px 0;line-height:1.8'>{spans}</div>"
            f"<div style='font-size:12px'>log π_t = {fmt(r['logp_before'])} · log π_t+1 = {fmt(r['logp_after'])} nats<br>"
            f"{int(r['ntokens'])} tokens ({fmt(r['logp_per_token_after'], '.3f')} nats/token after) · reward {fmt(r['reward'], '.3f')}</div></div>"
        )
    flags = ", ".join(k.replace("_", " ") for k in ("synthetic_equals_annotated", "proto_equals_annotated", "synthetic_equals_proto", "misaligned") if adv.get(k))
    summary = (
        f"u = log π(y) − log π(y') = {fmt(adv.get('current_advantage_before'))} → {fmt(adv.get('current_advantage_after'))} nats · "
        f"v = log π(y') − log π(y0) = {fmt(adv.get('historical_advantage_before'))} → {fmt(adv.get('historical_advantage_after'))} nats (before → after training)<br>"
        f"reward margin {fmt(adv.get('reward_margin'), '.3f')} · loss {fmt(adv.get('loss'), '.3f')} = current {fmt(adv.get('loss_current'), '.3f')} + historical {fmt(adv.get('loss_historical'), '.3f')}"
        + (f" · <b>{html.escape(flags)}</b>" if flags else "")
    )
    legend = "<span style='opacity:0.75;font-size:11px'>token shading: darker = less likely under the policy (" + ("π_t" if stage == "before" else "π_t+1") + "); hover a token for its log-prob</span>"
    return (
        f"<div id='tspin-triplet-detail' style='{CARD_STYLE}'>"
        f"<div><b>example {detail['example_id']}, iteration {detail['iteration']}</b> · prompt x: "
        f"<code style='white-space:pre-wrap'>{html.escape(str(detail['prompt']))}</code></div>"
        f"<div style='display:flex;gap:8px;margin:6px 0;flex-wrap:wrap'>{''.join(cols)}</div>"
        f"<div style='font-size:12px'>{summary}</div>{legend}</div>"
    )


def history_html(hist, annotated: str) -> str:
    """The prompt's y' per iteration, marking changes and matches with y."""
    rows = []
    for r in hist.itertuples():
        mark = "= y" if r.synthetic_equals_annotated else ("changed" if r.changed else "")
        rows.append(
            f"<tr><td style='padding:1px 8px'>{int(r.iteration)}</td>"
            f"<td style='padding:1px 8px;font-family:var(--jp-code-font-family,monospace);color:{F.ROLE_COLORS['synthetic']}'>{html.escape(str(r.synthetic))}</td>"
            f"<td style='padding:1px 8px;text-align:right'>{fmt(r.synthetic_logp_before)}</td><td style='padding:1px 8px'>{mark}</td></tr>"
        )
    return (
        f"<div id='tspin-synthetic-history' style='{CARD_STYLE}'><b>Synthetic response y' across iterations</b> (y = "
        f"<code>{html.escape(str(annotated))}</code>)<table style='font-size:12px'><tr><th>t</th><th>y'</th><th>log π_t(y') (nats)</th><th></th></tr>{''.join(rows)}</table></div>"
    )
