"""What a person sees, read from the page: every drawn plotly figure's ``_fullLayout`` / ``_fullData``.

``page_figures(page)`` returns, per drawn ``.tspin-plot`` (plotly.js's own graph div), its title,
the type of every axis plotly.js settled on, the theme colours and each trace's x / y as drawn.
``expect_figures(page, expected)`` polls until the page shows figures that match the ``go.Figure``s
computed independently in the test process (titles, axis types, trace types/names, x and y), and
fails with the last difference otherwise.
"""

from __future__ import annotations

import math
import time

import numpy as np

FIGURES_JS = """(root) => Array.from((root || document).querySelectorAll('.tspin-plot'))
    .filter(gd => gd._fullLayout && gd._fullData).map(gd => {
  const L = gd._fullLayout;
  const axes = {};
  for (const k of Object.keys(L)) if (/^[xy]axis\\d*$/.test(k) && L[k] && L[k].type) axes[k] = L[k].type;
  const arr = a => (a == null || typeof a !== 'object' || !('length' in a)) ? null
      : Array.from(a, v => (typeof v === 'number' || typeof v === 'string') ? v : (v == null ? null : String(v)));
  return {
    title: (L.title && L.title.text) || '', revision: gd.dataset.revision || '', theme: gd.dataset.theme || '',
    error: gd.dataset.error || '', paper: L.paper_bgcolor, font: L.font && L.font.color,
    visible: gd.offsetParent !== null && gd.getBoundingClientRect().width > 0,
    width: gd.getBoundingClientRect().width, right: gd.getBoundingClientRect().right,
    axes, traces: gd._fullData.map(t => ({type: t.type, name: t.name || '', x: arr(t.x), y: arr(t.y),
      visible: t.visible, mode: t.mode || '', line: (t.line && typeof t.line.color === 'string') ? t.line.color : null,
      marker: (t.marker && typeof t.marker.color === 'string') ? t.marker.color : null})),
  };
})"""


def page_figures(page, visible_only: bool = True, within=None) -> list[dict]:
    """The drawn figures of the page, or only those inside the Playwright locator ``within``."""
    figs = within.evaluate(FIGURES_JS) if within is not None else page.evaluate(FIGURES_JS)
    return [f for f in figs if f["visible"]] if visible_only else figs


def _values(v) -> list:
    if v is None:
        return []
    if isinstance(v, dict) and "bdata" in v:  # never here: figures come from go.Figure objects
        raise TypeError("encoded array")
    return list(np.asarray(v, dtype=object).ravel()) if not isinstance(v, (list, tuple)) else list(v)


def _same(a: list, b: list, what: str) -> None:
    assert len(a) == len(b), f"{what}: {len(a)} values drawn, {len(b)} expected"
    for i, (x, y) in enumerate(zip(a, b)):
        if isinstance(y, str) or isinstance(x, str):
            assert str(x) == str(y), f"{what}[{i}]: drawn {x!r}, expected {y!r}"
            continue
        xf = math.nan if x is None else float(x)
        yf = math.nan if y is None else float(y)
        if math.isnan(yf):
            assert math.isnan(xf), f"{what}[{i}]: drawn {x!r}, expected NaN/None"
        else:
            assert math.isclose(xf, yf, rel_tol=1e-6, abs_tol=1e-9), f"{what}[{i}]: drawn {x!r}, expected {y!r}"


def declared_axis_types(fig) -> dict:
    lay = fig.layout.to_plotly_json()
    return {
        k: v["type"] for k, v in lay.items() if k[:5] in ("xaxis", "yaxis") and isinstance(v, dict) and v.get("type")
    }


