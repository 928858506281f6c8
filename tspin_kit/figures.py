"""Pure functions from ``analysis`` tables to plotly figures, shared by ``widgets/`` and ``tspin report``.

One colour per response role everywhere (``ROLE_COLORS``: annotated y, synthetic y', proto-synthetic
y0), one per method (its colour in the table of methods, `methods.py`), axis titles with units (log-probs
in nats). Figures are plain ``go.Figure``s with a white card background so they read the same in
JupyterLab's light and dark themes and in a static HTML report.

Speed: the alpha/beta panel rebuilds its figures on every slider move, so the figures here build
their layouts as dicts (``make_subplots`` costs ~10 ms a call) and scatter plots show at most
``MAX_POINTS`` points (a fixed, seeded subset; the statistics in titles use every example). Inside
``figure_specs()`` they return those dicts (``FigureSpec``) without building a ``go.Figure`` at all.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from tspin_kit import methods as M

__all__ = [
    "ADVANTAGE_COLORS",
    "ROLE_COLORS",
    "ROLE_LABELS",
    "advantage_decay",
    "degenerate_shares",
    "FigureSpec",
    "figure_specs",
    "gradient_weights",
    "loss_landscape",
    "objective_gradients",
    "misalignment",
    "opponent",
    "report_figures",
    "reward_margins",
    "run_comparison",
    "scores",
    "synthetic_history",
    "token_entropy",
    "token_logps",
    "top_drivers",
    "vanishing_advantages",
]

ROLE_COLORS = {"annotated": "#1b9e77", "synthetic": "#d95f02", "proto": "#7570b3"}  # ColorBrewer Dark2
ROLE_LABELS = {"annotated": "annotated y", "synthetic": "synthetic y'", "proto": "proto-synthetic y0"}
ADVANTAGE_COLORS = {"current": "#1f78b4", "historical": "#b15928"}
EXTRA_COLORS = ["#33a02c", "#a6761d", "#e7298a", "#666666", "#17becf", "#bcbd22"]
MISALIGNED_COLOR = "#e31a1c"
ALIGNED_COLOR = "#1f78b4"
MAX_POINTS = 4000
NATS = "nats"

_FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
_AXIS = {
    "gridcolor": "#e5e8ee",
    "linecolor": "#b0b5bf",
    "zerolinecolor": "#9aa0aa",
    "ticks": "outside",
    "tickcolor": "#b0b5bf",
    "automargin": True,
}
# A small template of our own: "plotly_white" costs ~7 ms per figure to validate, too slow for sliders.
TEMPLATE = go.layout.Template(
    layout={
        "paper_bgcolor": "white",
        "plot_bgcolor": "white",
        "font": {"family": _FONT, "size": 12, "color": "#222"},
        "xaxis": _AXIS,
        "yaxis": _AXIS,
        "colorway": EXTRA_COLORS,
        "hoverlabel": {"font": {"family": _FONT}},
    }
)


def _base_layout(title: str, height: int = 360, **extra: Any) -> dict:
    layout = {
        "template": TEMPLATE,
        "title": {"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 14}},
        "paper_bgcolor": "white",
        "plot_bgcolor": "white",
        "font": {"family": _FONT, "size": 12, "color": "#222"},
        "height": height,
        "margin": {"l": 64, "r": 24, "t": 64, "b": 56},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right", "x": 1.0},
        "hovermode": "closest",
    }
    layout.update(extra)
    return layout


def _panels(titles: list[str], gap: float = 0.1) -> dict:
    """Layout entries for ``len(titles)`` side-by-side panels (xaxis, xaxis2, ... and titles)."""
    titles = list(titles) or ["no data yet"]
    n = len(titles)
    width = (1.0 - gap * (n - 1)) / n
    # panel titles sit just above the plots, so the legend moves up out of their way
    out: dict = {
        "annotations": [],
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.1, "xanchor": "right", "x": 1.0},
        "margin": {"l": 64, "r": 24, "t": 92, "b": 56},
    }
    for i, title in enumerate(titles):
        sfx = "" if i == 0 else str(i + 1)
        x0 = i * (width + gap)
        out[f"xaxis{sfx}"] = {"domain": [x0, x0 + width], "anchor": f"y{sfx}", "zeroline": False}
        out[f"yaxis{sfx}"] = {"anchor": f"x{sfx}", "zeroline": False}
        out["annotations"].append(
            {
                "text": f"<b>{title}</b>",
                "x": x0 + width / 2,
                "y": 1.0,
                "xref": "paper",
                "yref": "paper",
                "xanchor": "center",
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"size": 12},
            }
        )
    return out


def _plain(v: Any, arrays: bool = True) -> Any:
    """Plain values for an unvalidated figure: pandas -> numpy, None entries dropped, NaN -> None.

    Widgets send figures as JSON, where a bare NaN is invalid (numpy arrays travel as binary
    buffers, so NaN inside an array is fine); a key whose value is None would reach plotly.js as
    null, which it does not always accept (``cleanData`` reads ``'line' in trace.marker``).
    ``arrays``: lists of numbers become numpy arrays (trace data); the layout keeps them as lists (a domain,
    a range), which is what plotly's own layout objects send.
    """
    if isinstance(v, (pd.Series, pd.Index)):
        return v.to_numpy()
    if isinstance(v, dict):
        return {k: _plain(x, arrays) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        if arrays and v and all(isinstance(x, (int, float, np.number)) and not isinstance(x, bool) for x in v):
            return np.asarray(v, dtype=float)
        return [_plain(x, arrays) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class FigureSpec(dict):
    """A figure as plotly's plain ``{"data": [...], "layout": {...}}`` dict, numpy arrays left in place.

    What the figure functions return inside ``figure_specs()``: the widgets send it to the browser as it is
    (``widgets.plotly_view``) and build a ``go.Figure`` only when someone asks for one (``to_figure``). It holds
    what ``_plain`` leaves: numpy arrays, lists, strings and numbers (pandas objects are converted); a value plotly's
    validators would convert (a DataFrame, a torch tensor, datetimes) is not, so keep such values out of figures here.
    """

    def to_figure(self) -> go.Figure:
        return go.Figure(data=self["data"], layout=self["layout"], _validate=False)


_SPECS: contextvars.ContextVar[bool] = contextvars.ContextVar("tspin_figure_specs", default=False)


@contextlib.contextmanager
def figure_specs() -> Iterator[None]:
    """Inside this block the figure functions return ``FigureSpec`` dicts instead of ``go.Figure``s.

    Why: a ``go.Figure`` deep-copies its data on construction and again in ``to_dict``/``to_json``, and
    checks every array for a dataframe on the way; for the alpha/beta panel, which redraws five figures per
    slider move at 50,000 examples, that was ~40% of a move. Same figure, same JSON (tested).
    """
    token = _SPECS.set(True)
    try:
        yield
    finally:
        _SPECS.reset(token)


def _figure(traces: list[dict], layout: dict) -> go.Figure:
    """A ``go.Figure`` from plain dicts, without plotly's per-property validation.

    Validation costs ~5 ms per figure, too slow for a slider that redraws four figures; the
    tests rebuild every figure here with validation on (``tests/test_figures.py::validated``) so a wrong
    property name still fails loudly there. Inside ``figure_specs()`` the dicts are returned as they are.
    """
    data, lay = [_plain(t) for t in traces], _plain(layout, arrays=False)
    if _SPECS.get():
        return FigureSpec(data=data, layout=lay)
    return go.Figure(data=data, layout=lay, _validate=False)


def _ax(i: int) -> tuple[str, str]:
    return ("x", "y") if i == 0 else (f"x{i + 1}", f"y{i + 1}")


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[k : k + 2], 16) for k in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def method_color(method: str, index: int = 0) -> str:
    """The method's colour from the table of methods; an extra colour for a name not in it."""
    return M.color(method, EXTRA_COLORS[index % len(EXTRA_COLORS)])


