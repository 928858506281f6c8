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
from helpers.figcheck import contrast, expect_figures, page_figures, unreadable_lines
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
            req = urllib.request.Request(
                f"{server['url']}/api/sessions/{s['id']}?token={server['token']}", method="DELETE"
            )
            urllib.request.urlopen(req, timeout=5).close()


def menu(page, *labels: str) -> None:
    page.locator(f'.lm-MenuBar-itemLabel:text-is("{labels[0]}")').click()
    for label in labels[1:]:
        page.locator(f'.lm-Menu-itemLabel:text-is("{label}")').click()


def _brightness(color: str) -> float:
    """Mean of r, g, b of a CSS colour as plotly.js reports it (#rrggbb, rgb(), rgba())."""
    import re

    if color.startswith("#") and len(color) == 7:
        return sum(int(color[i : i + 2], 16) for i in (1, 3, 5)) / 3
    nums = [float(v) for v in re.findall(r"[\d.]+", color)[:3]]
    return sum(nums) / 3 if len(nums) == 3 else 0.0


def panel_expected(run_dir, state: dict) -> list:
    """The objective lab's figures, computed here from the state the kernel reports."""

    from tspin_kit import analysis as A
    from tspin_kit import figures as F
    from tspin_kit import load_run
    from tspin_kit import methods as M
    from widgets.alpha_beta import BETA_GRID, ENTROPY_ALPHAS, landscape_scales

    rec = load_run(run_dir)
    s = A.run_settings(rec)
    kind, t, stage = state["kind"], state["iteration"], state["stage"]
    spec = M.get(kind)
    alpha, beta, lam = state["alpha"], state["beta"], state["lam"]
    params = {k: state[k] for k in M.KNOBS if k not in ("alpha", "beta", "lam") and k in state}
    scale = A.loss_scale(kind, alpha, lam, **params)
    beta_used = beta if "beta" in spec.knobs else 0.0
    inputs = A.loss_inputs(rec.examples, t, stage, mask_proto_equal_annotated=s["mask_proto_equal_annotated"])
    table = A.recompute_losses(inputs, kind=kind, alpha=alpha, beta=beta, lam=lam, **params)
    cands = A.candidate_confidences(rec.examples, t, state["example"], stage, alpha_run=A.opponent_alpha(rec))
    landscape = A.loss_landscape(
        inputs, kind=kind, scales=landscape_scales(kind), betas=BETA_GRID, alpha=alpha, lam=lam, **params
    )
    return [
        F.gradient_weights(table, kind=kind, scale=scale, beta=beta_used),
        F.objective_gradients(table, spec.label),
        F.top_drivers(A.top_drivers(table)),
        F.loss_landscape(landscape, kind=kind, scale=scale, beta=beta_used),
        F.opponent(
            A.opponent_table(cands, alpha),
            A.opponent_entropy_curve(cands, ENTROPY_ALPHAS),
            alpha,
            A.opponent_alpha(rec),
        ),
        F.token_entropy({A.run_label(rec): (A.token_entropy_table(rec.metrics, rec.examples), s["method"])}),
    ]


def panel_state(page, previous: dict | None = None, timeout: float = 30) -> dict:
    """The state the kernel computed the panel from; waits until it differs from ``previous``."""
    summary = page.locator("#tspin-loss-summary")
    deadline = time.monotonic() + timeout
    while True:
        state = json.loads(summary.get_attribute("data-state"))
        if state != previous:
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"the panel's state did not change from {previous}")
        time.sleep(0.1)


def select(page, description: str, label: str) -> None:
    page.locator(f'.widget-dropdown:has(label:text-is("{description}")) select >> visible=true').first.select_option(
        label=label
    )


