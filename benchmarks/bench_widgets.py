"""Widget speed with 50,000 cached triplets (a benchmark, not a timed test).

Targets from the widgets issue: moving alpha or beta recomputes every dependent figure in under
50 ms (compute side), switching iteration in under 200 ms, opening a run directory of 5
iterations in under 2 s. "Compute side" = everything in the kernel: the analysis tables, the
figures and the FigureWidget updates (no browser attached, so no rendering or transport).

The run directory is made by ``tspin_kit.synthetic`` (5 iterations x 10,000 triplets, with
per-token log-prob lists) in the store's layout and read with the engine's ``load_run``. A second
case puts all 50,000 triplets in one iteration, so a slider recomputes 50,000 examples at once.

    python benchmarks/bench_widgets.py [--repeats 7] [--quick] [--json out.json]

Prints one line of JSON first (with "machine" and "targets", each target {"target", "value", "met"}),
then a table, the machine line and the met flags. Each number is the median of ``--repeats`` runs.
Triplet table rows (``widgets/table_view.py``): a header click on a column not sorted before (sort
cache dropped), a search (first one also builds the text index), a page click, a row click that
opens the triplet's detail; all in the kernel, the page of 25 formatted rows included.
"Widget" timings include serialising every redrawn figure to the JSON the browser receives
(``widgets.plotly_view.PlotlyView.show``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _common as C
import numpy as np

import widgets as Wd
from tspin_kit import analysis as A
from tspin_kit import figures as F
from tspin_kit import load_run
from tspin_kit.synthetic import build_records, write_run_dir

TARGETS_MS = {"slider": 50.0, "iteration": 200.0, "open": 2000.0, "table": 100.0}


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def cycle(values):
    state = {"i": 0}

    def nxt():
        state["i"] = (state["i"] + 1) % len(values)
        return values[state["i"]]

    return nxt


def slider_compute(inputs, candidates, landscape, alpha, beta):
    """What one alpha move computes, without widgets: tables and the five figures, as the panel builds them
    (plain figure dicts, ``figures.figure_specs``), not sent anywhere."""
    table = A.recompute_losses(inputs, kind="tspin", alpha=alpha, beta=beta)
    A.loss_summary(table)
    top = A.top_drivers(table)
    with F.figure_specs():
        F.gradient_weights(table, kind="tspin", scale=alpha, beta=beta)
        F.objective_gradients(table, "T-SPIN")
        F.top_drivers(top)
        F.loss_landscape(landscape, kind="tspin", scale=alpha, beta=beta)
        F.opponent(
            A.opponent_table(candidates, alpha),
            A.opponent_entropy_curve(candidates, np.geomspace(0.05, 20.0, 60)),
            alpha,
        )


def bench_case(name: str, records, run_dir: Path, repeats: int) -> dict:
    out: dict = {"case": name, "triplets": len(records.examples), "iterations": len(A.iterations_of(records.examples))}
    iters = A.iterations_of(records.examples)
    last = iters[-1]

    # opening a run directory
    out["open_load_run_ms"] = median_ms(lambda: load_run(run_dir), repeats)
    out["open_dashboard_ms"] = median_ms(lambda: Wd.Dashboard(str(run_dir)), repeats)
    out["open_alpha_beta_panel_ms"] = median_ms(lambda: Wd.AlphaBetaPanel(str(run_dir)), repeats)
    out["open_triplet_browser_ms"] = median_ms(lambda: Wd.TripletBrowser(str(run_dir)), repeats)

    # alpha / beta: compute only, then through the widget (FigureWidget updates included)
    inputs = A.loss_inputs(records.examples, last, "before")
    candidates = A.candidate_confidences(
        records.examples, last, int(records.examples["example_id"].iloc[0]), alpha_run=A.opponent_alpha(records)
    )
    landscape = A.loss_landscape(inputs, kind="tspin", scales=np.geomspace(0.05, 5, 25), betas=np.linspace(0, 1, 21))
    alphas = cycle([0.3, 0.5, 0.8, 1.3, 2.0])
    betas = cycle([0.05, 0.2, 0.4, 0.6])
    out["examples_per_iteration"] = len(inputs)
    out["alpha_compute_ms"] = median_ms(lambda: slider_compute(inputs, candidates, landscape, alphas(), 0.1), repeats)
    panel = Wd.AlphaBetaPanel(records)
    out["alpha_widget_ms"] = median_ms(lambda: setattr(panel.alpha, "value", alphas()), repeats)
    out["beta_widget_ms"] = median_ms(lambda: setattr(panel.beta, "value", betas()), repeats)
    assert not panel.errors.errors, panel.errors.errors

    # the triplet table (widgets/table_view.py) over every triplet of the last iteration: what one
    # header click, search keystroke burst or page click costs in the kernel, page sent included
    tbl = Wd.TripletBrowser(records)
    g = tbl.grid
    out["table_rows"] = g.n_total
    sorts = cycle([("loss", False), ("loss", True), ("reward_margin", False), ("historical_advantage", True)])

    def sort_fresh():  # a column not sorted before: the argsort itself (the cache is dropped)
        g._order.clear()
        g.sort_by, g.descending = sorts()

    out["table_sort_numeric_ms"] = median_ms(sort_fresh, repeats)
    texts = cycle([("synthetic", False), ("prompt", True), ("annotated", False)])

    def sort_text():
        g._order.clear()
        g.sort_by, g.descending = texts()

    out["table_sort_text_ms"] = median_ms(sort_text, repeats)
    g.sort_by, g.descending = "current_advantage", False
    words = [str(v) for v in records.examples["prompt"].iloc[:50:7]]
    queries = cycle(words)

    def search_first():  # the first search after new data: the text index was built by set_data
        g._mask = None
        g.query = queries()

    out["table_set_data_ms"] = median_ms(lambda: g.set_data(g.df), repeats)  # incl. the search index

    out["table_search_first_ms"] = median_ms(search_first, repeats)
    out["table_search_ms"] = median_ms(lambda: setattr(g, "query", queries()), repeats)
    g.query = ""
    pages = cycle([1, 500, 1000, 1500, 1999, 7])
    out["table_page_ms"] = median_ms(lambda: setattr(g, "page", min(pages(), g.n_pages - 1)), repeats)
    out["table_row_click_ms"] = median_ms(lambda: g.click_row(g.rows[len(g.rows) // 2]["key"]), repeats)
    assert not tbl.errors.errors, tbl.errors.errors

    # switching iteration (every widget that has an iteration control)
    if len(iters) > 1:
        its = cycle(iters)
        out["iteration_alpha_beta_panel_ms"] = median_ms(lambda: setattr(panel.iteration, "value", its()), repeats)
        tb = Wd.TripletBrowser(records)
        out["iteration_triplet_browser_ms"] = median_ms(lambda: setattr(tb.iteration, "value", its()), repeats)
        dash = Wd.Dashboard(records)
        out["iteration_dashboard_ms"] = median_ms(lambda: setattr(dash.iteration, "value", its()), repeats)
        assert not tb.errors.errors and not dash.errors.errors
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="CI smoke: 2 repeats")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = 2

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        five = build_records("tspin", n_examples=10_000, n_iterations=5, seed=0)
        one = build_records("tspin", n_examples=50_000, n_iterations=1, seed=1, token_lists=False)
        build_s = time.perf_counter() - t0
        results.append(bench_case("5 iterations x 10,000", five, write_run_dir(five, Path(tmp) / "five"), args.repeats))
        results.append(bench_case("1 iteration x 50,000", one, write_run_dir(one, Path(tmp) / "one"), args.repeats))

    one_case = results[-1]
    targets = [
        C.target(
            "alpha move, widget, 50k triplets in one iteration (ms)",
            one_case["alpha_widget_ms"],
            "<=",
            TARGETS_MS["slider"],
        ),
        C.target(
            "beta move, widget, 50k triplets in one iteration (ms)",
            one_case["beta_widget_ms"],
            "<=",
            TARGETS_MS["slider"],
        ),
    ]
    for key in (
        "table_sort_numeric_ms",
        "table_sort_text_ms",
        "table_search_first_ms",
        "table_search_ms",
        "table_page_ms",
        "table_row_click_ms",
    ):
        targets.append(C.target(f"triplet table: {key} [{one_case['case']}]", one_case[key], "<=", TARGETS_MS["table"]))
    for r in results:
        for key in ("iteration_alpha_beta_panel_ms", "iteration_triplet_browser_ms", "iteration_dashboard_ms"):
            if key in r:
                targets.append(C.target(f"{key} [{r['case']}]", r[key], "<=", TARGETS_MS["iteration"]))
        targets.append(C.target(f"open_dashboard_ms [{r['case']}]", r["open_dashboard_ms"], "<=", TARGETS_MS["open"]))
    report = {
        "machine": C.machine_info(),
        "repeats": args.repeats,
        "targets_ms": TARGETS_MS,
        "records_build_s": round(build_s, 1),
        "results": results,
        "targets": targets,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))

    rows = [
        ("open: load_run", "open_load_run_ms", "open"),
        ("open: Dashboard(run_dir)", "open_dashboard_ms", "open"),
        ("open: AlphaBetaPanel(run_dir)", "open_alpha_beta_panel_ms", "open"),
        ("open: TripletBrowser(run_dir)", "open_triplet_browser_ms", "open"),
        ("alpha move, compute only", "alpha_compute_ms", "slider"),
        ("alpha move, widget", "alpha_widget_ms", "slider"),
        ("beta move, widget", "beta_widget_ms", "slider"),
        ("table: sort, numeric column", "table_sort_numeric_ms", "table"),
        ("table: sort, text column", "table_sort_text_ms", "table"),
        ("table: set data (+search index)", "table_set_data_ms", "table"),
        ("table: first search", "table_search_first_ms", "table"),
        ("table: search", "table_search_ms", "table"),
        ("table: page", "table_page_ms", "table"),
        ("table: row click -> detail", "table_row_click_ms", "table"),
        ("iteration: AlphaBetaPanel", "iteration_alpha_beta_panel_ms", "iteration"),
        ("iteration: TripletBrowser", "iteration_triplet_browser_ms", "iteration"),
        ("iteration: Dashboard", "iteration_dashboard_ms", "iteration"),
    ]
    header = f"{'measure (median ms)':32s}" + "".join(f"{r['case']:>24s}" for r in results) + f"{'target':>10s}"
    lines = [header, "-" * len(header)]
    for label, key, target in rows:
        cells = "".join(f"{r[key]:>24.1f}" if key in r else f"{'–':>24s}" for r in results)
        lines.append(f"{label:32s}{cells}{TARGETS_MS[target]:>10.0f}")
    C.emit(report, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