def method_label(method: str) -> str:
    return M.label(method)


def _run_colors(labels: list[str], methods: list[str]) -> dict[str, str]:
    """Colour per run: its method's colour; a second run of the same method gets an extra colour."""
    used: dict[str, int] = {}
    out = {}
    for i, (label, m) in enumerate(zip(labels, methods)):
        k = used.get(m, 0)
        used[m] = k + 1
        known = M.color(m, "") != ""
        out[label] = method_color(m) if k == 0 and known else EXTRA_COLORS[(i + k) % len(EXTRA_COLORS)]
    return out


def _subsample(n: int, k: int = MAX_POINTS, seed: int = 0) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def _iteration_axis(title: str = "iteration t") -> dict:
    return {"title": {"text": title}, "dtick": 1, "tickformat": "d"}


# ---------------------------------------------------------------------------------------------
# Advantage decay, degenerate pairs, scores, misalignment, token entropy
# ---------------------------------------------------------------------------------------------


def advantage_decay(
    summaries: dict[str, tuple[pd.DataFrame, str]], stage: str = "before", marker_iteration: int | None = None
) -> go.Figure:
    """Current (u) and historical (v) advantage per iteration: mean line and q10-q90 band per run.

    ``summaries`` maps a run label to ``(analysis.advantage_summary(...), method)``.
    """
    labels = list(summaries)
    colors = _run_colors(labels, [summaries[k][1] for k in labels])
    when = "log π_t, at generation" if stage == "before" else "log π_{t+1}, after training"
    layout = _base_layout(f"Advantage decay ({when}): mean and q10–q90 band", height=380)
    layout.update(
        _panels(["current advantage u = log π(y) − log π(y')", "historical advantage v = log π(y') − log π(y0)"])
    )
    traces = []
    for label in labels:
        table, _method = summaries[label]
        c = colors[label]
        for i, kind in enumerate(("current", "historical")):
            xa, ya = _ax(i)
            t = table[table["advantage"] == kind].sort_values("iteration")
            x = t["iteration"].to_numpy()
            traces.append(
                dict(
                    type="scatter",
                    x=np.concatenate([x, x[::-1]]),
                    y=np.concatenate([t["q90"].to_numpy(), t["q10"].to_numpy()[::-1]]),
                    fill="toself",
                    mode="lines",
                    fillcolor=_rgba(c, 0.15),
                    line={"width": 0},
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=label,
                    name=f"{label} q10–q90",
                    xaxis=xa,
                    yaxis=ya,
                )
            )
            traces.append(
                dict(
                    type="scatter",
                    x=x,
                    y=t["mean"].to_numpy(),
                    mode="lines+markers",
                    line={"color": c, "width": 2},
                    name=label,
                    legendgroup=label,
                    showlegend=i == 0,
                    customdata=np.stack([t["q10"], t["q50"], t["q90"]], axis=-1) if len(t) else None,
                    hovertemplate=(
                        "t=%{x}<br>mean %{y:.2f} nats<br>"
                        "q10 %{customdata[0]:.2f}, q50 %{customdata[1]:.2f}, q90 %{customdata[2]:.2f}<extra>"
                        + label
                        + "</extra>"
                    ),
                    xaxis=xa,
                    yaxis=ya,
                )
            )
    for i in range(2):
        sfx = "" if i == 0 else "2"
        layout[f"xaxis{sfx}"].update(_iteration_axis())
        layout[f"yaxis{sfx}"].update(
            {"title": {"text": f"advantage ({NATS})"}, "zeroline": True, "zerolinecolor": "#999"}
        )
    if marker_iteration is not None:
        layout["shapes"] = [
            {
                "type": "line",
                "xref": xr,
                "yref": f"{yr} domain",
                "x0": marker_iteration,
                "x1": marker_iteration,
                "y0": 0,
                "y1": 1,
                "line": {"color": "#888", "dash": "dot"},
            }
            for xr, yr in (("x", "y"), ("x2", "y2"))
        ]
    return _figure(traces, layout)


