"""Shared plumbing for the widgets: record sources, callback error routing, figure syncing, HTML.

- ``resolve_source``: a widget takes a live ``SelfPlaySession`` (has ``records()`` and the phase
  methods), a finished run directory (path, read with ``tspin_kit.load_run``) or records themselves
  (anything with ``examples``, ``metrics``, ``manifest``).
- ``ErrorLog``: ipywidgets swallows exceptions raised in ``observe`` callbacks (they only reach the
  kernel log). Every callback here runs through ``ErrorLog.guard``, which shows the error in a
  visible banner and the traceback in an ``Output`` widget, and keeps it in ``errors`` for tests.
- ``FigureSlot``: one ``PlotlyView`` (``plotly_view.py``: why not ``go.FigureWidget``) that is sent
  the whole freshly built ``go.Figure`` on every change, so the figures module stays the single
  place that knows how a figure looks and the browser never depends on partial updates.
"""

from __future__ import annotations

import html
import math
import os
import traceback
from collections.abc import Callable
from functools import wraps
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from .plotly_view import PlotlyView

PHASES = ("prepare", "generate", "train", "evaluate", "step")


def is_session(obj: Any) -> bool:
    """Duck-typed live session: ``records()`` plus the phase methods and ``next_phase``."""
    return callable(getattr(obj, "records", None)) and all(
        callable(getattr(obj, p, None)) for p in ("generate", "train", "evaluate", "step")
    )


def load_run_dir(path: str | os.PathLike) -> Any:
    """Read a finished run directory with the engine's ``load_run``."""
    try:
        from tspin_kit import load_run
    except ImportError:
        try:
            from tspin_kit.store import load_run
        except ImportError as e:  # the store is part of the engine; say what is missing
            raise ImportError("tspin_kit.load_run is not available: cannot open a run directory") from e
    return load_run(path)


def resolve_source(source: Any) -> tuple[Any, Any]:
    """``(records, session_or_None)`` for a session, a run directory or records."""
    if isinstance(source, (str, os.PathLike)):
        return load_run_dir(source), None
    if is_session(source):
        return source.records(), source
    if all(hasattr(source, a) for a in ("examples", "metrics")):
        return source, None
    raise TypeError(
        "expected a SelfPlaySession, a run directory or records with .examples/.metrics/.manifest, "
        f"got {type(source).__name__}"
    )


def resolve_runs(runs: Any) -> dict[str, Any]:
    """A label -> records mapping from one source, a list of sources or a mapping of them."""
    from tspin_kit import analysis as A

    if isinstance(runs, dict):
        items = list(runs.items())
    elif isinstance(runs, (list, tuple)):
        items = [(None, r) for r in runs]
    else:
        items = [(None, runs)]
    out: dict[str, Any] = {}
    for label, src in items:
        rec, _ = resolve_source(src)
        label = label or A.run_label(rec)
        base, k = label, 2
        while label in out:  # two runs of one method and seed: keep both
            label = f"{base} #{k}"
            k += 1
        out[label] = rec
    return out


class ErrorLog:
    """Routes callback errors to the user: a red banner plus the traceback in an ``Output``."""

    def __init__(self) -> None:
        self.banner = W.HTML("", layout=W.Layout(width="100%"))
        self.output = W.Output(layout=W.Layout(max_height="240px", overflow="auto"))
        self.errors: list[str] = []
        self.box = W.VBox([self.banner, self.output])

    def report(self, exc: BaseException, context: str = "") -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.errors.append(tb)
        what = f"{context}: " if context else ""
        self.banner.value = (
            "<div class='tspin-error' "
            "style='color:#b91c1c;border:1px solid #b91c1c;padding:4px 8px;border-radius:4px'>"
            f"<b>Error</b> {html.escape(what)}{html.escape(type(exc).__name__)}: {html.escape(str(exc))} "
            "(traceback below)</div>"
        )
        # append_stderr is safe from a worker thread (no ``with output:`` context across threads).
        self.output.append_stderr(tb)

    def clear(self) -> None:
        self.banner.value = ""
        self.output.clear_output()

    def guard(self, fn: Callable, context: str = "") -> Callable:
        """Wrap an observe/click callback so its exceptions are shown, never swallowed."""

        @wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - every error goes to the user
                self.report(e, context or getattr(fn, "__name__", ""))
                return None

        return wrapper


