"""A self-contained HTML report: the widgets' figures as static plotly, plus tables and settings.

Self-contained means plotly.js is inlined once, so the file opens offline (no CDN on these machines).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from .store import RunRecords, _atomic_bytes


def render_report(runs: dict[str, RunRecords], *, title: str, summary: list[str] | None = None,
                  tables: dict[str, pd.DataFrame] | None = None) -> str:
    import plotly.io as pio

    from .figures import report_figures

    figs = report_figures(runs)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if summary:
        parts.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in summary) + "</ul>")
    for name, table in (tables or {}).items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(table.to_html(float_format=lambda v: f"{v:.3f}", border=0, classes="tbl"))
    first = True
    for name, fig in figs.items():
        parts.append(f"<h2>{html.escape(name.replace('_', ' '))}</h2>")
        parts.append(pio.to_html(fig, full_html=False, include_plotlyjs="inline" if first else False))
        first = False
    parts.append("<h2>settings</h2>")
    for label, r in runs.items():
        cfg = json.dumps(r.manifest.get("config", {}), indent=1)
        parts.append(f"<details><summary>{html.escape(label)}</summary><pre>{html.escape(cfg)}</pre></details>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             ".tbl{border-collapse:collapse}.tbl td,.tbl th{padding:2px 10px;text-align:right}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def write_report(path: str | Path, runs: dict[str, RunRecords], **kwargs) -> Path:
    path = Path(path)
    _atomic_bytes(path, render_report(runs, **kwargs).encode())
    return path