def test_lab_every_panel_control_redraws_every_figure_right(page, lab_server, workspace):
    """Each control of the alpha/beta panel, moved in the page: every figure shows the kernel's numbers."""
    nb = "widgets_lab.ipynb"
    page.goto(f"{lab_server['url']}/lab/tree/{nb}?token={lab_server['token']}")
    expect(page.locator(".jp-NotebookPanel")).to_be_visible(timeout=60_000)
    wait_kernel_idle(page, lab_server, nb)
    menu(page, "Run", "Run All Cells")
    summary = page.locator("#tspin-loss-summary")
    expect(summary).to_be_attached(timeout=60_000)
    run_dir = workspace["run_dir"]
    panel_state(page)

    def now():  # the figures of the state the kernel reports now (a slider may still be settling)
        return panel_expected(run_dir, json.loads(summary.get_attribute("data-state")))

    expect_figures(page, now)
    state = json.loads(summary.get_attribute("data-state"))
    assert "alpha = 1" not in page.locator("#tspin-loss-summary").inner_text()

    moves = [
        (
            "alpha",
            lambda: [
                page.locator('.widget-slider:has-text("alpha") .noUi-handle').first.press("ArrowRight")
                for _ in range(4)
            ],
        ),
        (
            "beta",
            lambda: [
                page.locator('.widget-slider:has-text("beta") .noUi-handle').first.press("ArrowRight") for _ in range(5)
            ],
        ),
        ("stage", lambda: page.locator('.widget-toggle-button:has-text("log π_t+1 (after)")').first.click()),
        ("iteration", lambda: select(page, "iteration", "1")),
        (
            "prompt",
            lambda: page.locator('.widget-dropdown:has(label:text-is("prompt #")) select').first.select_option(index=3),
        ),
        ("objective", lambda: select(page, "objective", "SPIN")),
        (
            "lam",
            lambda: [
                page.locator('.widget-slider:has-text("lam") .noUi-handle').first.press("ArrowLeft") for _ in range(6)
            ],
        ),
    ]
    for name, move in moves:
        if name in ("alpha", "beta", "lam"):
            page.locator(f'.widget-slider:has-text("{name}") .noUi-handle').first.focus()
        move()
        state = panel_state(page, state)
        cache: dict = {}

        def current(cache=cache):
            st = json.loads(summary.get_attribute("data-state"))
            key = json.dumps(st, sort_keys=True)
            if key not in cache:
                cache[key] = panel_expected(run_dir, st)
            cache["last"] = st
            return cache[key]

        drawn = expect_figures(page, current)
        state = cache["last"]
        drivers = next(d for d in drawn if d["title"] == "Examples that drive the update most")
        assert drivers["axes"]["yaxis"] == "category", f"after {name}: drivers axis {drivers['axes']['yaxis']}"
        expect(page.locator(".tspin-error")).to_have_count(0)
    assert (
        state["kind"] == "spin"
        and state["iteration"] == 1
        and state["stage"] == "after"
        and state["alpha"] > 1
        and state["beta"] > 0.1
    )

    # layout: the landscape and drivers charts share a row without running past the notebook
    cell = page.locator(".jp-OutputArea-output:has(#tspin-loss-summary)").first.bounding_box()
    for d in page_figures(page):
        assert d["right"] <= cell["x"] + cell["width"] + 1, f"{d['title']} overflows its cell"

    # themes: light screenshots, then JupyterLab Dark: every figure redrawn dark
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lab-light.png"))
    menu(page, "Settings", "Theme", "JupyterLab Dark")
    expect(page.locator("body")).to_have_attribute("data-jp-theme-light", "false")
    page.wait_for_function("() => [...document.querySelectorAll('.tspin-plot')].every(g => g.dataset.theme === 'dark')")
    dark = page_figures(page)
    for d in dark:
        assert d["paper"] not in ("white", "#fff", "#ffffff", "rgb(255, 255, 255)"), d["title"]
        assert _brightness(d["font"]) > 150 > _brightness(d["paper"]), f"{d['title']}: text {d['font']} on {d['paper']}"
    # every line readable on the dark paper (WCAG 3:1 for graphics): the weight curve (#333) and the
    # entropy curve were drawn dark on dark before
    assert not [b for d in dark for b in unreadable_lines(d)], [b for d in dark for b in unreadable_lines(d)]
    weights = next(
        d
        for d in dark
        if d["title"].startswith("Gradient weights") or any(t["name"] == "weight curve" for t in d["traces"])
    )
    curve = next(t for t in weights["traces"] if t["name"] == "weight curve")
    assert contrast(curve["line"], weights["paper"]) >= 3, curve["line"]
    page.screenshot(path=str(ARTIFACTS / "lab-dark.png"))
    menu(page, "Settings", "Theme", "JupyterLab Light")
    expect(page.locator("body")).to_have_attribute("data-jp-theme-light", "true")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.tspin-plot')].every(g => g.dataset.theme === 'light')"
    )
    expect(page.locator(".tspin-error")).to_have_count(0)
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
    page.wait_for_function(
        "() => { const l = document.querySelector('.js-plotly-plot').layout; "
        f"return l.shapes && l.shapes[0].x0 === {target}; }}"
    )
    assert page.evaluate("() => document.querySelector('.js-plotly-plot').data.length") >= 2
    expect(page.locator(".tspin-error")).to_have_count(0)
    shot(page, "voila-dashboard")


def tab(page, title: str) -> None:
    page.locator(f'.lm-TabBar-tab:has-text("{title}")').first.click()


