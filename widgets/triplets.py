"""Triplet browser: the (x, y, y', y0) triplets of one iteration, filtered, sorted, and one in detail.

Table: sortable and filterable by current advantage u, historical advantage v, correctness of y',
y' == y and y0 == y, and optionally restricted to a set of example ids (``show(iteration,
example_ids)``: how the dashboard opens the triplets behind an instability alarm). Detail: the prompt
and the annotated, synthetic and proto-synthetic responses side by side with log-probs, rewards and
advantages, each token shaded by its log-probability, and how this prompt's synthetic response changed
across iterations.
"""

from __future__ import annotations

import html
import math

import ipywidgets as W
import numpy as np
import pandas as pd

from tspin_kit import analysis as A
from tspin_kit import figures as F

from ._common import (
    CARD_STYLE,
    ErrorLog,
    FigureSlots,
    FollowsIteration,
    fmt,
    resolve_source,
    tips,
)
from .table_view import TableView

SORT_OPTIONS = [
    ("current advantage u", "current_advantage"),
    ("historical advantage v", "historical_advantage"),
    ("reward margin", "reward_margin"),
    ("loss", "loss"),
    ("example id", "example_id"),
]
# Dropdown values are strings: ipywidgets 8 treats a value of None as "nothing selected" and shows a
# blank box, so "any" is the string "any" and ``_tri`` maps it to None for ``analysis.triplet_table``.
TRI = [("any", "any"), ("yes", "yes"), ("no", "no")]
_TRI_VALUE = {"any": None, "yes": True, "no": False, "correct": True, "incorrect": False}


def _tri(value):
    return _TRI_VALUE.get(value, value)


PAGE = 25


