"""The workshop notebooks themselves in a real JupyterLab (chromium): 00-04 and the 3 exercises.

Each test opens a copy of the notebook in one shared Lab server (smoke mode, ``TSPIN_SMOKE=1``),
runs all cells from the menu, checks that every code cell ran and none shows an error, then moves
every control of every widget once. After each move the figures drawn in that cell (plotly.js's
``_fullLayout`` / ``_fullData``, read by ``figcheck``) must match the figures of a *mirror*: the same
widget built here, in the test process, on the same runs (the notebook's kernel wrote them into
``TSPIN_RUNS``; ``presets`` reloads them), with the same control moved to the same value. A
control that is not wired in the page, or a figure that does not follow it, fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from helpers.figcheck import expect_figures
from playwright.sync_api import expect

from .conftest import ROOT, lab
from .test_browser import delete_sessions, menu, wait_kernel_idle

pytestmark = pytest.mark.browser

NOTEBOOKS = ROOT / "notebooks"
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"
ALL_RAN_JS = """() => {
  const ps = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')]
    .map(p => p.textContent.trim());
  return ps.length > 0 && !ps.some(p => p.includes('*')) && /\\[\\d+\\]/.test(ps[0]);
}"""


@pytest.fixture(scope="module")
def smoke_lab(workspace, tmp_path_factory):
    """One JupyterLab for the module, on a copy of notebooks/ in smoke mode, and the same
    TSPIN_* settings in this process (for the mirrors)."""
    base = tmp_path_factory.mktemp("lab_notebooks")
    work = base / "notebooks"
    shutil.copytree(NOTEBOOKS, work, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "runs"))
    settings = {
        "TSPIN_SMOKE": "1",
        "TSPIN_PROGRESS": "0",
        "TSPIN_RUNS": str(base / "runs"),
        "TSPIN_CACHE": str(base / "cache"),
    }
    env = dict(workspace["env"], **settings)
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        for server in lab(workspace, work, env, name="lab-notebooks"):
            yield dict(server, work=work)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_all(page, server, nb: str) -> nbformat.NotebookNode:
    """Open ``nb`` (relative to the server root), run all cells, wait until they ran; no cell errors."""
    # ?reset: a fresh workspace, so the notebooks a previous test opened on this server stay closed
    page.goto(f"{server['url']}/lab/tree/{nb}?reset&token={server['token']}")
    expect(page.locator(PANEL)).to_have_count(1, timeout=60_000)
    expect(page.locator(PANEL)).to_be_visible(timeout=60_000)
    wait_kernel_idle(page, server, Path(nb).name)
    menu(page, "Run", "Run All Cells")
    page.wait_for_function(ALL_RAN_JS, timeout=240_000, polling=250)
    wait_kernel_idle(page, server, Path(nb).name, timeout=120)
    prompts = page.locator(f"{PANEL} .jp-CodeCell .jp-InputPrompt").all_text_contents()
    assert prompts and all(re.search(r"\[\d+\]", p) for p in prompts), f"{nb}: not every code cell ran: {prompts}"
    outputs = "\n".join(page.locator(f"{PANEL} .jp-OutputArea-output").all_text_contents())
    assert "Traceback (most recent call last)" not in outputs, f"{nb}: a cell raised:\n{outputs[-3000:]}"
    expect(page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')).to_have_count(0)
    expect(page.locator(".tspin-error")).to_have_count(0)
    return nbformat.read(NOTEBOOKS / nb, as_version=4)


def cell(page, nb: nbformat.NotebookNode, source: str):
    """The notebook cell whose code contains ``source`` (with its outputs), scrolled into view."""
    idx = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and source in c.source]
    assert len(idx) == 1, f"{source!r} found in cells {idx}"
    loc = page.locator(f"{PANEL} .jp-Notebook .jp-Cell").nth(idx[0])
    loc.scroll_into_view_if_needed()
    return loc


def figures_of(widget) -> list:
    return [s.figure for s in widget._slots.values() if s.figure is not None]


def check(page, where, mirror, after: str) -> None:
    try:
        expect_figures(page, lambda: figures_of(mirror), within=where)
    except AssertionError as e:
        raise AssertionError(f"after {after}: {e}") from None
    expect(where.locator(".tspin-error")).to_have_count(0)


def select(where, description: str, label: str | None = None, index: int | None = None) -> None:
    sel = where.locator(f'.widget-dropdown:has(label:text-is("{description}")) select').first
    sel.select_option(label=label) if label is not None else sel.select_option(index=index)


def select_many(where, description: str, labels: list[str]) -> None:
    where.locator(f'.widget-select:has(label:text-is("{description}")) select').first.select_option(label=labels)


def toggle(where, label: str) -> None:
    where.locator(f'.widget-toggle-button:has-text("{label}")').first.click()


def readout(where, description: str) -> tuple[float, ...]:
    box = where.locator(f'.widget-slider:has(label:text-is("{description}")) .widget-readout').first
    text = box.text_content() if box.evaluate("e => e.tagName") != "INPUT" else box.input_value()
    return tuple(float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", text.replace("–", " ")))


# -- the widgets, moved one control at a time ------------------------------------------------------


def drive_triplet_browser(page, where, mirror) -> None:
    """Every control of a TripletBrowser: iteration, stage, u/v ranges, 3 filters, sort, order, triplet."""
    check(page, where, mirror, "run all")
    iters = list(mirror.iteration.options)
    other = next(t for t in iters if t != mirror.iteration.value)
    select(where, "iteration", str(other))
    mirror.iteration.value = other
    check(page, where, mirror, "iteration")
    toggle(where, "after training")
    mirror.stage.value = "after"
    check(page, where, mirror, "stage")
    for name, w in (("u range", mirror.current), ("v range", mirror.historical)):
        handle = where.locator(f'.widget-slider:has(label:text-is("{name}")) .noUi-handle').first
        handle.focus()
        handle.press("ArrowRight")  # the lower bound up one step
        lo = round(w.value[0] + w.step, 6)
        expect(where.locator(f'.widget-slider:has(label:text-is("{name}")) .widget-readout').first).not_to_have_text(
            re.compile(rf"^{re.escape(f'{w.value[0]:.1f}')}\b")
        )
        w.value = (lo, w.value[1])
        check(page, where, mirror, name)
    for desc, label, w, value in (
        ("y' is", "incorrect", mirror.correct, "incorrect"),
        ("y' == y", "no", mirror.synthetic_equals_annotated, "no"),
        ("y0 == y", "no", mirror.proto_equals_annotated, "no"),
        ("sort by", None, mirror.sort_by, None),
    ):
        if label is None:  # sort by: the next option
            opts = list(mirror.sort_by.options)
            k = next(i for i, (_, v) in enumerate(opts) if v == mirror.sort_by.value)
            label, value = opts[(k + 1) % len(opts)]
        select(where, desc, label)
        w.value = value
        check(page, where, mirror, desc)
    where.locator('.widget-checkbox:has-text("descending") input').first.check()
    mirror.descending.value = True
    check(page, where, mirror, "descending")
    options = list(mirror.example.options)
    assert len(options) >= 2, f"too few triplets left to switch: {options}"
    k = next(i for i, (_, v) in enumerate(options) if v != mirror.example.value)
    select(where, "triplet", index=k)
    mirror.example.value = options[k][1]
    expect(where.locator("#tspin-triplet-detail")).to_contain_text(f"example {options[k][1]}, iteration")
    check(page, where, mirror, "triplet")


def drive_run_comparison(page, where, mirror) -> None:
    check(page, where, mirror, "run all")
    runs = list(mirror.run_select.options)
    keep = runs[:-1] if len(runs) > 1 else runs
    select_many(where, "runs", keep)
    mirror.run_select.value = tuple(keep)
    check(page, where, mirror, "runs")
    opts = list(mirror.metric_select.options)
    chosen = [opts[0], opts[-1]] if opts[-1][1] not in mirror.metric_select.value else [opts[1], opts[2]]
    select_many(where, "metrics", [label for label, _ in chosen])
    mirror.metric_select.value = tuple(v for _, v in chosen)
    check(page, where, mirror, "metrics")
    expect(where.locator("#tspin-comparison-table")).to_be_attached()


def drive_advantage_decay(page, where, mirror) -> None:
    check(page, where, mirror, "run all")
    toggle(where, "after training (π_t+1)")
    mirror.stage.value = "after"
    check(page, where, mirror, "stage")
    other = next(t for t in mirror.iteration.options if t != mirror.iteration.value)
    select(where, "iteration", str(other))
    mirror.iteration.value = other
    check(page, where, mirror, "iteration")


def drive_alpha_beta(page, where, mirror) -> None:
    summary = where.locator("#tspin-loss-summary")

    def sync():  # the kernel's state (the sliders' values as the kernel got them) into the mirror
        st = json.loads(summary.get_attribute("data-state"))
        for name in ("iteration", "kind", "stage", "alpha", "beta", "lam", "example"):
            w = getattr(mirror, name)
            if w.value != st[name]:
                w.value = st[name]
        return figures_of(mirror)

    def moved(name, act):
        before = summary.get_attribute("data-state")
        act()
        expect(summary).not_to_have_attribute("data-state", before)
        try:
            expect_figures(page, sync, within=where)
        except AssertionError as e:
            raise AssertionError(f"after {name}: {e}") from None
        expect(where.locator(".tspin-error")).to_have_count(0)

    expect_figures(page, sync, within=where)

    def key(name, k, n):
        h = where.locator(f'.widget-slider:has-text("{name}") .noUi-handle').first
        h.focus()
        for _ in range(n):
            h.press(k)

    moved("alpha", lambda: key("alpha", "ArrowRight", 3))
    moved("beta", lambda: key("beta", "ArrowRight", 4))
    moved("stage", lambda: toggle(where, "log π_t+1 (after)"))
    other = next(t for t in mirror.iteration.options if t != mirror.iteration.value)
    moved("iteration", lambda: select(where, "iteration", str(other)))
    moved("prompt", lambda: select(where, "prompt #", index=1 if mirror.example.index != 1 else 2))
    moved("objective", lambda: select(where, "objective", "SPIN"))
    moved("lam", lambda: key("lam", "ArrowLeft", 5))  # lam is SPIN's (disabled for T-SPIN)
    st = json.loads(summary.get_attribute("data-state"))
    assert st["kind"] == "spin" and st["stage"] == "after" and st["iteration"] == other, st


# -- the notebooks ---------------------------------------------------------------------------------


def test_lab_00_quickstart(page, smoke_lab, console):
    """The quickstart: the run comparison follows its controls; the live dashboard at the end (one iteration
    done by the cell) runs the second iteration when Whole step is clicked, and its iteration slider then moves
    (two clicks in a row are the Voila dashboard test's)."""
    import widgets
    from tspin_kit import presets

    nb = run_all(page, smoke_lab, "00_quickstart.ipynb")
    runs = presets.run_toy_methods(["sft", "spin", "tspin"], smoke=True)
    drive_run_comparison(page, cell(page, nb, "widgets.RunComparison(runs)"), widgets.RunComparison(runs))
    live = cell(page, nb, "widgets.Dashboard(session)")
    summary = live.locator("#tspin-iteration-summary")
    expect(summary).to_have_attribute("data-iteration", "0", timeout=60_000)  # the cell ran prepare() + step()
    step = live.locator("button:has-text('Whole step')")
    expect(step).to_be_enabled(timeout=60_000)
    hint = live.locator("#tspin-iteration-hint")
    expect(hint).to_have_attribute("data-count", "1")
    step.click()
    expect(hint).to_have_attribute("data-count", "2", timeout=180_000)
    expect(summary).to_have_attribute("data-iteration", "1", timeout=60_000)
    handle = live.locator('.widget-slider:has-text("iteration") .noUi-handle').first
    handle.focus()
    handle.press("ArrowLeft")
    expect(summary).to_have_attribute("data-iteration", "0")
    expect(live.locator(".tspin-error")).to_have_count(0)
    delete_sessions(smoke_lab)


def test_lab_01_triplets(page, smoke_lab, console):
    import widgets
    from tspin_kit import presets

    nb = run_all(page, smoke_lab, "01_triplets.ipynb")
    run = presets.run_toy(presets.toy_config("tspin", smoke=True))
    drive_triplet_browser(
        page, cell(page, nb, "widgets.TripletBrowser(run, iteration=t)"), widgets.TripletBrowser(run, iteration=1)
    )
    delete_sessions(smoke_lab)


def test_lab_02_vanishing_advantages(page, smoke_lab, console):
    import widgets
    from tspin_kit import presets

    nb = run_all(page, smoke_lab, "02_vanishing_advantages.ipynb")
    runs = presets.run_toy_methods(["sft", "spin", "tspin", "tspin_no_history"], seeds=(0, 1), smoke=True)
    drive_run_comparison(page, cell(page, nb, "widgets.RunComparison(runs)"), widgets.RunComparison(runs))
    seed0 = {label.removesuffix(" s0"): r for label, r in runs.items() if label.endswith(" s0")}
    drive_advantage_decay(page, cell(page, nb, "widgets.AdvantageDecay(seed0)"), widgets.AdvantageDecay(seed0))
    long_runs = presets.run_toy_methods(["sft", "spin", "tspin"], iterations=2, smoke=True)
    drive_advantage_decay(page, cell(page, nb, "widgets.AdvantageDecay(long_runs)"), widgets.AdvantageDecay(long_runs))
    delete_sessions(smoke_lab)


def test_lab_03_alpha_and_entropy(page, smoke_lab, console):
    import widgets
    from tspin_kit import presets

    nb = run_all(page, smoke_lab, "03_alpha_and_entropy.ipynb")
    run = presets.run_toy(presets.toy_config("tspin", smoke=True))
    drive_alpha_beta(page, cell(page, nb, "widgets.AlphaBetaPanel(run)"), widgets.AlphaBetaPanel(run))
    beta_runs = {
        "T-SPIN, beta = 0.1": run,
        "T-SPIN, beta = 1": presets.run_toy(
            presets.toy_config("tspin", smoke=True, method={"beta": 1.0}, name="tspin-beta1")
        ),
        "T-SPIN, beta = 1, masked where y0 == y": presets.run_toy(
            presets.toy_config(
                "tspin", smoke=True, method={"beta": 1.0, "mask_proto_equal_annotated": True}, name="tspin-beta1-masked"
            )
        ),
    }
    mirror = widgets.RunComparison(beta_runs, metrics=("score", "historical_advantage_mean", "token_entropy"))
    drive_run_comparison(page, cell(page, nb, "widgets.RunComparison(beta_runs"), mirror)
    delete_sessions(smoke_lab)


def test_lab_04_data_scarcity(page, smoke_lab, console):
    import widgets
    from tspin_kit import presets

    nb = run_all(page, smoke_lab, "04_data_scarcity.ipynb")
    quarter = presets.toy_config("tspin", smoke=True)
    N = quarter.data.num_examples
    runs = {
        f"T-SPIN on {N} pairs": presets.run_toy(quarter),
        f"SFT on the same {N} pairs": presets.run_toy(presets.toy_config("sft", smoke=True)),
        f"SFT on all {4 * N} pairs": presets.run_toy(
            presets.toy_config("sft", smoke=True, data={"num_examples": 4 * N}, name="sft-4x")
        ),
    }
    drive_run_comparison(page, cell(page, nb, "widgets.RunComparison(runs)"), widgets.RunComparison(runs))
    delete_sessions(smoke_lab)


@pytest.mark.parametrize("exercise", ["ex1_tspin_loss", "ex2_drivers", "ex3_tune_alpha"])
def test_lab_workshop_exercise(page, smoke_lab, console, exercise):
    """An exercise as handed out (blanks in place): every cell runs, the check says "not done yet"
    (the blank's NotImplementedError is caught by the check, not shown as a cell error); ex2's
    triplet browser follows every control."""
    nb = run_all(page, smoke_lab, f"workshop/{exercise}.ipynb")
    result = cell(page, nb, "result = check_")
    expect(result.locator(".jp-OutputArea-output")).to_contain_text("not done yet")
    if exercise == "ex2_drivers":
        import widgets
        from tspin_kit import analysis as A
        from tspin_kit import presets

        run = presets.run_toy(presets.toy_config("tspin", smoke=True))
        mirror = widgets.TripletBrowser(run, iteration=A.iterations_of(run.examples)[-1])
        drive_triplet_browser(page, cell(page, nb, "widgets.TripletBrowser(run, iteration=t)"), mirror)
    delete_sessions(smoke_lab)