def degenerate_shares(shares: dict[str, tuple[pd.DataFrame, str]]) -> go.Figure:
    """Share of degenerate pairs per iteration: y' == y (solid) and y0 == y (dashed), per run."""
    labels = list(shares)
    colors = _run_colors(labels, [shares[k][1] for k in labels])
    traces = []
    for label in labels:
        t, _ = shares[label]
        for col, dash, what in (
            ("synthetic_equals_annotated", "solid", "y' == y"),
            ("proto_equals_annotated", "dash", "y0 == y"),
        ):
            traces.append(
                dict(
                    type="scatter",
                    x=t["iteration"],
                    y=t[col],
                    mode="lines+markers",
                    name=f"{label}: {what}",
                    line={"color": colors[label], "dash": dash, "width": 2},
                    hovertemplate="t=%{x}: %{y:.1%}<extra>" + f"{label}: {what}" + "</extra>",
                )
            )
    layout = _base_layout("Degenerate pairs: share of y' == y (solid) and y0 == y (dashed)", height=380)
    # four or more entries: below the plot, where they cannot cover the title
    layout["legend"] = {"orientation": "h", "yanchor": "top", "y": -0.22, "xanchor": "left", "x": 0.0}
    layout["margin"] = {"l": 64, "r": 24, "t": 48, "b": 110}
    layout["xaxis"] = _iteration_axis()
    layout["yaxis"] = {"title": {"text": "share of examples (%)"}, "tickformat": ".0%", "rangemode": "tozero"}
    return _figure(traces, layout)


CONTROL_COLOR = "#7f7f7f"  # the SFT control's grey (methods.py)
_SPLIT_DASH = {"non-degenerate": "solid", "all": "dash"}  # y' != y solid, every pair dashed


def _marker_shapes(marker_iteration: int | None, axes: tuple[tuple[str, str], ...]) -> list[dict]:
    if marker_iteration is None:
        return []
    return [
        {
            "type": "line",
            "xref": xr,
            "yref": f"{yr} domain",
            "x0": marker_iteration,
            "x1": marker_iteration,
            "y0": 0,
            "y1": 1,
            "line": {"color": "#888", "dash": "dot"},
        }
        for xr, yr in axes
    ]


def _split_traces(
    label: str, table: pd.DataFrame, color: str, *, legend: bool, xa: str = "x", ya: str = "y", unit: str = NATS
) -> list[dict]:
    """A run's ``analysis.degenerate_split`` table: q10-q90 band and mean of y' != y (solid), mean of all (dashed)."""
    traces = []
    nd = table[table["subset"] == "non-degenerate"].sort_values("iteration")
    x = nd["iteration"].to_numpy()
    traces.append(
        dict(
            type="scatter",
            x=np.concatenate([x, x[::-1]]),
            y=np.concatenate([nd["q90"].to_numpy(), nd["q10"].to_numpy()[::-1]]),
            fill="toself",
            mode="lines",
            fillcolor=_rgba(color, 0.12),
            line={"width": 0},
            hoverinfo="skip",
            showlegend=False,
            legendgroup=label,
            name=f"{label}: q10–q90 over y' ≠ y",
            xaxis=xa,
            yaxis=ya,
        )
    )
    for subset in ("non-degenerate", "all"):
        t = table[table["subset"] == subset].sort_values("iteration")
        what = "y' ≠ y" if subset == "non-degenerate" else "all pairs"
        traces.append(
            dict(
                type="scatter",
                x=t["iteration"].to_numpy(),
                y=t["mean"].to_numpy(),
                mode="lines+markers",
                line={"color": color, "width": 2, "dash": _SPLIT_DASH[subset]},
                name=label,
                legendgroup=label,
                showlegend=legend and subset == "non-degenerate",
                customdata=t["n"].to_numpy(),
                hovertemplate=f"t=%{{x}}: mean %{{y:.3f}} {unit} over {what} (n=%{{customdata}})<extra>{label}</extra>",
                xaxis=xa,
                yaxis=ya,
            )
        )
    return traces


def vanishing_advantages(
    u_tables: dict[str, tuple[pd.DataFrame, str]],
    v_table: pd.DataFrame | None = None,
    stage: str = "before",
    marker_iteration: int | None = None,
) -> go.Figure:
    """What vanishes and what does not: u over y' != y against u over all pairs; v beside the SFT control.

    Left: per run, the mean current advantage u over the non-degenerate pairs (solid, with its
    q10-q90 band) and over all pairs (dashed); ``u_tables`` maps a label to
    ``(analysis.current_advantage_split(examples, stage), method)``. Right: the mean historical
    advantage v per run (``analysis.historical_advantage_table``); the SFT control is grey and dashed.
    """
    labels = list(u_tables)
    colors = _run_colors(labels, [u_tables[k][1] for k in labels])
    when = "log π_t, at generation" if stage == "before" else "log π_{t+1}, after training"
    layout = _base_layout(f"Current and historical advantage ({when})", height=400)
    layout.update(
        _panels(
            [
                "u = log π(y) − log π(y'): solid y' ≠ y, dashed all pairs",
                "v = log π(y') − log π(y0), beside the SFT control",
            ],
            gap=0.1,
        )
    )
    traces = []
    for label in labels:
        traces += _split_traces(label, u_tables[label][0], colors[label], legend=True)
    if v_table is not None and len(v_table):
        for label, t in v_table.groupby("run", sort=False):
            t = t.sort_values("iteration")
            is_control = bool(t["control"].iloc[0])
            color = CONTROL_COLOR if is_control else colors.get(label, method_color(str(t["method"].iloc[0])))
            traces.append(
                dict(
                    type="scatter",
                    x=t["iteration"].to_numpy(),
                    y=t["mean"].to_numpy(),
                    mode="lines+markers",
                    line={"color": color, "width": 2, "dash": "dash" if is_control else "solid"},
                    name=f"{label} (SFT control)" if is_control else label,
                    legendgroup=label,
                    showlegend=label not in u_tables,
                    hovertemplate="t=%{x}: mean v %{y:.3f} nats<extra>"
                    + label
                    + (" (SFT control)" if is_control else "")
                    + "</extra>",
                    xaxis="x2",
                    yaxis="y2",
                )
            )
    for sfx, name in (("", "u"), ("2", "v")):
        layout[f"xaxis{sfx}"].update(_iteration_axis())
        layout[f"yaxis{sfx}"].update(
            {"title": {"text": f"mean {name} ({NATS})"}, "zeroline": True, "zerolinecolor": "#999"}
        )
    shapes = _marker_shapes(marker_iteration, (("x", "y"), ("x2", "y2")))
    if shapes:
        layout["shapes"] = shapes
    return _figure(traces, layout)