def test_voila_workshop_dashboard_every_tab_every_control(page, workshop_server, console):
    """The workshop dashboard as served by ``make dashboard``: 4 tabs, every control moved once,
    two Whole-step clicks in a row each run their step, no console error, no CDN request."""
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    t0 = time.monotonic()
    page.goto(workshop_server["url"] + "/", timeout=90_000)
    status = page.locator("#tspin-status")
    expect(status).to_contain_text("ready", timeout=90_000)
    first_render_s = time.monotonic() - t0
    (ARTIFACTS).mkdir(exist_ok=True)
    (ARTIFACTS / "voila-first-render.txt").write_text(f"{first_render_s:.1f} s\n")
    # a guard against "never renders" (issue 8: 7 min): 60 s holds under the flake runs' two busy loops; the 10 s target
    # is measured on a quiet machine by benchmarks/bench_voila.py (results in benchmarks/results/)
    assert first_render_s <= 60, f"first render took {first_render_s:.1f} s"

    # Live run: Prepare, then Whole step twice in a row: both steps run
    page.locator("button:has-text('Prepare')").click()
    expect(status).to_contain_text("prepare done", timeout=60_000)
    hint = page.locator("#tspin-iteration-hint")
    expect(hint).to_have_attribute("data-count", "0")
    step = page.locator("button:has-text('Whole step')")
    step.click()
    # wait for the first step to have ended, not just for an enabled button: under load the check could pass
    # before the kernel had even disabled it, and the next click then hit a disabled button (a flake seen in 1
    # of 13 loaded runs)
    expect(page.locator("#tspin-iteration-summary")).to_have_attribute("data-iteration", "0", timeout=120_000)
    expect(step).to_be_enabled(timeout=60_000)  # re-enabled only once the step has really ended
    step.click()  # the second click right after "done" (issue 8, item 3): it must run too
    expect(page.locator("#tspin-iteration-summary")).to_have_attribute("data-iteration", "1", timeout=120_000)
    expect(status).to_contain_text("step done", timeout=60_000)
    expect(hint).to_have_attribute("data-count", "2")
    handle = page.locator('.widget-slider:has-text("iteration") .noUi-handle').first
    handle.focus()
    handle.press("ArrowLeft")
    expect(page.locator("#tspin-iteration-summary")).to_have_attribute("data-iteration", "0")
    score = next(d for d in page_figures(page) if d["title"].startswith("Task score"))
    assert score["axes"]["yaxis"] == "linear" and len(score["traces"][0]["x"]) == 3  # pi_0, pi_1, pi_2

    # Triplets: every filter shows "any"; move each control once
    tab(page, "Triplets")
    for d in ("y' is", "y' == y", "y0 == y"):
        sel = page.locator(f'.widget-dropdown:has(label:text-is("{d}")) select').first
        expect(sel).to_be_visible()
        assert sel.evaluate("s => s.options[s.selectedIndex] && s.options[s.selectedIndex].text") == "any"
    count = page.locator("#tspin-triplet-table")
    expect(count).to_be_attached()
    select(page, "y' == y", "no")
    select(page, "sort by", "loss")
    page.locator('.widget-checkbox:has-text("descending") input').first.check()
    page.locator('.widget-toggle-button:has-text("after training")').first.click()
    select(page, "iteration", "0")
    expect(page.locator("#tspin-triplet-detail")).to_contain_text("iteration 0")

    # Advantages: stage and iteration
    tab(page, "Advantages")
    page.locator('.widget-toggle-button:has-text("after training (π_t+1)")').first.click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.tspin-plot')].some(g => g.offsetParent && g._fullLayout"
        " && g._fullLayout.title.text.includes('after training'))"
    )
    select(page, "iteration", "0")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.tspin-plot')].some(g => g.offsetParent && g._fullLayout"
        " && g._fullLayout.title.text.endsWith('iteration 0'))"
    )

    # alpha / beta: sliders move every figure; the drivers chart keeps its category axis
    tab(page, "alpha / beta / entropy")
    summary = page.locator("#tspin-loss-summary")
    expect(summary).to_be_visible()
    for name, key in (("alpha", "ArrowRight"), ("beta", "ArrowRight")):
        before = summary.get_attribute("data-state")
        h = page.locator(f'.widget-slider:has-text("{name}") .noUi-handle').first
        h.focus()
        h.press(key)
        expect(summary).not_to_have_attribute("data-state", before)
        state = json.loads(summary.get_attribute("data-state"))
        label = f"α = {state['alpha']:.3g}, β = {state['beta']:.3g}"
        page.wait_for_function(
            "label => [...document.querySelectorAll('.tspin-plot')].some(g => g.offsetParent && g._fullLayout"
            " && g._fullLayout.title.text.includes(label))",
            arg=label,
        )
        drivers = next(d for d in page_figures(page) if d["title"] == "Examples that drive the update most")
        assert drivers["axes"]["yaxis"] == "category"
    select(page, "objective", "T-SPIN_ref")
    select(page, "iteration", "0")

    expect(page.locator(".tspin-error")).to_have_count(0)
    errors = [m for m in console if m.startswith(("error", "pageerror")) or "Failed to initialize" in m]
    assert not errors, errors
    assert not [
        u for u in requests if not u.startswith(workshop_server["url"]) and not u.startswith(("data:", "blob:"))
    ], "requests left the machine"
    if os.environ.get("TSPIN_SCREENSHOTS"):
        page.screenshot(path=str(ARTIFACTS / "voila-workshop.png"), full_page=True)
