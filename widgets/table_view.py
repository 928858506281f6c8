"""A paged, sortable, searchable table over a whole DataFrame (50,000 triplets stay fast).

Why our own widget and not a grid widget: none is installed (ipydatagrid, ipyaggrid, itables are
not dependencies), each would ship another large JavaScript bundle per page (the 2 s anywidget
initialisation budget that froze FigureWidgets in Voila, ``plotly_view.py``) and some fetch from a
CDN. Here the records stay in the kernel: sorting, searching and paging are pandas/numpy over the
DataFrame, and only the shown page (``page_size`` rows, already formatted as text) travels to the
browser, so the cost in the page is the same at 50 rows or 50,000. The ESM is a few KB.

Traits the browser sets (and tests may set from Python): ``sort_by``, ``descending``, ``query``,
``page``. ``rows`` is the page shown; a row click calls the ``on_row_click`` handlers with that
row's ``key`` column value (the triplet browser opens that triplet).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import pandas as pd
import traitlets as T

_ESM = (Path(__file__).parent / "table_view.js").read_text()


def _default_format(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "–" if not np.isfinite(v) else f"{float(v):+.3f}"
    return str(v)


class TableView(anywidget.AnyWidget):
    """``set_data(df)``; ``columns``: ``{column: (header, formatter)}`` (formatter -> plain text)."""

    _esm = T.Unicode(_ESM).tag(sync=True)
    table_id = T.Unicode("").tag(sync=True)
    headers = T.List().tag(sync=True)  # [{"key", "label", "numeric"}]
    rows = T.List().tag(sync=True)  # the page: [{"key": ..., "cells": [str, ...]}]
    sort_by = T.Unicode("").tag(sync=True)
    descending = T.Bool(False).tag(sync=True)
    query = T.Unicode("").tag(sync=True)
    page = T.Int(0).tag(sync=True)
    page_size = T.Int(25).tag(sync=True)
    n_matched = T.Int(0).tag(sync=True)
    n_total = T.Int(0).tag(sync=True)
    revision = T.Int(0).tag(sync=True)
    placeholder = T.Unicode("search").tag(sync=True)

    def __init__(
        self,
        columns: dict[str, tuple[str, Callable[[Any], str] | None]],
        key: str,
        search: tuple[str, ...] = (),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.columns = {c: (h, f or _default_format) for c, (h, f) in columns.items()}
        self.key = key
        self.search_columns = tuple(search) or tuple(self.columns)
        self.df = pd.DataFrame(columns=list(self.columns))
        self._order: dict[tuple[str, bool], np.ndarray] = {}
        self._haystack: np.ndarray | None = None
        self._mask: tuple[str, np.ndarray] | None = None
        self.view_index = np.zeros(0, dtype=np.int64)  # positions in df of the matching rows, in order
        self._row_handlers: list[Callable[[Any], None]] = []
        self.on_msg(self._on_msg)
        self.observe(self._changed, names=["sort_by", "descending", "query", "page", "page_size"])
        self._busy = False

    # -- data ----------------------------------------------------------------------------------
    def set_data(self, df: pd.DataFrame, keep_page: bool = False) -> None:
        self.df = df.reset_index(drop=True)
        self._order, self._haystack, self._mask = {}, None, None
        self._build_index()  # when the data is set, not on the first search (a keystroke)
        numeric = {
            c: pd.api.types.is_numeric_dtype(self.df[c]) and not pd.api.types.is_bool_dtype(self.df[c])
            for c in self.columns
            if c in self.df
        }
        self.headers = [
            {"key": c, "label": h, "numeric": bool(numeric.get(c, False))} for c, (h, _) in self.columns.items()
        ]
        self._refresh(reset_page=not keep_page)

    def sort_order(self, col: str, descending: bool) -> np.ndarray:
        """Row positions sorted by ``col`` (stable: ties keep the data's order; missing values last)."""
        k = (col, descending)
        if k not in self._order:
            if col not in self.df:
                self._order[k] = np.arange(len(self.df))
            else:
                s = self.df[col]
                if s.dtype == object:
                    s = s.astype(str).str.lower()
                self._order[k] = s.sort_values(
                    ascending=not descending, kind="stable", na_position="last"
                ).index.to_numpy()
        return self._order[k]

    def _build_index(self) -> None:
        """The lower-cased search text of every row (its search columns joined by a separator no
        one types, so a word cannot match across two columns)."""
        cols = [self.df[c] for c in self.search_columns if c in self.df]
        if not cols:
            self._haystack = np.full(len(self.df), "", dtype=object)
            return
        hay = cols[0].astype(str)
        for c in cols[1:]:
            hay = hay.str.cat(c.astype(str), sep="\x1f")
        self._haystack = hay.str.lower().to_numpy(dtype=object)

    def search_mask(self, query: str) -> np.ndarray | None:
        """Rows whose search columns contain every word of ``query`` (case-insensitive); None: all."""
        words = query.lower().split()
        if not words:
            return None
        if self._mask is not None and self._mask[0] == query:
            return self._mask[1]
        if self._haystack is None:
            self._build_index()
        hay = pd.Series(self._haystack, copy=False)
        mask = np.ones(len(hay), dtype=bool)
        for w in words:
            mask &= hay.str.contains(w, regex=False).to_numpy(dtype=bool)
        self._mask = (query, mask)
        return mask

    def matching(self) -> pd.DataFrame:
        """Every row that matches the search, in the table's sort order (what the CSV export writes)."""
        return self.df.iloc[self.view_index]

    # -- events --------------------------------------------------------------------------------
    def on_row_click(self, handler: Callable[[Any], None]) -> None:
        self._row_handlers.append(handler)

    def click_row(self, key: Any) -> None:
        """What a row click in the browser does (tests call it directly)."""
        for h in self._row_handlers:
            h(key)

    def _on_msg(self, _widget, content, _buffers) -> None:
        if isinstance(content, dict) and content.get("event") == "row":
            self.click_row(content.get("key"))

    def _changed(self, change) -> None:
        if not self._busy:
            self._refresh(reset_page=change["name"] in ("sort_by", "descending", "query", "page_size"))

    def _refresh(self, reset_page: bool = False) -> None:
        order = self.sort_order(self.sort_by, self.descending) if self.sort_by else np.arange(len(self.df))
        mask = self.search_mask(self.query)
        idx = order if mask is None else order[mask[order]]
        self.view_index = idx
        size = max(1, int(self.page_size))
        last = max(0, (len(idx) - 1) // size)
        page = 0 if reset_page else min(max(0, self.page), last)
        sel = idx[page * size : (page + 1) * size]
        part = self.df.iloc[sel]
        cols = [(c, f) for c, (_, f) in self.columns.items()]
        rows = []
        for rec in part.to_dict("records"):
            key = rec.get(self.key)
            rows.append(
                {
                    "key": key.item() if hasattr(key, "item") else key,
                    "cells": [f(rec.get(c)) for c, f in cols],
                }
            )
        self._busy = True
        try:
            with self.hold_sync():
                self.page = page
                self.n_matched = len(idx)
                self.n_total = len(self.df)
                self.rows = rows
                self.revision += 1
        finally:
            self._busy = False

    @property
    def n_pages(self) -> int:
        return max(1, -(-self.n_matched // max(1, self.page_size)))