def reward_margins(tables: dict[str, tuple[pd.DataFrame, str]], marker_iteration: int | None = None) -> go.Figure:
    """The reward margin r(y) − r(y') after training per iteration: y' ≠ y solid, all pairs dashed.

    ``tables`` maps a label to ``(analysis.reward_margin_split(examples), method)``; runs without
    a reward (SFT: every margin NaN) are left out. Pass runs whose rewards share a scale (SPIN and
    T-SPIN_ref: lam * log-ratios to π_t; T-SPIN's alpha * log π margins are far larger).
    """
    tables = {k: v for k, v in tables.items() if (v[0]["n"] > 0).any()}
    labels = list(tables)
    colors = _run_colors(labels, [tables[k][1] for k in labels])
    traces = []
    for label in labels:
        traces += _split_traces(label, tables[label][0], colors[label], legend=True)
    layout = _base_layout("Reward margin r(y) − r(y') after training: solid y' ≠ y, dashed all pairs", height=360)
    layout["xaxis"] = _iteration_axis()
    layout["yaxis"] = {"title": {"text": f"mean reward margin ({NATS})"}, "zeroline": True, "zerolinecolor": "#999"}
    shapes = _marker_shapes(marker_iteration, (("x", "y"),))
    if shapes:
        layout["shapes"] = shapes
    return _figure(traces, layout)


def score_axis_title(score_name: str = "accuracy") -> str:
    if score_name == "accuracy":
        return "task score (accuracy, 0–1)"
    if "logp" in score_name or "log" in score_name:
        return f"task score: {score_name} (nats/token)"
    return f"task score: {score_name}"


def _run_lines(tables: dict[str, tuple[pd.DataFrame, str]], x: str, y: str, hover: str) -> list[dict]:
    """One line per run, coloured by its method, for a per-iteration quantity."""
    labels = list(tables)
    colors = _run_colors(labels, [tables[k][1] for k in labels])
    return [
        dict(
            type="scatter",
            x=t[x],
            y=t[y],
            mode="lines+markers",
            name=label,
            line={"color": colors[label], "width": 2},
            hovertemplate=hover + "<extra>" + label + "</extra>",
        )
        for label, (t, _) in tables.items()
    ]


def scores(
    tables: dict[str, tuple[pd.DataFrame, str]],
    marker_iteration: int | None = None,
    score_name: str = "accuracy",
    harness: dict[str, pd.DataFrame] | None = None,
) -> go.Figure:
    """Task score of pi_0, pi_1, ... per run (``analysis.policy_scores``); ``score_name`` labels the axis.

    ``harness`` maps a run's label to its lm-evaluation-harness rows (``RunRecords.harness``: policy, task,
    metric, filter, value): one dashed line per task and metric beside the run's own score, on the same axis
    when both are 0-1 shares, else on a second axis at the right.
    """
    traces = _run_lines(tables, "policy", "score", "π_%{x}: %{y:.3f}")
    layout = _base_layout("Task score per policy (π_0 = starting model)", height=320)
    layout["xaxis"] = _iteration_axis("policy π_t (iterations trained)")
    layout["yaxis"] = {"title": {"text": score_axis_title(score_name)}}
    if score_name == "accuracy":  # a share: always its whole 0-1 range, never autoranged past it
        layout["yaxis"]["range"] = list(ACCURACY_RANGE)
    extra = _harness_lines(tables, harness or {}, same_axis=score_name == "accuracy")
    if extra:
        traces += extra
        if any(t.get("yaxis") == "y2" for t in extra):
            layout["yaxis2"] = {
                "title": {"text": "lm-eval score (dashed)"},
                "overlaying": "y",
                "side": "right",
                "showgrid": False,
            }
            layout["margin"] = {**layout["margin"], "r": 64}
    if not any(len(t) for t, _ in tables.values()):
        _empty_state(layout, "no policy scored yet: press Prepare (scores π_0), then Whole step")
    if marker_iteration is not None:
        layout["shapes"] = [
            {
                "type": "line",
                "xref": "x",
                "yref": "y domain",
                "x0": marker_iteration + 1,
                "x1": marker_iteration + 1,
                "y0": 0,
                "y1": 1,
                "line": {"color": "#888", "dash": "dot"},
            }
        ]
    return _figure(traces, layout)


ACCURACY_RANGE = (-0.03, 1.03)
HARNESS_DASHES = ("dash", "dot", "dashdot", "longdash", "longdashdot")


def _harness_lines(
    tables: dict[str, tuple[pd.DataFrame, str]], harness: dict[str, pd.DataFrame], *, same_axis: bool
) -> list[dict]:
    """Dashed lines of lm-eval scores per run (its colour) and task/metric (a dash style each)."""
    from .harness import shown  # the tasks asked for by name, not every subtask of a group

    rows = {
        k: shown(h)
        for k, h in harness.items()
        if h is not None and len(h) and {"policy", "task", "metric", "value"} <= set(h.columns)
    }
    if not rows:
        return []
    labels = list(dict.fromkeys([*tables, *rows]))
    colors = _run_colors(labels, [tables[k][1] if k in tables else "" for k in labels])
    values = np.concatenate([h["value"].to_numpy(float) for h in rows.values()])
    values = values[np.isfinite(values)]
    axis = "y" if same_axis and (len(values) == 0 or (values.min() >= 0 and values.max() <= 1)) else "y2"
    out = []
    for label, h in rows.items():
        many = h.groupby(["task", "metric"])["filter"].transform("nunique") > 1 if "filter" in h else None
        names = h["task"].astype(str) + " " + h["metric"].astype(str)
        if many is not None:
            names = names + np.where(many, "/" + h["filter"].astype(str), "")
        for i, (name, part) in enumerate(h.assign(_name=names).groupby("_name", sort=True)):
            part = part.sort_values("policy")
            out.append(
                dict(
                    type="scatter",
                    x=part["policy"].to_numpy(int),
                    y=part["value"].to_numpy(float),
                    mode="lines+markers",
                    name=f"{label} · {name}",
                    yaxis=axis,
                    line={"color": colors[label], "width": 1.5, "dash": HARNESS_DASHES[i % len(HARNESS_DASHES)]},
                    marker={"symbol": "diamond", "size": 7},
                    hovertemplate=f"π_%{{x}}: %{{y:.3f}} (lm-eval {name})<extra>{label}</extra>",
                )
            )
    return out


