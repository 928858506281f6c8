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
figure as JSON (numpy arrays travel as base64 typed arrays, by plotly's encoder or, for the plain figure dicts
that ``figures.figure_specs()`` yields, by the same rules here without building a ``go.Figure``). Every change is
drawn with ``Plotly.react(gd, data, layout)`` from the full figure, so nothing depends on which
diffs arrived. plotly.js itself (the file plotly ships for offline HTML, ``plotly.min.js``) travels
once per kernel in one ``PlotlyLibrary`` model that every view references, and is evaluated once
per page. No CDN is touched (offline rooms).

The view also follows JupyterLab's light/dark theme (``body[data-jp-theme-light]``), resizes with
its container, reports which revision it has drawn (``rendered``, for tests and for waiting), and
sends point clicks back to Python (``on_click``: linked views).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import plotly
import plotly.graph_objects as go
import plotly.io as pio
import traitlets as T
from ipywidgets import widget_serialization

from tspin_kit.figures import FigureSpec

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


def figure_json(fig: go.Figure | FigureSpec) -> str:
    """The whole figure as JSON, as plotly's own encoder writes it (numpy arrays as base64 typed arrays).

    A ``FigureSpec`` (the figure functions inside ``figures.figure_specs()``) is encoded without building a
    ``go.Figure``: numeric numpy arrays become typed-array specs by plotly's rules (``_typed_arrays``), the rest
    goes through plotly's JSON encoder; the text parses to the same JSON as the ``go.Figure`` path (tested).
    """
    if isinstance(fig, FigureSpec):
        return pio.json.to_json_plotly(_typed_arrays(fig))
    return pio.to_json(fig, validate=False, remove_uids=True)


# plotly's rules (_plotly_utils.utils.to_typed_array_spec / convert_to_base64): keys never turned into typed
# arrays, numpy dtypes plotly.js reads, and 64-bit integers narrowed to the smallest type that holds them
_NOT_TYPED = frozenset({"geojson", "layer", "layers", "range"})
_SHORT = {"int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4", "uint32": "u4"}
_SHORT.update({"float32": "f4", "float64": "f8"})


def _typed_array(v: np.ndarray) -> Any:
    if v.size == 0:
        return v
    if v.dtype.kind in "iu" and v.dtype.itemsize == 8:
        lo, hi = v.min(), v.max()
        for t in ("int8", "int16", "int32") if v.dtype.kind == "i" else ("uint8", "uint16", "uint32"):
            info = np.iinfo(t)
            if info.min <= lo and hi <= info.max:
                v = v.astype(t)
                break
        else:
            return v
    short = _SHORT.get(str(v.dtype))
    if short is None:
        return v
    out = {"dtype": short, "bdata": base64.b64encode(np.ascontiguousarray(v)).decode("ascii")}
    if v.ndim > 1:
        out["shape"] = str(v.shape)[1:-1]
    return out


def _typed_arrays(obj: Any) -> Any:
    """A copy of ``obj`` with numeric numpy arrays as plotly.js typed-array specs (the input is not changed)."""
    if isinstance(obj, dict):
        return {
            k: (v if k in _NOT_TYPED else _typed_array(v) if isinstance(v, np.ndarray) else _typed_arrays(v))
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [_typed_arrays(v) for v in obj]
    return obj


class PlotlyView(anywidget.AnyWidget):
    """Shows one plotly figure; ``show(fig)`` replaces it whole. ``fig`` is the ``go.Figure`` shown."""

    _esm = T.Unicode(_VIEW_ESM).tag(sync=True)
    _css = T.Unicode(".tspin-plot .modebar{opacity:.6}").tag(sync=True)
    library = T.Instance(PlotlyLibrary).tag(sync=True, **widget_serialization)
    figure = T.Unicode("{}").tag(sync=True)
    revision = T.Int(0).tag(sync=True)
    rendered = T.Int(-1).tag(sync=True)  # the revision the browser has drawn (set by the view)
    width = T.Int(0).tag(sync=True)  # 0: fill the container

    def __init__(self, fig: go.Figure | FigureSpec | None = None, **kwargs: Any) -> None:
        super().__init__(library=plotly_library(), **kwargs)
        self._fig: go.Figure | FigureSpec | None = None
        self._click_handlers: list[Callable[[dict], None]] = []
        self.on_msg(self._on_msg)
        if fig is not None:
            self.show(fig)

    @property
    def fig(self) -> go.Figure | None:
        """The figure shown, as a ``go.Figure`` (built from a ``FigureSpec`` on first access, then kept)."""
        if isinstance(self._fig, FigureSpec):
            self._fig = self._fig.to_figure()
        return self._fig

    def show(self, fig: go.Figure | FigureSpec) -> None:
        self._fig = fig
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
