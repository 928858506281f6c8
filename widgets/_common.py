"""Shared plumbing for the widgets: record sources, callback error routing, figure syncing, HTML.

- ``resolve_source``: a widget takes a live ``SelfPlaySession`` (has ``records()`` and the phase
  methods), a finished run directory (path, read with ``tspin_kit.load_run``) or records themselves
  (anything with ``examples``, ``metrics``, ``manifest``).
- ``ErrorLog``: ipywidgets swallows exceptions raised in ``observe`` callbacks (they only reach the
  kernel log). Every callback here runs through ``ErrorLog.guard``, which shows the error in a
  visible banner and the traceback in an ``Output`` widget, and keeps it in ``errors`` for tests.
- ``sync_figure``: copies a freshly built ``go.Figure`` into a displayed ``FigureWidget`` in one
  batched message, so the figures module stays the single place that knows how a figure looks.
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
from traitlets import validate

PHASES = ("prepare", "generate", "train", "evaluate", "step")


def is_session(obj: Any) -> bool:
    """Duck-typed live session: ``records()`` plus the phase methods and ``next_phase``."""
    return callable(getattr(obj, "records", None)) and all(callable(getattr(obj, p, None)) for p in ("generate", "train", "evaluate", "step"))


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
            f"<div class='tspin-error' style='color:#b91c1c;border:1px solid #b91c1c;padding:4px 8px;border-radius:4px'>"
            f"<b>Error</b> {html.escape(what)}{html.escape(type(exc).__name__)}: {html.escape(str(exc))} (traceback below)</div>"
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


class StickyFigureWidget(go.FigureWidget):
    """``go.FigureWidget`` whose Python->JS edit messages are not reset to None after sending.

    plotly sends each edit as ``self._py2js_update = msg`` then ``self._py2js_update = None``, and
    its JavaScript handler reads ``model.get("_py2js_update")`` when the change event runs, so if
    both state updates land before the handler runs it reads None and drops the edit. Keeping the
    last message (each carries a fresh edit id, so the next one still changes the value) closes
    that window. Found by reading plotly's widget bundle while chasing Voila figures that did not
    follow a slider; the failures seen there also came with "[anywidget] Failed to initialize
    model" on busy machines with many FigureWidgets, which this does not fix.
    """

    @validate("_py2js_update", "_py2js_restyle", "_py2js_relayout", "_py2js_addTraces", "_py2js_deleteTraces", "_py2js_animate")
    def _keep_last_message(self, proposal):
        value = proposal["value"]
        return getattr(self, proposal["trait"].name) if value is None else value


class FigureSlot(W.Box):
    """A box holding one ``FigureWidget`` that ``show(fig)`` keeps up to date.

    Same trace/layout structure: the widget is updated in place (``sync_figure``). A different
    structure (traces added or removed): a new ``FigureWidget`` is built from ``fig`` and swapped
    in. Deleting and adding traces on a FigureWidget that has no view yet (still being built in
    the constructor) left it blank in Voila ("[anywidget] Failed to initialize model"); a fresh
    widget always starts from its full state.
    """

    def __init__(self, fig: go.Figure | None = None, width: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.figure = None  # built by the first show(): no placeholder model that later gets replaced
        if fig is not None:
            self.show(fig)

    def _make(self, fig: go.Figure) -> go.FigureWidget:
        if self.width:
            fig.layout.width = self.width
        return StickyFigureWidget(fig)

    def show(self, fig: go.Figure) -> None:
        if self.width:
            fig.layout.width = self.width
        if self.figure is None or not sync_figure(self.figure, fig):
            old, self.figure = self.figure, self._make(fig)
            self.children = (self.figure,)
            if old is not None:
                # Voila renders every live widget model of the kernel; an orphaned FigureWidget
                # that never had a view failed to initialise there
                old.close()


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        try:
            return np.array_equal(np.asarray(a), np.asarray(b))
        except (TypeError, ValueError):
            return False
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def sync_figure(widget: go.FigureWidget, fig: go.Figure) -> bool:
    """Update ``widget`` in place to show ``fig``, sending only the properties that changed.

    Works when the traces match (count, types, property names) and the layout has the same keys:
    each changed top-level property is set in one batched message, so a slider move re-validates
    and re-sends only what moved. Returns False, changing nothing, when the structure differs
    (``FigureSlot`` then builds a new widget): deleting a property means sending null, which
    plotly.js's ``cleanData`` does not always accept.
    """
    new_traces = [t.to_plotly_json() for t in fig.data]
    old_traces = [t.to_plotly_json() for t in widget.data]
    lay_old, lay_new = widget.layout.to_plotly_json(), fig.layout.to_plotly_json()

    def keys(d: dict) -> set:
        return set(d) - {"uid"}

    same = (
        len(old_traces) == len(new_traces)
        and all(a.get("type") == b.get("type") and keys(a) == keys(b) for a, b in zip(old_traces, new_traces))
        and set(lay_old) == set(lay_new)
    )
    if not same:
        return False
    with widget.batch_update():
        for trace, cur, new in zip(widget.data, old_traces, new_traces):
            for k in keys(new) - {"type"}:
                if not _equal(cur.get(k), new[k]):
                    trace[k] = new[k]
        for k in lay_new:
            if not _equal(lay_old[k], lay_new[k]):
                widget.layout[k] = lay_new[k]
    return True


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


CARD_STYLE = (
    "font-family:var(--jp-ui-font-family, sans-serif);font-size:13px;"
    "color:var(--jp-ui-font-color1, #222);"
)
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
    return f"<div style='{CARD_STYLE}'><table{tid} style='{TABLE_STYLE}'><tr>{head}</tr>{''.join(rows)}</table>{more}</div>"


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

    def __getattr__(self, attr: str):
        slots = self.__dict__.get("_slots", {})
        if attr.endswith("_fig") and attr[:-4] in slots:
            return slots[attr[:-4]].figure  # None until the slot has shown a figure
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")


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