def _empty_state(layout: dict, message: str) -> None:
    """No data yet: a fixed 0-1 iteration axis and a sentence saying what to do, not a stray 0-4 axis."""
    layout["xaxis"] = {**layout.get("xaxis", {}), "range": [0, 1], "dtick": 1}
    layout.setdefault("annotations", []).append(
        {
            "text": message,
            "xref": "paper",
            "yref": "paper",
            "x": 0.5,
            "y": 0.5,
            "showarrow": False,
            "font": {"size": 13, "color": "#666"},
        }
    )


def misalignment(tables: dict[str, tuple[pd.DataFrame, str]], iteration: int | None = None) -> go.Figure:
    """Reward margin against log-likelihood margin, one panel per run, misaligned share in titles.

    ``tables`` maps a label to ``(analysis.misalignment_table(examples, iteration), method)``.
    Misaligned: reward ranks y above y' (y > 0) while log pi ranks it below (x < 0): top-left.
    """
    labels = list(tables)
    titles = []
    for label in labels:
        t, _ = tables[label]
        share = float(t["misaligned"].mean()) if len(t) else math.nan
        titles.append(f"{label}: {share:.1%} misaligned (n={len(t)})" if len(t) else f"{label}: no reward margins")
    layout = _base_layout(
        "Reward vs log-likelihood: r(y) − r(y') against log π(y) − log π(y')"
        + (f", iteration {iteration}" if iteration is not None else ""),
        height=380,
    )
    layout.update(_panels(titles, gap=0.08))
    traces = []
    for i, label in enumerate(labels):
        t, _ = tables[label]
        xa, ya = _ax(i)
        idx = _subsample(len(t))
        s = t.iloc[idx]
        for flag, color, name in ((False, ALIGNED_COLOR, "aligned"), (True, MISALIGNED_COLOR, "misaligned")):
            part = s[s["misaligned"] == flag]
            traces.append(
                dict(
                    type="scattergl",
                    x=part["logp_margin"].to_numpy(),
                    y=part["reward_margin"].to_numpy(),
                    mode="markers",
                    marker={"color": color, "size": 5, "opacity": 0.6},
                    name=name,
                    legendgroup=name,
                    showlegend=i == 0,
                    customdata=part["example_id"].to_numpy(),
                    hovertemplate=(
                        "example %{customdata}<br>log-lik margin %{x:.2f} nats<br>"
                        "reward margin %{y:.3f}<extra>" + label + "</extra>"
                    ),
                    xaxis=xa,
                    yaxis=ya,
                )
            )
        sfx = "" if i == 0 else str(i + 1)
        layout[f"xaxis{sfx}"].update(
            {"title": {"text": f"log π(y) − log π(y') ({NATS})"}, "zeroline": True, "zerolinecolor": "#999"}
        )
        layout[f"yaxis{sfx}"].update(
            {"title": {"text": "reward margin r(y) − r(y')"}, "zeroline": True, "zerolinecolor": "#999"}
        )
    return _figure(traces, layout)


def token_entropy(tables: dict[str, tuple[pd.DataFrame, str]]) -> go.Figure:
    """The policy's token entropy per iteration, per run (``analysis.token_entropy_table``)."""
    traces = _run_lines(tables, "iteration", "token_entropy", "t=%{x}: %{y:.3f} nats/token")
    layout = _base_layout("Policy token entropy (of y' under the policy that sampled it)", height=300)
    layout["xaxis"] = _iteration_axis()
    layout["yaxis"] = {"title": {"text": "entropy (nats/token)"}, "rangemode": "tozero"}
    return _figure(traces, layout)


# ---------------------------------------------------------------------------------------------
# One triplet
# ---------------------------------------------------------------------------------------------


def token_logps(shading: pd.DataFrame, title: str = "Per-token log-probs") -> go.Figure:
    """Per-token log-prob of y, y', y0 against token position (``analysis.token_shading``)."""
    traces = []
    for role in ("annotated", "synthetic", "proto"):
        t = shading[shading["role"] == role]
        traces.append(
            dict(
                type="scatter",
                x=t["position"],
                y=t["logp"],
                mode="lines+markers",
                name=ROLE_LABELS[role],
                line={"color": ROLE_COLORS[role], "width": 2},
                text=t["token"],
                hovertemplate="token %{x} %{text|}: %{y:.3f} nats<extra>" + ROLE_LABELS[role] + "</extra>",
            )
        )
    layout = _base_layout(title, height=300)
    layout["xaxis"] = {"title": {"text": "token position"}, "dtick": 1}
    layout["yaxis"] = {"title": {"text": f"log-prob ({NATS})"}}
    return _figure(traces, layout)


def synthetic_history(history: pd.DataFrame, example_id: int) -> go.Figure:
    """One prompt across iterations: log pi_t(y') and the advantages u and v at generation time."""
    hover_text = [f"y' = {s!r}" for s in history["synthetic"]]
    traces = [
        dict(
            type="scatter",
            x=history["iteration"],
            y=history["synthetic_logp_before"],
            mode="lines+markers",
            name="log π_t(y')",
            line={"color": ROLE_COLORS["synthetic"], "width": 2},
            text=hover_text,
            hovertemplate="t=%{x}: %{y:.2f} nats<br>%{text}<extra></extra>",
        ),
        dict(
            type="scatter",
            x=history["iteration"],
            y=history["current_advantage_before"],
            mode="lines+markers",
            name="u (current advantage)",
            line={"color": ADVANTAGE_COLORS["current"], "dash": "dash"},
        ),
        dict(
            type="scatter",
            x=history["iteration"],
            y=history["historical_advantage_before"],
            mode="lines+markers",
            name="v (historical advantage)",
            line={"color": ADVANTAGE_COLORS["historical"], "dash": "dot"},
        ),
    ]
    layout = _base_layout(f"Example {example_id}: its synthetic response across iterations", height=300)
    layout["xaxis"] = _iteration_axis()
    layout["yaxis"] = {"title": {"text": f"log-prob / advantage ({NATS})"}, "zeroline": True, "zerolinecolor": "#999"}
    return _figure(traces, layout)