def match(drawn: dict, fig) -> None:
    """Raise AssertionError unless ``drawn`` (one entry of ``page_figures``) shows ``fig``."""
    title = fig.layout.title.text or ""
    assert drawn["title"] == title, f"title {drawn['title']!r} != {title!r}"
    assert not drawn["error"], drawn["error"]
    for ax, typ in declared_axis_types(fig).items():
        assert drawn["axes"].get(ax) == typ, f"{title}: {ax} drawn as {drawn['axes'].get(ax)!r}, declared {typ!r}"
    assert len(drawn["traces"]) == len(fig.data), (
        f"{title}: {len(drawn['traces'])} traces drawn, {len(fig.data)} expected"
    )
    for k, (d, t) in enumerate(zip(drawn["traces"], fig.data)):
        assert d["type"] == t.type, f"{title}: trace {k} is {d['type']}, expected {t.type}"
        if t.type == "heatmap":
            continue  # z is 2-D; its marker trace carries the setting
        for axis in ("x", "y"):
            _same(d[axis] or [], _values(getattr(t, axis)), f"{title}: trace {k} ({t.name}) {axis}")
        # a category axis must stay one: strings on it are labels, never numbers
        if t.type == "bar" and t.orientation == "h":
            assert drawn["axes"].get("yaxis") == "category", f"{title}: bars lost their category axis"


def expect_figures(page, expected, timeout: float = 30.0, within=None) -> list[dict]:
    """Wait until, for every expected figure, a drawn figure with its title matches it in full.

    ``expected``: a list of figures, or a callable returning one (re-read on every poll, so a state
    that is still settling, e.g. several key presses in flight, is compared at its final value).
    ``within``: a locator (e.g. one notebook cell) whose figures alone are compared; two widgets of
    one kind in a notebook draw figures with the same titles.
    """
    deadline = time.monotonic() + timeout
    last = None
    while True:
        drawn = page_figures(page, within=within)
        try:
            figs = expected() if callable(expected) else expected
            by_title = {d["title"]: d for d in drawn}
            for fig in figs:
                title = fig.layout.title.text
                assert title in by_title, f"no drawn figure titled {title!r}; drawn: {sorted(by_title)}"
                match(by_title[title], fig)
            return drawn
        except AssertionError as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"the page never showed the expected figures: {last}")
        time.sleep(0.2)


def rgba(color: str) -> tuple[float, float, float, float] | None:
    """A CSS colour as plotly.js reports it (#rgb, #rrggbb, rgb(), rgba()) as (r, g, b, a)."""
    import re

    color = (color or "").strip()
    if color.startswith("#") and len(color) in (4, 7):
        h = color[1:] if len(color) == 7 else "".join(c * 2 for c in color[1:])
        return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16), 1.0)
    nums = [float(v) for v in re.findall(r"[\d.]+", color)]
    if color.startswith("rgb") and len(nums) >= 3:
        return (nums[0], nums[1], nums[2], nums[3] if len(nums) > 3 else 1.0)
    return None


def contrast(fg: str, bg: str) -> float:
    """WCAG contrast ratio of colour ``fg`` (blended over ``bg`` when translucent) against ``bg``."""

    def lum(c):
        def f(v):
            v /= 255
            return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

        return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2])

    b, c = rgba(bg), rgba(fg)
    assert b is not None and c is not None, f"cannot read colours {fg!r} on {bg!r}"
    seen = tuple(c[i] * c[3] + b[i] * (1 - c[3]) for i in range(3))
    hi, lo = sorted((lum(seen), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def unreadable_lines(drawn: dict, minimum: float = 3.0) -> list[str]:
    """Every drawn line (and string marker colour of a scatter) whose contrast against the paper is under
    ``minimum``."""
    bad = []
    for k, t in enumerate(drawn["traces"]):
        if t.get("visible") is False:
            continue
        colors = []
        if t["line"] and (t["type"] != "scatter" or "lines" in t["mode"]):
            colors.append(("line", t["line"]))
        if t["marker"] and t["type"] == "scatter" and "markers" in t["mode"]:
            colors.append(("marker", t["marker"]))
        for what, col in colors:
            r = contrast(col, drawn["paper"])
            if r < minimum:
                bad.append(
                    f"{drawn['title']}: trace {k} ({t['name']}) {what} {col} on {drawn['paper']}: contrast {r:.2f}"
                )
    return bad