class TripletBrowser(FollowsIteration, FigureSlots, W.VBox):
    """Browse one run's triplets. ``source``: session, run directory or records."""

    def __init__(self, source, iteration: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.errors = ErrorLog()
        self.records, self.session = resolve_source(source)
        iters = A.iterations_of(self.records.examples)
        self._quiet = False
        self.iteration = W.Dropdown(
            options=iters,
            value=iteration if iteration is not None else (iters[-1] if iters else None),
            description="iteration",
        )
        self.stage = W.ToggleButtons(
            options=[("before training", "before"), ("after training", "after")], value="before", description="u, v at"
        )
        self.current = W.FloatRangeSlider(
            description="u range", min=-1, max=1, value=(-1, 1), step=0.1, readout_format=".1f", continuous_update=False
        )
        self.historical = W.FloatRangeSlider(
            description="v range", min=-1, max=1, value=(-1, 1), step=0.1, readout_format=".1f", continuous_update=False
        )
        self.correct = W.Dropdown(
            options=[("any", "any"), ("correct", "correct"), ("incorrect", "incorrect")],
            value="any",
            description="y' is",
            tooltip="keep triplets whose synthetic response y' is correct / incorrect (task scorer)",
        )
        self.synthetic_equals_annotated = W.Dropdown(
            options=TRI,
            value="any",
            description="y' == y",
            tooltip="degenerate pair: y' equals the annotated y (u = 0 by construction)",
        )
        self.proto_equals_annotated = W.Dropdown(
            options=TRI,
            value="any",
            description="y0 == y",
            tooltip="y0 (sampled once from pi_0) equals y: T-SPIN masks the historical term there",
        )
        self.sort_by = W.Dropdown(options=SORT_OPTIONS, value="current_advantage", description="sort by")
        self.descending = W.Checkbox(value=False, description="descending", indent=False)
        tips(
            (self.iteration, "iteration t: triplets whose y' was sampled from pi_t"),
            (self.stage, "u and v under log pi_t (before this iteration's training) or log pi_t+1 (after)"),
            (self.current, "keep triplets whose current advantage u = log pi(y) - log pi(y') is in this range (nats)"),
            (
                self.historical,
                "keep triplets whose historical advantage v = log pi(y') - log pi(y0) is in this range (nats)",
            ),
            (self.sort_by, "column the table and the triplet list are sorted by"),
            (self.descending, "largest first"),
        )
        self.table_html = W.HTML()
        check = {True: "✓", False: "✗"}
        self.grid = TableView(
            {
                "example_id": ("#", lambda v: str(int(v))),
                "prompt": ("prompt x", str),
                "annotated": ("y", str),
                "synthetic": ("y'", str),
                "proto": ("y0", str),
                "current_advantage": ("u (nats)", fmt),
                "historical_advantage": ("v (nats)", fmt),
                "synthetic_correct": ("y' correct", lambda v: "–" if pd.isna(v) else check.get(bool(v), "–")),
                "synthetic_equals_annotated": ("y'==y", lambda v: "=" if v else ""),
                "proto_equals_annotated": ("y0==y", lambda v: "=" if v else ""),
                "reward_margin": ("margin", lambda v: fmt(v, ".3f")),
                "loss": ("loss", lambda v: fmt(v, ".3f")),
            },
            key="example_id",
            search=("example_id", "prompt", "annotated", "synthetic", "proto"),
            table_id="tspin-triplet-table",
            placeholder="search x, y, y', y0 or #id",
            page_size=PAGE,
        )
        self.grid.on_row_click(lambda key: self.errors.guard(self.open_example, "table row")(int(key)))
        self.grid.observe(lambda ch: self.errors.guard(self._on_grid_sort, "sort")(ch), names=["sort_by", "descending"])
        self.example = W.Dropdown(
            options=[],
            description="triplet",
            tooltip="the triplet shown in detail below (or click a table row or a point in a chart)",
        )
        self.detail_html = W.HTML()
        self._slot("tokens")
        self.history_html = W.HTML()
        self._slot("history")
        self.table = None
        self.example_ids: tuple[int, ...] | None = None  # restrict the table to these examples (None: all)
        self._ids_note = ""
        self.ids_html = W.HTML()
        self.show_all = W.Button(
            description="show all triplets",
            tooltip="drop the example-id filter",
            layout=W.Layout(width="160px", display="none"),
        )

        g = self.errors.guard
        self.iteration.observe(g(self._on_iteration, "iteration"), names=["value"])
        self.stage.observe(g(self._on_iteration, "stage"), names=["value"])
        for w in (
            self.current,
            self.historical,
            self.correct,
            self.synthetic_equals_annotated,
            self.proto_equals_annotated,
            self.sort_by,
            self.descending,
        ):
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
            self.grid,
            self.example,
            self.detail_html,
            self._slots["tokens"],
            self.history_html,
            self._slots["history"],
            self._export_bar("triplets", lambda: self.export_table()),
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
            raise ValueError(
                f"iteration {iteration} is not among this run's finished iterations {list(self.iteration.options)}"
            )
        self.example_ids = None if example_ids is None else tuple(int(e) for e in example_ids)
        self._ids_note = note if self.example_ids is not None else ""
        self._quiet = True
        try:
            self.correct.value = "any"
            self.synthetic_equals_annotated.value = "any"
            self.proto_equals_annotated.value = "any"
            self.iteration.value = iteration
        finally:
            self._quiet = False
        self._on_iteration()  # resets the u, v ranges to the data's, then filters
        shown = [v for _, v in self.example.options]
        first = next((e for e in (self.example_ids or ()) if e in shown), None)
        if first is not None:
            self.open_example(first)

    def open_example(self, example_id: int) -> None:
        """Show triplet ``example_id`` of the current iteration in detail (a table row click; ``show``).

        The triplet dropdown lists the first 500 rows of the table; a row further down (page 40 of a
        50,000-row table) is added to it so the dropdown always names the triplet shown.
        """
        e = int(example_id)
        values = [v for _, v in self.example.options]
        if e not in values:
            row = self.table[self.table["example_id"] == e] if self.table is not None else None
            if row is None or row.empty:
                raise KeyError(
                    f"example {e} is not among the triplets of iteration {self.iteration.value} that match the filters"
                )
            self._quiet = True
            try:
                self.example.options = [(_option_label(next(row.itertuples())), e), *self.example.options]
            finally:
                self._quiet = False
        if self.example.value == e:
            self._on_example()
        else:
            self.example.value = e

    def _on_grid_sort(self, change=None) -> None:
        """A header click sorted the table: the sort controls follow when they offer that column."""
        col, desc = self.grid.sort_by, self.grid.descending
        if col in [v for _, v in SORT_OPTIONS] and (col, desc) != (self.sort_by.value, self.descending.value):
            self._quiet = True
            try:
                self.sort_by.value, self.descending.value = col, desc
            finally:
                self._quiet = False

    def export_table(self):
        """The table as shown: the filtered triplets that match the search, in the table's order."""
        return self.grid.matching()

    # -- per-iteration / per-example row caches ------------------------------------------------
    def _index(self):
        """Row positions of each iteration and each example of ``records.examples`` (built once per
        records object: an iteration switch used to scan all T x N rows several times, once per
        boolean filter in the table, the count, the detail, the shading and the history)."""
        ex = self.records.examples
        cached = getattr(self, "_index_cache", None)
        if cached is None or cached[0] is not ex:
            by_iter = ex.groupby("iteration", sort=False).indices
            by_example = ex.groupby("example_id", sort=False).indices
            cached = (ex, by_iter, by_example, {})
            self._index_cache = cached
        return cached

    def _part(self, t):
        """The rows of iteration ``t`` (cached; the same frame object for the same records)."""
        ex, by_iter, _, parts = self._index()
        if t not in parts:
            idx = by_iter.get(t)
            parts[t] = ex.iloc[idx] if idx is not None else ex.iloc[:0]
        return parts[t]

    def _rows_of_example(self, e):
        ex, _, by_example, _ = self._index()
        idx = by_example.get(e)
        return ex.iloc[idx] if idx is not None else ex.iloc[:0]

    # -- callbacks -----------------------------------------------------------------------------
    def _on_iteration(self, change=None) -> None:
        """New iteration or stage: reset the advantage ranges to the data's, then refilter."""
        if self._quiet:
            return
        t = self.iteration.value
        if t is None:
            self.table_html.value = f"<div style='{CARD_STYLE}'>No finished iteration yet.</div>"
            return
        part = self._part(t)
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
        part = self._part(t)
        self.table = A.triplet_table(
            part,
            t,
            stage=self.stage.value,
            current=tuple(self.current.value),
            historical=tuple(self.historical.value),
            correct=_tri(self.correct.value),
            synthetic_equals_annotated=_tri(self.synthetic_equals_annotated.value),
            proto_equals_annotated=_tri(self.proto_equals_annotated.value),
            sort_by=self.sort_by.value,
            ascending=not self.descending.value,
        )
        if self.example_ids is not None:
            self.table = self.table[self.table["example_id"].isin(self.example_ids)]
        self._show_ids_filter()
        tab = self.table
        n_all = len(part)
        self.table_html.value = (
            f"<div id='tspin-triplet-count' data-count='{len(tab)}' style='{CARD_STYLE}'>"
            f"<b>{len(tab):,}</b> of {n_all:,} triplets match the filters"
            " · click a column to sort, a row to open it</div>"
        )
        grid = self.grid
        grid._busy = True  # one refresh below, not one per trait
        try:
            grid.sort_by, grid.descending = self.sort_by.value, self.descending.value
        finally:
            grid._busy = False
        grid.set_data(tab)
        options = [(_option_label(r), int(r.example_id)) for r in tab.head(500).itertuples()]
        keep = (
            self.example.value
            if self.example.value in [v for _, v in options]
            else (options[0][1] if options else None)
        )
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
        ex = self._part(t)  # this iteration's rows only: the lookups below scan 1/T of the run
        detail = A.triplet_detail(ex, t, e)
        shading = A.token_shading(ex, t, e, stage=self.stage.value)
        self.detail_html.value = detail_html(detail, shading, self.stage.value)
        self._slots["tokens"].show(
            F.token_logps(shading, f"Per-token log-probs of example {e}, iteration {t} ({self.stage.value} training)")
        )
        hist = A.synthetic_history(self._rows_of_example(e), e)
        self.history_html.value = history_html(hist, detail["roles"].iloc[0]["text"])
        self._slots["history"].show(F.synthetic_history(hist, e))


def _option_label(r) -> str:
    return (
        f"#{int(r.example_id)}  u={r.current_advantage:+.2f}  v={r.historical_advantage:+.2f}  "
        f"y'={str(r.synthetic)[:20]!r}"
    )


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
        spans = (
            "".join(
                f"<span class='tspin-token' title='{html.escape(repr(tk.token))}: {tk.logp:.3f} nats' "
                f"style='background:{_shade(tk.logp)};padding:1px 1px;margin:0 1px;border-radius:2px;white-space:pre'>"
                f"{html.escape(str(tk.token))}</span>"
                for tk in toks.itertuples()
            )
            or f"<span style='white-space:pre-wrap'>{html.escape(str(r['text']))}</span>"
        )
        color = F.ROLE_COLORS[role]
        cols.append(
            "<div style='flex:1;min-width:200px;border:1px solid var(--jp-border-color2,#ddd);"
            f"border-top:4px solid {color};padding:6px;border-radius:4px'>"
            f"<div style='color:{color};font-weight:bold'>{html.escape(F.ROLE_LABELS[role])}</div>"
            "<div style='font-family:var(--jp-code-font-family,monospace);font-size:14px;margin:6px 0;line-height:1.8'>"
            f"{spans}</div>"
            f"<div style='font-size:12px'>log π_t = {fmt(r['logp_before'])} · "
            f"log π_t+1 = {fmt(r['logp_after'])} nats<br>"
            f"{int(r['ntokens'])} token{'' if int(r['ntokens']) == 1 else 's'} "
            f"({fmt(r['logp_per_token_after'], '.3f')} nats/token after) · reward {fmt(r['reward'], '.3f')}</div></div>"
        )
    flags = ", ".join(
        k.replace("_", " ")
        for k in ("synthetic_equals_annotated", "proto_equals_annotated", "synthetic_equals_proto", "misaligned")
        if adv.get(k)
    )
    summary = (
        f"u = log π(y) − log π(y') = {fmt(adv.get('current_advantage_before'))} → "
        f"{fmt(adv.get('current_advantage_after'))} nats · "
        f"v = log π(y') − log π(y0) = {fmt(adv.get('historical_advantage_before'))} → "
        f"{fmt(adv.get('historical_advantage_after'))} nats (before → after training)<br>"
        f"reward margin {fmt(adv.get('reward_margin'), '.3f')} · loss {fmt(adv.get('loss'), '.3f')} = "
        f"current {fmt(adv.get('loss_current'), '.3f')} + historical {fmt(adv.get('loss_historical'), '.3f')}"
        + (f" · <b>{html.escape(flags)}</b>" if flags else "")
    )
    legend = (
        "<span style='opacity:0.75;font-size:11px'>token shading: darker = less likely under the policy ("
        + ("π_t" if stage == "before" else "π_t+1")
        + "); hover a token for its log-prob</span>"
    )
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
            "<td style='padding:1px 8px;font-family:var(--jp-code-font-family,monospace);"
            f"color:{F.ROLE_COLORS['synthetic']}'>{html.escape(str(r.synthetic))}</td>"
            f"<td style='padding:1px 8px;text-align:right'>{fmt(r.synthetic_logp_before)}</td>"
            f"<td style='padding:1px 8px'>{mark}</td></tr>"
        )
    return (
        f"<div id='tspin-synthetic-history' style='{CARD_STYLE}'><b>Synthetic response y' across iterations</b> (y = "
        f"<code>{html.escape(str(annotated))}</code>)<table style='font-size:12px'>"
        "<tr><th>t</th><th>y'</th><th>log π_t(y') (nats)</th><th></th></tr>"
        f"{''.join(rows)}</table></div>"
    )