class FigureSlot(W.VBox):
    """A box holding one ``PlotlyView`` that ``show(fig)`` keeps up to date (whole figure each time).

    ``figure`` is the ``go.Figure`` shown (None until the first ``show``); ``view`` the widget.
    ``width``: a fixed pixel width; by default the figure fills its container and resizes with it
    (two figures side by side sit in a wrapping row, ``figure_row``, so neither is cut off).
    """

    def __init__(self, fig: go.Figure | None = None, width: int | None = None, **kwargs):
        kwargs.setdefault("layout", W.Layout(width="100%", min_width="0", align_items="stretch"))
        super().__init__(**kwargs)
        self.view = PlotlyView(width=int(width or 0))
        self.children = (self.view,)
        if fig is not None:
            self.show(fig)

    @property
    def figure(self) -> go.Figure | None:
        return self.view.fig

    def show(self, fig: go.Figure) -> None:
        self.view.show(fig)

    def on_click(self, handler: Callable[[dict], None]) -> None:
        self.view.on_click(handler)


def figure_row(*slots: W.Widget, min_width: str = "380px") -> W.Box:
    """Figures side by side that wrap onto the next line when the row is too narrow (no overflow)."""
    for s in slots:
        s.layout.flex = "1 1 0"
        s.layout.min_width = min_width
        s.layout.width = "auto"
    return W.Box(
        list(slots), layout=W.Layout(display="flex", flex_flow="row wrap", width="100%", align_items="flex-start")
    )


def tips(*pairs: tuple[W.Widget, str]) -> None:
    """Hover text on controls (ipywidgets' ``tooltip``): what u, v, lam, a "push" mean, where they are set."""
    for w, text in pairs:
        w.tooltip = text


def fmt(x: Any, spec: str = "+.2f") -> str:
    """Number for an HTML cell; NaN and None become an en dash."""
    try:
        if isinstance(x, (bool, np.bool_)):
            return "yes" if x else "no"
        if x is None or math.isnan(float(x)):
            return "–"
        if isinstance(x, bool):
            return "yes" if x else "no"
        return format(float(x), spec)
    except (TypeError, ValueError):
        return html.escape(str(x))


CARD_STYLE = "font-family:var(--jp-ui-font-family, sans-serif);font-size:13px;color:var(--jp-ui-font-color1, #222);"
TABLE_STYLE = (
    "border-collapse:collapse;font-size:12px;font-family:var(--jp-code-font-family, monospace);"
    "color:var(--jp-ui-font-color1, #222);"
)
CELL = "padding:2px 8px;border-bottom:1px solid var(--jp-border-color2, #ddd);text-align:right;"
HEAD = "padding:2px 8px;border-bottom:2px solid var(--jp-border-color1, #999);text-align:right;font-weight:bold;"


def html_table(df, columns: dict[str, tuple[str, Callable[[Any], str]]], table_id: str = "", max_rows: int = 25) -> str:
    """A small themed HTML table: ``columns`` maps a column to (header, formatter)."""
    head = "".join(f"<th style='{HEAD}'>{html.escape(h)}</th>" for h, _ in columns.values())
    rows = []
    for rec in df.head(max_rows).itertuples(index=False):
        d = rec._asdict()
        cells = "".join(f"<td style='{CELL}'>{f(d[c])}</td>" for c, (_, f) in columns.items())
        rows.append(f"<tr>{cells}</tr>")
    more = f"<div style='opacity:0.7;font-size:11px'>showing {min(len(df), max_rows)} of {len(df)} rows</div>"
    tid = f" id='{table_id}'" if table_id else ""
    return (
        f"<div style='{CARD_STYLE}'><table{tid} style='{TABLE_STYLE}'>"
        f"<tr>{head}</tr>{''.join(rows)}</table>{more}</div>"
    )