# ---------------------------------------------------------------------------------------------
# alpha / beta / lam panel
# ---------------------------------------------------------------------------------------------


def _scale_symbol(spec) -> str:
    return M.KNOBS[spec.scale].symbol if spec.scale else "s"


def _weight_curve(spec, grid: np.ndarray, scale: float, beta: float, *, historical: bool) -> np.ndarray:
    """Theorem 1's weight as a function of one advantage, from the objective itself (no formula redone here):
    log-probs (and a zero reference) placed so that u (or v) runs over ``grid`` and the other advantage is 0."""
    import torch

    g = torch.as_tensor(grid, dtype=torch.float64)
    zero = torch.zeros_like(g)
    # current: y = grid, y' = y0 = 0 -> u = grid; historical: y = y' = grid, y0 = 0 -> v = grid
    lp = M.LogProbs(
        annotated=g,
        synthetic=g if historical else zero,
        proto=zero,
        ref_annotated=zero,
        ref_synthetic=zero,
        ref_proto=zero,
        annotated_tokens=torch.ones_like(g),
    )
    values = {"alpha": scale, "lam": scale, "beta": beta}
    knobs = {k: values.get(k, M.KNOBS[k].default) if k != spec.scale else scale for k in spec.knobs}
    out = spec.loss(lp, knobs)
    return (out.historical_weight if historical else out.current_weight).numpy()


def gradient_weights(table: pd.DataFrame, *, kind: str, scale: float, beta: float) -> go.Figure:
    """Each example's weight in the gradient against its advantage, with the weight curves.

    Left: w_cur = sigmoid(-s*u) against u; right: w_hist = beta*sigmoid(-s*v) against v
    (s = the objective's scale: alpha for T-SPIN, lam for SPIN/T-SPIN_ref). Points are examples (a fixed subset
    when large); lines are the curves at the current settings, drawn for the logistic family only (for other
    objectives the points are |dL/d log pi(y)| and |dL/d log pi(y0)|, `records.objective_table`).
    """
    spec = M.get(kind)
    s_name = _scale_symbol(spec)
    logistic = spec.logistic
    layout = _base_layout(
        f"Gradient weight per example ({s_name} = {scale:.3g}, β = {beta:.3g}; {len(table):,} examples)", height=360
    )
    if logistic:
        layout.update(_panels([f"current: sigmoid(−{s_name}·u)", f"historical: β·sigmoid(−{s_name}·v)"]))
    else:
        layout.update(_panels(["current: |dL/d log π(y)|", "historical: |dL/d log π(y0)|"]))
    idx = _subsample(len(table))
    s = table.iloc[idx]
    traces = []
    for i, (adv, w, color, name) in enumerate(
        (
            ("current_advantage", "weight_current", ADVANTAGE_COLORS["current"], "current term"),
            ("historical_advantage", "weight_historical", ADVANTAGE_COLORS["historical"], "historical term"),
        )
    ):
        xa, ya = _ax(i)
        x = s[adv].to_numpy()
        finite = x[np.isfinite(x)]
        lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (-1.0, 1.0)
        grid = np.linspace(min(lo, -1.0), max(hi, 1.0), 120)
        curve = _weight_curve(spec, grid, scale, beta, historical=i == 1) if logistic else None
        traces.append(
            dict(
                type="scattergl",
                x=x,
                y=s[w].to_numpy(),
                mode="markers",
                marker={"color": color, "size": 5, "opacity": 0.5},
                name=f"{name} (examples)",
                customdata=s["example_id"].to_numpy(),
                hovertemplate="example %{customdata}<br>advantage %{x:.2f} nats<br>weight %{y:.3f}<extra></extra>",
                xaxis=xa,
                yaxis=ya,
            )
        )
        if logistic:
            traces.append(
                dict(
                    type="scatter",
                    x=grid,
                    y=curve,
                    mode="lines",
                    line={"color": "#333", "width": 1.5},
                    name="weight curve",
                    showlegend=i == 0,
                    hoverinfo="skip",
                    xaxis=xa,
                    yaxis=ya,
                )
            )
    sfx_titles = (("", f"current advantage u ({NATS})"), ("2", f"historical advantage v ({NATS})"))
    for sfx, xt in sfx_titles:
        layout[f"xaxis{sfx}"].update({"title": {"text": xt}})
        if logistic:
            layout[f"yaxis{sfx}"].update({"title": {"text": "gradient weight (0–1)"}, "range": [-0.03, 1.03]})
        else:
            layout[f"yaxis{sfx}"].update({"title": {"text": "|gradient| (per nat)"}, "rangemode": "tozero"})
    return _figure(traces, layout)


def objective_gradients(table: pd.DataFrame, label: str) -> go.Figure:
    """The objective's gradient on each log-prob (dL/d log pi of y, y', y0) over the examples, as box plots.

    Negative on y means training pushes log pi(y) up. Boxes are drawn from quantiles computed here (q1, median,
    q3, and the 5% / 95% quantiles as whiskers), so a 50k-example iteration sends 15 numbers, not 150k.
    """
    traces = []
    for role in ("annotated", "synthetic", "proto"):
        g = table[f"grad_{role}"].to_numpy(float)
        g = g[np.isfinite(g)]
        if not len(g):
            continue
        q = np.quantile(g, [0.05, 0.25, 0.5, 0.75, 0.95])
        traces.append(
            dict(
                type="box",
                name=ROLE_LABELS[role],
                x=[ROLE_LABELS[role]],
                q1=[q[1]],
                median=[q[2]],
                q3=[q[3]],
                lowerfence=[q[0]],
                upperfence=[q[4]],
                mean=[float(g.mean())],
                marker={"color": ROLE_COLORS[role]},
                hovertemplate=f"{ROLE_LABELS[role]}<br>mean %{{mean:.3g}}<extra></extra>",
                showlegend=False,
            )
        )
    layout = _base_layout(
        f"{label}: gradient on each log-prob, dL/d log π (5–95% whiskers; {len(table):,} examples)", height=300
    )
    layout["xaxis"] = {"title": {"text": "response"}, "type": "category"}
    layout["yaxis"] = {"title": {"text": "dL / d log π(z|x)  (per nat)"}, "zeroline": True}
    return _figure(traces, layout)


