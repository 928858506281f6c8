"""A self-contained HTML report: the widgets' figures as static plotly, plus tables and settings.

Self-contained means plotly.js is inlined once, so the file opens offline (no CDN on these machines).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from .alarms import Alarm, find_alarms
from .store import RunRecords, write_bytes

ALARM_IDS_SHOWN = 12  # example ids listed per alarm; the rest are counted


def render_report(
    runs: dict[str, RunRecords],
    *,
    title: str,
    summary: list[str] | None = None,
    tables: dict[str, pd.DataFrame] | None = None,
) -> str:
    import plotly.io as pio

    from .figures import report_figures

    figs = report_figures(runs)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if summary:
        parts.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in summary) + "</ul>")
    for name, table in {**(tables or {}), **harness_tables(runs)}.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(table.to_html(float_format=lambda v: f"{v:.3f}", border=0, classes="tbl"))
    parts.append(alarms_html({label: find_alarms(r, label=label) for label, r in runs.items()}))
    first = True
    for name, fig in figs.items():
        parts.append(f"<h2>{html.escape(name.replace('_', ' '))}</h2>")
        parts.append(pio.to_html(fig, full_html=False, include_plotlyjs="inline" if first else False))
        first = False
    parts.append("<h2>settings</h2>")
    for label, r in runs.items():
        cfg = json.dumps(r.manifest.get("config", {}), indent=1)
        parts.append(f"<details><summary>{html.escape(label)}</summary><pre>{html.escape(cfg)}</pre></details>")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        ".tbl{border-collapse:collapse}.tbl td,.tbl th{padding:2px 10px;text-align:right}"
        ".alarm-critical{color:#b91c1c}.alarm-warning{color:#b15928}.alarm-ids{opacity:0.7;font-size:90%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )


def harness_tables(runs: dict[str, RunRecords]) -> dict[str, pd.DataFrame]:
    """Per run with lm-evaluation-harness scores (``RunRecords.harness``): policies (rows) x the built-in task
    score and each lm-eval task/metric (columns)."""
    from .analysis import score_name
    from .compare import score_table
    from .harness import harness_table

    out = {}
    for label, r in runs.items():
        h = getattr(r, "harness", None)
        if h is None or not len(h):
            continue
        builtin = score_table({f"built-in {score_name(r.metrics)}": r}).T  # policies (rows) x the built-in score
        table = builtin.join(harness_table(h), how="outer")
        out[f"lm-eval scores beside the built-in score: {label}"] = table.loc[
            sorted(table.index, key=lambda p: int(p[3:]))
        ]
    return out


def alarms_html(alarms: dict[str, list[Alarm]]) -> str:
    """The "instability alarms" section: per run, each alarm's severity, message and example ids."""
    parts = [
        "<h2 id='alarms'>instability alarms</h2>",
        (
            "<p>Flags computed from the records alone (tspin_kit.alarms); the example ids are the triplets "
            "behind each flag, to open in the triplet browser.</p>"
        ),
    ]
    for label, found in alarms.items():
        parts.append(f"<h3>{html.escape(label)}</h3>")
        if not found:
            parts.append("<p class='alarm-none'>No alarm fired.</p>")
            continue
        items = []
        for a in found:
            ids = ", ".join(str(e) for e in a.example_ids[:ALARM_IDS_SHOWN])
            more = len(a.example_ids) - ALARM_IDS_SHOWN
            ids += f" … and {more} more" if more > 0 else ""
            items.append(
                f"<li class='alarm alarm-{a.severity}' data-alarm='{a.name}' data-iteration='{a.iteration}'>"
                f"<b>{a.severity}</b> · {html.escape(a.name.replace('_', ' '))} · {html.escape(a.message)}"
                + (f" <span class='alarm-ids'>examples: {ids}</span>" if ids else "")
                + "</li>"
            )
        parts.append("<ul>" + "".join(items) + "</ul>")
    return "".join(parts)


def write_report(path: str | Path, runs: dict[str, RunRecords], **kwargs) -> Path:
    path = Path(path)
    write_bytes(path, render_report(runs, **kwargs).encode())
    return path
