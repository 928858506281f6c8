"""Real-browser tests: JupyterLab and Voila in Debian chromium, driven by Playwright.

Headless nbclient runs prove only the Python side (a slider not wired to its callback passes
them); these click and type in a real page and read the plotly graph divs.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PLOTS_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(
    el => JSON.stringify((el.data || []).map(t => [t.x, t.y, t.z])) + JSON.stringify(el.layout && el.layout.title))"""


def shot(page, name: str, selector: str | None = None) -> None:
    """Keep named screenshots when TSPIN_SCREENSHOTS is set (looking at themes by eye).

    With ``selector``, one screenshot per matching element (a notebook scrolls inside its panel,
    so a page screenshot shows only the top of it).
    """
    if not os.environ.get("TSPIN_SCREENSHOTS"):
        return
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    if selector:
        for i, el in enumerate(page.locator(selector).all()):
            el.screenshot(path=str(ARTIFACTS / f"{name}-{i}.png"))


def wait_kernel_idle(page, server, notebook: str, timeout: float = 60) -> None:
    """Poll /api/sessions until the notebook's kernel is idle; accept a Select Kernel dialog if shown."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dialog = page.locator(".jp-Dialog .jp-mod-accept")
        if dialog.count():
            dialog.first.click()
        with urllib.request.urlopen(f"{server['url']}/api/sessions?token={server['token']}", timeout=5) as r:
            sessions = json.load(r)
        for s in sessions:
            if s.get("path", "").endswith(notebook) and s.get("kernel", {}).get("execution_state") == "idle":
                return
        time.sleep(0.3)
    raise TimeoutError(f"kernel of {notebook} not idle after {timeout} s")


def delete_sessions(server) -> None:
    with urllib.request.urlopen(f"{server['url']}/api/sessions?token={server['token']}", timeout=5) as r:
        for s in json.load(r):
            req = urllib.request.Request(f"{server['url']}/api/sessions/{s['id']}?token={server['token']}", method="DELETE")
            urllib.request.urlopen(req, timeout=5).close()


def menu(page, *labels: str) -> None:
    page.locator(f'.lm-MenuBar-itemLabel:text-is("{labels[0]}")').click()
    for label in labels[1:]:
        page.locator(f'.lm-Menu-itemLabel:text-is("{label}")').click()


def test_lab_alpha_slider_changes_the_figures(page, lab_server):
    nb = "widgets_lab.ipynb"
    page.goto(f"{lab_server['url']}/lab/tree/{nb}?token={lab_server['token']}")
    expect(page.locator(".jp-NotebookPanel")).to_be_visible(timeout=60_000)
    wait_kernel_idle(page, lab_server, nb)
    menu(page, "Run", "Run All Cells")

    summary = page.locator("#tspin-loss-summary")
    expect(summary).to_be_attached(timeout=60_000)
    handle = page.locator('.widget-slider:has-text("alpha") .noUi-handle').first
    expect(handle).to_be_visible()
    expect(page.locator(".js-plotly-plot").first).to_be_visible()
    # every FigureWidget of both widgets drawn: 5 in the panel, 2 in the triplet browser
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 7", timeout=60_000)
    expect(page.locator("#tspin-triplet-detail")).to_be_attached()
    expect(page.locator(".tspin-error")).to_have_count(0)
    alpha0 = summary.get_attribute("data-alpha")
    loss0 = summary.get_attribute("data-loss")
    before = page.evaluate(PLOTS_JS)
    shot(page, "lab-light", ".jp-OutputArea-output:has(.widget-box)")

    handle.focus()
    for _ in range(5):
        handle.press("ArrowRight")
    expect(summary).not_to_have_attribute("data-alpha", alpha0)
    assert float(summary.get_attribute("data-alpha")) > float(alpha0)
    assert summary.get_attribute("data-loss") != loss0
    page.wait_for_function(f"() => ({PLOTS_JS})().filter((s, i) => s !== {json.dumps(before)}[i]).length >= 4")
    after = page.evaluate(PLOTS_JS)
    changed = sum(a != b for a, b in zip(before, after))
    assert changed >= 4, f"only {changed} figures changed after moving alpha"
    expect(page.locator(".tspin-error")).to_have_count(0)

    # dark theme: the widgets still render, the figures keep their own white card
    menu(page, "Settings", "Theme", "JupyterLab Dark")
    expect(page.locator("body")).to_have_attribute("data-jp-theme-light", "false")
    assert page.locator(".js-plotly-plot").count() >= 7
    bg = page.evaluate("() => getComputedStyle(document.querySelector('.js-plotly-plot .main-svg')).backgroundColor")
    assert bg in ("rgb(255, 255, 255)", "rgba(0, 0, 0, 0)")
    shot(page, "lab-dark", ".jp-OutputArea-output:has(.widget-box)")
    menu(page, "Settings", "Theme", "JupyterLab Light")
    expect(page.locator("body")).to_have_attribute("data-jp-theme-light", "true")
    delete_sessions(lab_server)


def test_voila_dashboard_iteration_slider(page, voila_server):
    page.goto(voila_server["url"] + "/", timeout=90_000)
    summary = page.locator("#tspin-iteration-summary")
    expect(summary).to_be_attached(timeout=90_000)
    expect(page.locator("#tspin-settings")).to_contain_text("T-SPIN")
    expect(page.locator("#tspin-status")).to_contain_text("read-only")
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 2", timeout=60_000)
    start = int(summary.get_attribute("data-iteration"))
    handle = page.locator('.widget-slider:has-text("iteration") .noUi-handle').first
    handle.focus()
    handle.press("ArrowLeft" if start > 0 else "ArrowRight")
    target = start - 1 if start > 0 else start + 1
    expect(summary).to_have_attribute("data-iteration", str(target))
    # the advantage-decay marker follows the slider
    page.wait_for_function(f"() => {{ const l = document.querySelector('.js-plotly-plot').layout; return l.shapes && l.shapes[0].x0 === {target}; }}")
    assert page.evaluate("() => document.querySelector('.js-plotly-plot').data.length") >= 2
    expect(page.locator(".tspin-error")).to_have_count(0)
    shot(page, "voila-dashboard")