def top_drivers(top: pd.DataFrame) -> go.Figure:
    """Stacked bars of w_cur and w_hist for the examples that drive the update most."""
    y = [f"#{int(e)}" for e in top["example_id"]]
    traces = [
        dict(
            type="bar",
            y=y,
            x=top["weight_current"],
            orientation="h",
            name="current weight",
            marker={"color": ADVANTAGE_COLORS["current"]},
            customdata=top["example_id"].to_numpy(),
        ),
        dict(
            type="bar",
            y=y,
            x=top["weight_historical"],
            orientation="h",
            name="historical weight",
            marker={"color": ADVANTAGE_COLORS["historical"]},
            customdata=top["example_id"].to_numpy(),
        ),
    ]
    layout = _base_layout("Examples that drive the update most", height=360, barmode="stack")
    layout["xaxis"] = {"title": {"text": "gradient weight w_cur + w_hist"}}
    layout["yaxis"] = {"title": {"text": "example id"}, "autorange": "reversed", "type": "category"}
    return _figure(traces, layout)


def loss_landscape(landscape: pd.DataFrame, *, kind: str, scale: float, beta: float) -> go.Figure:
    """Mean loss over the (scale, beta) grid as a heatmap, current settings marked; a line over the scale for
    objectives without beta (SPIN)."""
    spec = M.get(kind)
    s_name = _scale_symbol(spec)
    what = M.KNOBS[spec.scale].help.split(":")[0] if spec.scale else "no scale knob"
    if "beta" not in spec.knobs:
        line = landscape.drop_duplicates("scale").sort_values("scale")
        current = float(np.interp(scale, line["scale"], line["loss"]))
        traces = [
            dict(
                type="scatter",
                x=line["scale"],
                y=line["loss"],
                mode="lines",
                name=f"mean {spec.label} loss",
                line={"color": spec.color, "width": 2},
            ),
            dict(
                type="scatter",
                x=[scale],
                y=[current],
                mode="markers",
                name=f"current {s_name}",
                marker={"color": "#111", "size": 11, "symbol": "x"},
            ),
        ]
        layout = _base_layout(f"Loss landscape: mean {spec.label} loss over {s_name}", height=340)
        layout["xaxis"] = {"title": {"text": f"{s_name} ({what})"}, "type": "log"}
        layout["yaxis"] = {"title": {"text": "mean loss (nats)"}}
        return _figure(traces, layout)
    grid = landscape.pivot(index="beta", columns="scale", values="loss")
    traces = [
        dict(
            type="heatmap",
            x=grid.columns.to_numpy(),
            y=grid.index.to_numpy(),
            # a list (not an array) so NaN can become None: 2-D arrays reach widgets as JSON lists
            z=[[float(v) if np.isfinite(v) else None for v in row] for row in grid.to_numpy()],
            colorscale="Viridis",
            colorbar={"title": {"text": "mean loss<br>(nats)"}},
            hovertemplate=f"{s_name}=%{{x:.3g}}, β=%{{y:.3g}}<br>loss %{{z:.3f}}<extra></extra>",
        ),
        dict(
            type="scatter",
            x=[scale],
            y=[beta],
            mode="markers",
            name="current setting",
            marker={"color": "white", "size": 12, "symbol": "x", "line": {"color": "black", "width": 2}},
        ),
    ]
    layout = _base_layout(f"Loss landscape: mean loss over {s_name} and β", height=340)
    layout["xaxis"] = {"title": {"text": f"{s_name} ({what})"}, "type": "log"}
    layout["yaxis"] = {"title": {"text": "β (historical weight)"}}
    return _figure(traces, layout)


def opponent(table: pd.DataFrame, curve: pd.DataFrame, alpha: float, alpha_run: float | None = None) -> go.Figure:
    """Proposition 1: bars of softmax(c/alpha) per candidate; its entropy against alpha.

    ``alpha_run`` (the alpha the run trained with, c = alpha_run * log π) only labels the title.
    """
    colors = [ROLE_COLORS[r] for r in table["role"]]
    current_entropy = float(np.interp(alpha, curve["alpha"], curve["entropy"])) if len(curve) else math.nan
    c_text = "α_run·log π(z|x)" if alpha_run is None else f"{alpha_run:.3g}·log π(z|x)"
    layout = _base_layout(f"Opponent π* = softmax(c/α) at α = {alpha:.3g}, c = {c_text}", height=340)
    layout.update(_panels(["probability per candidate", "entropy of π* as α moves"], gap=0.14))
    traces = [
        dict(
            type="bar",
            x=table["candidate"],
            y=table["probability"],
            marker={"color": colors},
            text=[f"{p:.2f}" for p in table["probability"]],
            textposition="outside",
            customdata=np.stack([table["text"].astype(str), table["confidence"]], axis=-1) if len(table) else None,
            hovertemplate="%{x}: p=%{y:.3f}<br>c=%{customdata[1]:.2f} nats<br>%{customdata[0]}<extra></extra>",
            name="π*(z)",
            showlegend=False,
        ),
        dict(
            type="scatter",
            x=curve["alpha"],
            y=curve["entropy"],
            mode="lines",
            line={"color": "#333", "width": 2},
            name="entropy",
            showlegend=False,
            xaxis="x2",
            yaxis="y2",
        ),
        dict(
            type="scatter",
            x=curve["alpha"],
            y=curve["max_entropy"],
            mode="lines",
            line={"color": "#999", "dash": "dot"},
            name="log K (uniform)",
            showlegend=False,
            xaxis="x2",
            yaxis="y2",
            hoverinfo="skip",
        ),
        dict(
            type="scatter",
            x=[alpha],
            y=[current_entropy],
            mode="markers",
            marker={"color": "#111", "size": 10, "symbol": "x"},
            name="current α",
            showlegend=False,
            xaxis="x2",
            yaxis="y2",
        ),
    ]
    layout["xaxis"].update({"title": {"text": "candidate response"}})
    layout["yaxis"].update({"title": {"text": "probability"}, "range": [0, 1.12]})
    layout["xaxis2"].update({"title": {"text": "α (entropy coefficient)"}, "type": "log"})
    layout["yaxis2"].update({"title": {"text": "entropy (nats)"}, "rangemode": "tozero"})
    return _figure(traces, layout)