def text_cell(s: Any, width: int = 24) -> str:
    s = "" if s is None else str(s)
    short = s if len(s) <= width else s[: width - 1] + "…"
    return f"<span title='{html.escape(s)}' style='white-space:pre'>{html.escape(short)}</span>"


class FigureSlots:
    """Mixin for the widgets: named ``FigureSlot``s, each figure readable as ``<name>_fig``."""

    def _slot(self, name: str, fig: go.Figure | None = None, width: int | None = None) -> FigureSlot:
        if "_slots" not in self.__dict__:
            self.__dict__["_slots"] = {}
        slot = FigureSlot(fig, width=width)
        self._slots[name] = slot
        return slot

    def _export_bar(self, name: str, table: Callable[[], Any]):
        """Export buttons for this view: ``table()`` as CSV, every figure shown as one standalone HTML."""
        from .export import ExportBar

        self.export = ExportBar(
            name, table=table, figures=lambda: [s.figure for s in self.__dict__.get("_slots", {}).values()]
        )
        return self.export

    def __getattr__(self, attr: str):
        slots = self.__dict__.get("_slots", {})
        if attr.endswith("_fig") and attr[:-4] in slots:
            return slots[attr[:-4]].figure  # None until the slot has shown a figure
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")


def example_id_of(point: dict) -> int | None:
    """The example id behind a clicked point: its ``customdata`` (first entry), else a "#24" label."""
    c = point.get("customdata")
    if isinstance(c, (list, tuple)):
        c = c[0] if c else None
    for v in (c, point.get("y"), point.get("x")):
        if v is c and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return int(v)
        if isinstance(v, str) and v.startswith("#") and v[1:].isdigit():
            return int(v[1:])
    return None


class OpensTriplets:
    """Linked views: a click on a point (or a table row) opens that triplet.

    ``on_open_triplet(iteration, example_id)``, when set (the workshop tabs set it), decides where;
    otherwise a ``TripletBrowser`` is built below the view on the first click.
    """

    on_open_triplet = None
    triplets = None

    def _link_clicks(self, *slot_names: str) -> None:
        self.triplet_box = W.VBox()
        for name in slot_names:
            self._slots[name].on_click(
                self.errors.guard(lambda p, name=name: self._clicked(p, name), f"click in {name}")
            )

    def _clicked(self, point: dict, where: str = "") -> None:
        e = example_id_of(point)
        t = self._click_iteration()
        if e is not None and t is not None:
            self.open_triplet(t, e, note=f"clicked in the {where} chart" if where else "")

    def _click_iteration(self):
        return self.iteration.value

    def _click_records(self):
        return self.records

    def open_triplet(self, iteration: int, example_id: int, note: str = ""):
        if self.on_open_triplet is not None:
            return self.on_open_triplet(iteration, example_id)
        from .triplets import TripletBrowser

        records = self._click_records()
        if self.triplets is None:
            self.triplets = TripletBrowser(records, iteration=iteration)
            self.triplet_box.children = [self.triplets]
        elif self.triplets.records is not records:
            self.triplets.set_records(records)
        self.triplets.show(iteration, [example_id], note=note)
        return self.triplets


class FollowsIteration:
    """`set_records` / `set_iteration` for a view whose ``iteration`` dropdown the dashboard drives.

    The class names the callback that redraws it for the chosen iteration in ``_redraw``.
    """

    _redraw = "_on_iteration"

    def set_records(self, records) -> None:
        from tspin_kit import analysis as A

        self.records = records
        iters = A.iterations_of(records.examples)
        keep = self.iteration.value if self.iteration.value in iters else (iters[-1] if iters else None)
        self._quiet = True  # one redraw below, not one per trait change
        try:
            self.iteration.options = iters
            self.iteration.value = keep
        finally:
            self._quiet = False
        self.errors.guard(getattr(self, self._redraw), "refresh")()

    def set_iteration(self, t: int) -> None:
        if t in self.iteration.options:
            self.iteration.value = t
