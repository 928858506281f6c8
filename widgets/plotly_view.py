"""One small anywidget that draws a whole plotly figure with ``Plotly.react``; plotly.js loaded once per page.

Why not ``go.FigureWidget`` (what the widgets used before, and what the workshop room hit):

- plotly 6+ builds ``FigureWidget`` on anywidget with ``_esm`` = plotly's ~5 MB widget bundle, so
  *every* FigureWidget ships and evaluates its own copy of plotly.js. anywidget 0.11 gives each
  model 2 s (``AbortSignal.timeout(2000)`` in its runtime) to import its ESM and initialise; with
  16 figures on a busy 2-core machine that import took longer, the model was dropped with
  "[anywidget] Failed to initialize model." and that figure never followed its control again
  (Voila: 4-16 such errors per load, 49 s to first render, figures frozen at "alpha = 1").
- FigureWidget sends edits as diffs (``_py2js_update`` = only the properties that changed). An
  update of only ``x`` makes plotly.js re-infer axis types, so the drivers chart's category axis
  ("#24") turned numeric; and a diff that lands while a view is (re)initialising is lost.

Here: ``PlotlyView`` has a tiny ESM (a few KB, far inside the 2 s) and one string trait, the whole
figure as JSON (plotly's own encoder: numpy arrays travel as base64 typed arrays). Every change is
drawn with ``Plotly.react(gd, data, layout)`` from the full figure, so nothing depends on which
diffs arrived. plotly.js itself (the file plotly ships for offline HTML, ``plotly.min.js``) travels
once per kernel in one ``PlotlyLibrary`` model that every view references, and is evaluated once
per page. No CDN is touched (offline rooms).

The view also follows JupyterLab's light/dark theme (``body[data-jp-theme-light]``), resizes with
its container, reports which revision it has drawn (``rendered``, for tests and for waiting), and
sends point clicks back to Python (``on_click``: linked views).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import plotly
import plotly.graph_objects as go
import plotly.io as pio
import traitlets as T
from ipywidgets import widget_serialization

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"

_LIBRARY_ESM = "export default {};\n"  # the model only carries the source; views evaluate it once

_VIEW_ESM = (Path(__file__).parent / "plotly_view.js").read_text()  # render(): load plotly once, react, theme, clicks


class PlotlyLibrary(anywidget.AnyWidget):
    """Carries plotly.js (``plotly.min.js`` from the plotly package) to the page, once per kernel."""

    _esm = T.Unicode(_LIBRARY_ESM).tag(sync=True)
    source = T.Bytes(b"").tag(sync=True)


_LIBRARY: PlotlyLibrary | None = None


def plotly_library() -> PlotlyLibrary:
    """The kernel's one ``PlotlyLibrary`` (made on first use; remade if it was closed)."""
    global _LIBRARY
    if _LIBRARY is None or _LIBRARY.comm is None and getattr(_LIBRARY, "_model_id", None) is None:
        _LIBRARY = PlotlyLibrary(source=PLOTLY_JS.read_bytes())
    return _LIBRARY


def figure_json(fig: go.Figure) -> str:
    """The whole figure as JSON, as plotly's own encoder writes it (numpy arrays as base64 typed arrays)."""
    return pio.to_json(fig, validate=False, remove_uids=True)


class PlotlyView(anywidget.AnyWidget):
    """Shows one plotly figure; ``show(fig)`` replaces it whole. ``fig`` is the ``go.Figure`` shown."""

    _esm = T.Unicode(_VIEW_ESM).tag(sync=True)
    _css = T.Unicode(".tspin-plot .modebar{opacity:.6}").tag(sync=True)
    library = T.Instance(PlotlyLibrary).tag(sync=True, **widget_serialization)
    figure = T.Unicode("{}").tag(sync=True)
    revision = T.Int(0).tag(sync=True)
    rendered = T.Int(-1).tag(sync=True)  # the revision the browser has drawn (set by the view)
    width = T.Int(0).tag(sync=True)  # 0: fill the container

    def __init__(self, fig: go.Figure | None = None, **kwargs: Any) -> None:
        super().__init__(library=plotly_library(), **kwargs)
        self.fig: go.Figure | None = None
        self._click_handlers: list[Callable[[dict], None]] = []
        self.on_msg(self._on_msg)
        if fig is not None:
            self.show(fig)

    def show(self, fig: go.Figure) -> None:
        self.fig = fig
        text = figure_json(fig)
        if text != self.figure:
            with self.hold_sync():  # one message: the figure and its revision together
                self.figure = text
                self.revision += 1

    def on_click(self, handler: Callable[[dict], None]) -> None:
        """``handler(point)`` with the clicked point's ``curve``, ``point``, ``customdata``, ``x``, ``y``."""
        self._click_handlers.append(handler)

    def click(self, point: dict) -> None:
        """What a click in the browser does (tests call it directly)."""
        for h in self._click_handlers:
            h(point)

    def _on_msg(self, _widget, content, _buffers) -> None:
        if isinstance(content, dict) and content.get("event") == "click":
            self.click(content)

    def figure_dict(self) -> dict:
        return json.loads(self.figure)