# ---------------------------------------------------------------------------------------------
# Runs on common axes
# ---------------------------------------------------------------------------------------------

_METRIC_AXES = {
    "score": ("task score (exact match, 0–1)", "policy π_t (iterations trained)"),
    "current_advantage_mean": (f"mean current advantage u ({NATS})", "iteration t"),
    "historical_advantage_mean": (f"mean historical advantage v ({NATS})", "iteration t"),
    "misaligned_share": ("share misaligned (%)", "iteration t"),
    "share_synthetic_equals_annotated": ("share y' == y (%)", "iteration t"),
    "token_entropy": ("token entropy (nats/token)", "iteration t"),
    "loss_mean": ("mean training loss (nats)", "iteration t"),
}


_RUN_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")
_RUN_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "cross")


def run_comparison(table: pd.DataFrame, metrics: list[str], runs: list[str] | None = None) -> go.Figure:
    """Several runs on common axes: one panel per metric (``analysis.comparison_table``)."""
    runs = runs if runs is not None else list(dict.fromkeys(table["run"]))
    methods = [table.loc[table["run"] == r, "method"].iloc[0] if (table["run"] == r).any() else "" for r in runs]
    colors = _run_colors(runs, methods)
    metrics = list(metrics) or ["score"]
    layout = _base_layout(
        "Runs on common axes: " + ", ".join(_METRIC_AXES.get(m, (m,))[0] for m in metrics[:3]), height=360
    )
    layout.update(_panels([m.replace("_", " ") for m in metrics], gap=0.12 if len(metrics) > 1 else 0.0))
    traces = []
    for i, metric in enumerate(metrics):
        xa, ya = _ax(i)
        for k, run in enumerate(runs):
            t = table[(table["run"] == run) & (table["metric"] == metric)].sort_values("x")
            traces.append(
                dict(
                    type="scatter",
                    x=t["x"],
                    y=t["value"],
                    mode="lines+markers",
                    name=run,
                    legendgroup=run,
                    showlegend=i == 0,
                    # runs that coincide stay visible: earlier runs wider and with larger markers
                    # underneath, each run its own marker symbol and dash
                    line={
                        "color": colors[run],
                        "width": max(1.5, 5 - 1.2 * k),
                        "dash": _RUN_DASHES[k % len(_RUN_DASHES)],
                    },
                    marker={"symbol": _RUN_SYMBOLS[k % len(_RUN_SYMBOLS)], "size": max(6, 13 - 2 * k)},
                    hovertemplate="%{x}: %{y:.3f}<extra>" + run + "</extra>",
                    xaxis=xa,
                    yaxis=ya,
                )
            )
        ytitle, xtitle = _METRIC_AXES.get(metric, (metric, "iteration t"))
        sfx = "" if i == 0 else str(i + 1)
        layout[f"xaxis{sfx}"].update(_iteration_axis(xtitle))
        layout[f"yaxis{sfx}"].update({"title": {"text": ytitle}})
        if "share" in metric:
            layout[f"yaxis{sfx}"]["tickformat"] = ".0%"
        vals = table.loc[table["metric"] == metric, "value"].to_numpy(dtype=float)
        if metric == "score" and len(vals) and np.nanmin(vals) >= 0 and np.nanmax(vals) <= 1:
            layout[f"yaxis{sfx}"]["range"] = list(ACCURACY_RANGE)  # an accuracy never autoranges to -1
    return _figure(traces, layout)


def report_figures(runs: dict[str, Any], *, iteration: int | None = None) -> dict[str, go.Figure]:
    """The widgets' figures for one or more runs, for ``tspin report`` to write as static HTML.

    ``runs`` maps a label to records (``examples``, ``metrics``, ``manifest``). ``iteration``
    picks the iteration of the misalignment scatter (default: the last one).
    """
    from tspin_kit import analysis as A

    methods = {k: A.run_settings(r)["method"] for k, r in runs.items()}
    with_examples = {k: r for k, r in runs.items() if r.examples is not None and len(r.examples)}
    figs = {
        "advantage_decay": advantage_decay(
            {k: (A.advantage_summary(r.examples), methods[k]) for k, r in with_examples.items()}
        ),
        "degenerate_shares": degenerate_shares(
            {k: (A.degenerate_shares(r.examples), methods[k]) for k, r in with_examples.items()}
        ),
        "scores": scores(
            {k: (A.policy_scores(r.metrics), methods[k]) for k, r in runs.items()},
            score_name=A.score_name(next(iter(runs.values())).metrics) if runs else "accuracy",
            harness={k: getattr(r, "harness", None) for k, r in runs.items()},
        ),
        "token_entropy": token_entropy(
            {k: (A.token_entropy_table(r.metrics, r.examples), methods[k]) for k, r in with_examples.items()}
        ),
    }
    if with_examples:

        def last(r):
            return iteration if iteration is not None else A.iterations_of(r.examples)[-1]

        figs["misalignment"] = misalignment(
            {k: (A.misalignment_table(r.examples, last(r)), methods[k]) for k, r in with_examples.items()}, iteration
        )
    if with_examples:
        figs["vanishing_advantages"] = vanishing_advantages(
            {k: (A.current_advantage_split(r.examples), methods[k]) for k, r in with_examples.items()},
            A.historical_advantage_table(with_examples),
        )
        ref = {k: r for k, r in with_examples.items() if A.reference_based(methods[k])}
        figs["reward_margins"] = reward_margins(
            {k: (A.reward_margin_split(r.examples), methods[k]) for k, r in (ref or with_examples).items()}
        )
    if len(runs) > 1:
        table = A.comparison_table(runs)
        figs["run_comparison"] = run_comparison(table, ["score", "current_advantage_mean", "historical_advantage_mean"])
    return figs
