"""Export a view: CSV of its table, standalone HTML of its figures (plotly.js inlined: opens offline).

``ExportBar(name, table=..., figures=...)``: ``table()`` returns the view's DataFrame, ``figures()``
its ``go.Figure``s. In the page the two buttons download the file (the kernel builds it and sends it
with the click's reply; the browser saves it with a Blob link, so it works in Voila too, where the
participant cannot reach the kernel's disk). ``csv_bytes`` / ``html_bytes`` / ``save`` are the same
files from Python.
"""

from __future__ import annotations

import html as _html
import re
from collections.abc import Callable
from pathlib import Path

import anywidget
import pandas as pd
import plotly.io as pio
import traitlets as T

_ESM = """
export default {
  render({ model, el }) {
    const bar = document.createElement("div");
    bar.className = "tspin-export";
    bar.style.cssText = "display:flex;gap:6px;align-items:center;margin:4px 0;font-size:12px;" +
      "font-family:var(--jp-ui-font-family,sans-serif);color:var(--jp-ui-font-color1,#222)";
    const status = document.createElement("span");
    status.className = "tspin-export-status";
    const button = (kind, label, title) => {
      const b = document.createElement("button");
      b.textContent = label; b.title = title; b.className = "tspin-export-" + kind;
      b.style.cssText = "font-size:12px;padding:1px 8px;cursor:pointer;background:var(--jp-layout-color2,#eee);" +
        "color:var(--jp-ui-font-color1,#222);border:1px solid var(--jp-border-color1,#999);border-radius:3px";
      b.onclick = () => {
        status.textContent = "preparing " + kind.toUpperCase() + "…";
        model.send({ event: "export", kind });
      };
      return b;
    };
    bar.append(button("csv", "⤓ CSV", "download this view's table as CSV"),
               button("html", "⤓ HTML",
                      "download this view's figures as one standalone HTML file (plotly.js inlined: opens offline)"),
               status);
    el.appendChild(bar);
    const onMsg = (msg, buffers) => {
      if (!msg || msg.event !== "file") return;
      if (msg.error) { status.textContent = msg.error; return; }
      const buf = buffers && buffers[0];
      const blob = new Blob([buf && buf.buffer ? new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength) : buf],
                            { type: msg.mime });
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob); a.download = msg.name;
      document.body.appendChild(a); a.click(); a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 60000);
      status.textContent = "saved " + msg.name + " (" + (blob.size / 1024).toFixed(0) + " KB)";
      status.dataset.name = msg.name;
    };
    model.on("msg:custom", onMsg);
    return () => model.off("msg:custom", onMsg);
  },
};
"""


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-") or "view"


class ExportBar(anywidget.AnyWidget):
    _esm = T.Unicode(_ESM).tag(sync=True)

    def __init__(
        self,
        name: str,
        table: Callable[[], pd.DataFrame | None] | None = None,
        figures: Callable[[], list] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.name = name
        self._table = table
        self._figures = figures
        self.on_msg(self._on_msg)

    def filename(self, kind: str) -> str:
        return f"tspin-{_slug(self.name)}.{kind}"

    def csv_bytes(self) -> bytes:
        df = self._table() if self._table else None
        if df is None:
            raise ValueError(f"{self.name}: no table to export yet")
        return df.to_csv(index=False).encode()

    def html_bytes(self) -> bytes:
        figs = [f for f in (self._figures() if self._figures else []) if f is not None]
        if not figs:
            raise ValueError(f"{self.name}: no figure to export yet")
        parts = [pio.to_html(f, full_html=False, include_plotlyjs=(i == 0), validate=False) for i, f in enumerate(figs)]
        title = _html.escape(f"tspin: {self.name}")
        return (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
            + "".join(f"<div>{p}</div>" for p in parts)
            + "</body></html>"
        ).encode()

    def save(self, kind: str, directory: str | Path = ".") -> Path:
        """Write ``tspin-<view>.csv`` or ``.html`` into ``directory``; returns the path."""
        data = self.csv_bytes() if kind == "csv" else self.html_bytes()
        path = Path(directory) / self.filename(kind)
        path.write_bytes(data)
        return path

    def _on_msg(self, _widget, content, _buffers) -> None:
        if not (isinstance(content, dict) and content.get("event") == "export"):
            return
        kind = content.get("kind")
        try:
            data = self.csv_bytes() if kind == "csv" else self.html_bytes()
        except Exception as e:  # noqa: BLE001 - say it where the button was pressed
            self.send({"event": "file", "error": f"export failed: {e}"})
            return
        mime = "text/csv" if kind == "csv" else "text/html"
        self.send({"event": "file", "name": self.filename(kind), "mime": mime}, buffers=[data])
