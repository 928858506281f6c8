"""The dark-theme contrast fix of ``widgets/plotly_view.js`` shown able to fail and to fix.

The module is imported in a blank chromium page (its named exports ``readable``, ``contrast``,
``rgba``): #333 over JupyterLab Dark's background is below 3:1 raw, and ``readable`` raises it to
>= 3:1; the Python ``figcheck.contrast`` (what the Lab test asserts with) agrees on both numbers.
"""

from __future__ import annotations

import pytest
from helpers.figcheck import contrast

from .conftest import ROOT

pytestmark = pytest.mark.browser

JS = """async ([src, fg, bg]) => {
  const url = URL.createObjectURL(new Blob([src], {type: 'text/javascript'}));
  const m = await import(url);
  const b = m.rgba(bg).slice(0, 3);
  const fixed = m.readable(fg, b);
  return {raw: m.contrast(m.rgba(fg), b), fixed, after: m.contrast(m.rgba(fixed), b)};
}"""


@pytest.mark.parametrize("bg", ["#111111", "rgb(17, 17, 17)"])
def test_dark_theme_raises_dark_lines_to_3_to_1(browser, bg):
    page = browser.new_page()
    try:
        page.goto("about:blank")
        out = page.evaluate(JS, [(ROOT / "widgets" / "plotly_view.js").read_text(), "#333", bg])
    finally:
        page.close()
    raw = contrast("#333", bg)
    assert raw < 3, f"#333 on {bg} should be unreadable raw: {raw:.2f}"  # the check has something to catch
    assert abs(out["raw"] - raw) < 1e-6, (out, raw)
    assert out["fixed"] != "#333" and out["after"] >= 3, out
    assert contrast(out["fixed"], bg) >= 3, out
