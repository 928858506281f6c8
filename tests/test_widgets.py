"""Tests for widgets/: build each widget headless, set a control, assert on its figures and state.

No browser: ipywidgets fires ``observe`` callbacks when Python sets ``.value``, and FigureWidget
data updates in Python. The dashboard drives a real SelfPlaySession on the tiny toy world; a scripted
session (FakeSession) is kept only where a test must hold a phase open to look at the busy state.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import widgets as Wd
from tspin_kit import analysis as A
from tspin_kit import figures as F
from tspin_kit.synthetic import build_records, write_run_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tspin():
    return build_records("tspin", n_examples=120, n_iterations=3, seed=0)


@pytest.fixture(scope="module")
def spin():
    return build_records("spin", n_examples=120, n_iterations=3, seed=1)


def ys(fig, i=0):
    return np.asarray(fig.data[i].y, dtype=float)


# --------------------------------------------------------------------------- layering


def test_engine_never_imports_widget_toolkits():
    code = (
        "import sys, tspin_kit, tspin_kit.analysis, tspin_kit.figures, tspin_kit.report, tspin_kit.store\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ipywidgets', 'anywidget', 'widgets'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_every_observe_names_its_trait():
    for path in (ROOT / "widgets").glob("*.py"):
        for line in path.read_text().splitlines():
            if ".observe(" in line:
                assert "names=" in line, f"{path.name}: bare observe: {line.strip()}"


# --------------------------------------------------------------------------- alpha / beta panel


def test_alpha_slider_recomputes_every_dependent_figure(tspin):
    panel = Wd.AlphaBetaPanel(tspin)
    assert panel.errors.errors == []
    assert panel.alpha.value == pytest.approx(1.0) and panel.beta.value == pytest.approx(0.1)
    figs = ("weights_fig", "drivers_fig", "opponent_fig")
    before = {name: repr(getattr(panel, name).to_plotly_json()["data"]) for name in figs}
    marker_before = panel.landscape_fig.data[1].x[0]
    summary_before = panel.summary.value
    panel.alpha.value = 0.3
    assert panel.errors.errors == []
    u = panel.table["current_advantage"].to_numpy()
    assert panel.table["weight_current"].to_numpy() == pytest.approx(1 / (1 + np.exp(0.3 * u)))
    for name in figs:
        assert repr(getattr(panel, name).to_plotly_json()["data"]) != before[name], name
    assert panel.landscape_fig.data[1].x[0] == pytest.approx(0.3) != marker_before
    assert "data-alpha='0.3000'" in panel.summary.value and panel.summary.value != summary_before


def test_beta_slider_scales_the_historical_weights(tspin):
    panel = Wd.AlphaBetaPanel(tspin, iteration=2)
    panel.beta.value = 0.5
    w_half = panel.table["weight_historical"].to_numpy()
    panel.beta.value = 0.25
    assert panel.table["weight_historical"].to_numpy() == pytest.approx(w_half / 2)
    assert panel.landscape_fig.data[1].y[0] == pytest.approx(0.25)
    assert np.asarray(panel.weights_fig.data[2].y, dtype=float) == pytest.approx(
        panel.table["weight_historical"].to_numpy()[: len(panel.weights_fig.data[2].y)]
    )


def test_loss_kind_and_stage(spin):
    panel = Wd.AlphaBetaPanel(spin)
    assert panel.kind.value == "spin" and panel.stage.value == "after"
    assert panel.beta.disabled and not panel.lam.disabled
    part = spin.examples[spin.examples["iteration"] == panel.iteration.value]
    assert panel.table["loss"].to_numpy() == pytest.approx(part["loss"].to_numpy())  # the training loss
    panel.stage.value = "before"  # policy == reference: log 2 everywhere
    assert panel.table["loss"].to_numpy() == pytest.approx(np.full(len(part), np.log(2)))
    panel.kind.value = "tspin"
    assert panel.lam.disabled and not panel.beta.disabled
    assert panel.landscape_fig.data[0].type == "heatmap"
    assert panel.errors.errors == []


def test_iteration_switch_and_entropy_view(tspin):
    panel = Wd.AlphaBetaPanel(tspin, iteration=0)
    loss0 = panel.table["loss"].mean()
    panel.iteration.value = 2
    assert panel.table["loss"].mean() != pytest.approx(loss0)
    # the entropy view's candidates come from the chosen prompt; probabilities sum to 1
    assert sum(panel.opponent_fig.data[0].y) == pytest.approx(1.0)
    entropy_before = panel.opponent_fig.data[3].y[0]
    panel.alpha.value = 4.0
    assert panel.opponent_fig.data[3].y[0] >= entropy_before
    assert len(panel.entropy_fig.data) == 1 and list(panel.entropy_fig.data[0].x) == [0, 1, 2]
    assert panel.errors.errors == []


def test_callback_errors_are_shown_not_swallowed(tspin, monkeypatch):
    panel = Wd.AlphaBetaPanel(tspin)

    def boom(*a, **k):
        raise RuntimeError("recompute exploded")

    monkeypatch.setattr(A, "recompute_losses", boom)
    panel.alpha.value = 0.5
    assert len(panel.errors.errors) == 1 and "recompute exploded" in panel.errors.errors[0]
    assert "RuntimeError" in panel.errors.banner.value and "tspin-error" in panel.errors.banner.value
    assert any("recompute exploded" in o.get("text", "") for o in panel.errors.output.outputs)


# --------------------------------------------------------------------------- triplets


def test_triplet_table_pages_sorts_searches_over_every_triplet():
    big = build_records("tspin", n_examples=1200, n_iterations=1, seed=3, token_lists=False)
    tb = Wd.TripletBrowser(big)
    g = tb.grid
    base = A.triplet_table(big.examples, 0)
    assert g.n_total == g.n_matched == 1200 and len(g.rows) == 25 and g.page == 0
    assert [r["key"] for r in g.rows] == base["example_id"].head(25).tolist()  # u ascending, as the controls say
    g.page = 47  # the last page
    assert g.page == 47 and [r["key"] for r in g.rows] == base["example_id"].iloc[1175:].tolist()
    g.page = 999  # past the end: clamped to the last page
    assert g.page == 47
    g.sort_by, g.descending = "loss", True  # a header click (twice): page 1 again
    want = base.sort_values("loss", ascending=False, kind="stable")["example_id"]
    assert g.page == 0 and [r["key"] for r in g.rows] == want.head(25).tolist()
    assert (tb.sort_by.value, tb.descending.value) == ("loss", True)  # the sort controls follow
    g.sort_by, g.descending = "synthetic", False  # a text column: not among the sort controls, they keep theirs
    assert tb.sort_by.value == "loss"
    assert [r["cells"][3].lower() for r in g.rows] == sorted(base["synthetic"].astype(str).str.lower())[:25]
    prompt = str(base["prompt"].iloc[7])
    g.query = prompt.upper()  # case-insensitive, over x, y, y', y0 and the id
    hits = base[
        (
            base["prompt"].astype(str)
            + "|"
            + base["annotated"].astype(str)
            + "|"
            + base["synthetic"].astype(str)
            + "|"
            + base["proto"].astype(str)
            + "|"
            + base["example_id"].astype(str)
        )
        .str.lower()
        .str.contains(prompt.lower(), regex=False)
    ]
    assert 0 < g.n_matched == len(hits) < 1200 and set(g.matching()["example_id"]) == set(hits["example_id"])
    g.query = "no-such-text"
    assert g.n_matched == 0 and g.rows == [] and g.page == 0
    g.query = ""
    assert g.n_matched == 1200
    assert tb.export_table()["example_id"].tolist() == g.matching()["example_id"].tolist()
    assert tb.errors.errors == []


def test_triplet_table_row_click_opens_the_triplet_even_far_down():
    big = build_records("tspin", n_examples=1200, n_iterations=1, seed=3, token_lists=False)
    tb = Wd.TripletBrowser(big)
    tb.grid.page = 40  # rows 1000-1024: past the 500 the triplet dropdown lists
    key = tb.grid.rows[3]["key"]
    assert key not in [v for _, v in tb.example.options][1:]
    tb.grid.click_row(key)  # what the row's click in the page sends
    assert tb.example.value == key and f"example {key}, iteration 0" in tb.detail_html.value
    assert tb.grid.page == 40  # the table stays where it was
    with pytest.raises(KeyError):
        tb.open_example(10**6)
    assert tb.errors.errors == []


def test_every_view_exports_its_table_and_a_standalone_offline_figure(tspin, spin, tmp_path):
    views = {
        "triplets": Wd.TripletBrowser(tspin),
        "alpha-beta": Wd.AlphaBetaPanel(tspin),
        "advantages": Wd.AdvantageDecay({"SPIN": spin, "T-SPIN": tspin}),
        "comparison": Wd.RunComparison({"SPIN": spin, "T-SPIN": tspin}),
        "dashboard": Wd.Dashboard(tspin),
    }
    plotly_js = (Path(__import__("plotly").__file__).parent / "package_data" / "plotly.min.js").read_text()[:2000]
    for name, view in views.items():
        bar = view.export
        assert bar in view.children, name
        csv = bar.save("csv", tmp_path)
        assert csv.name == f"tspin-{name}.csv"
        df = __import__("pandas").read_csv(csv)
        assert len(df) > 0, name
        page = bar.save("html", tmp_path).read_text()
        assert plotly_js in page, f"{name}: plotly.js not inlined"
        assert not __import__("re").search(r"<(script|link)[^>]*(src|href)=", page), f"{name}: the HTML loads something"
        titles = [s.figure.layout.title.text for s in view._slots.values() if s.figure is not None]
        import json as _json

        drawn = {_json.loads(m) for m in __import__("re").findall(r'"title":\{"text":("(?:[^"\\]|\\.)*")', page)}
        assert titles and set(titles) <= drawn, (name, set(titles) - drawn)
    tb = views["triplets"]
    tb.grid.query = str(tb.table["prompt"].iloc[0])
    assert (
        len(__import__("pandas").read_csv(tb.export.save("csv", tmp_path))) == tb.grid.n_matched
    )  # the table as shown
    assert len(views["alpha-beta"].export.csv_bytes().splitlines()) == len(views["alpha-beta"].table) + 1


def test_export_click_sends_the_file_and_reports_failures():
    from widgets.export import ExportBar

    sent = []
    bar = ExportBar("empty", table=lambda: None, figures=list)
    bar.send = lambda content, buffers=None: sent.append((content, buffers))
    bar._on_msg(bar, {"event": "export", "kind": "csv"}, [])
    assert "no table" in sent[-1][0]["error"]
    import pandas as pd

    bar._table = lambda: pd.DataFrame({"a": [1, 2]})
    bar._on_msg(bar, {"event": "export", "kind": "csv"}, [])
    content, buffers = sent[-1]
    assert content == {"event": "file", "name": "tspin-empty.csv", "mime": "text/csv"} and buffers[0] == b"a\n1\n2\n"


def test_triplet_browser_filters_sort_and_detail(tspin):
    tb = Wd.TripletBrowser(tspin)
    n = int((tspin.examples["iteration"] == 2).sum())
    assert len(tb.table) == n and tb.grid.table_id == "tspin-triplet-table" and tb.grid.n_total == n
    tb.correct.value = "incorrect"
    assert not tb.table["synthetic_correct"].any()
    tb.correct.value = "any"
    tb.synthetic_equals_annotated.value = "yes"
    assert tb.table["synthetic_equals_annotated"].all() and len(tb.table) < n
    tb.synthetic_equals_annotated.value = "any"
    tb.sort_by.value = "historical_advantage"
    tb.descending.value = True
    assert tb.table["historical_advantage"].is_monotonic_decreasing
    lo = float(np.quantile(tb.table["current_advantage"], 0.5))
    tb.current.value = (lo, tb.current.max)
    assert (tb.table["current_advantage"] >= lo).all()
    assert tb.example.value in set(tb.table["example_id"])  # the selection survives filtering when it can
    assert [v for _, v in tb.example.options][:5] == tb.table["example_id"].head(5).tolist()
    html = tb.detail_html.value
    for role in A.ROLES:
        assert F.ROLE_COLORS[role] in html
    assert html.count("tspin-token") > 3
    assert [t.line.color for t in tb.tokens_fig.data] == [F.ROLE_COLORS[r] for r in A.ROLES]
    assert len(tb.history_fig.data[0].x) == 3 and "tspin-synthetic-history" in tb.history_html.value
    assert tb.errors.errors == []


def test_triplet_browser_iteration_switch_resets_ranges(tspin):
    tb = Wd.TripletBrowser(tspin, iteration=0)
    part = tspin.examples[tspin.examples["iteration"] == 1]
    tb.iteration.value = 1
    assert tb.current.value[0] <= part["current_advantage_before"].min()
    assert tb.current.value[1] >= part["current_advantage_before"].max()
    assert len(tb.table) == len(part)
    tb.example.value = 7
    assert "example 7, iteration 1" in tb.detail_html.value
    assert tb.errors.errors == []


def test_triplet_browser_with_no_match(tspin):
    tb = Wd.TripletBrowser(tspin)
    tb.proto_equals_annotated.value = "yes"
    tb.synthetic_equals_annotated.value = "no"
    tb.correct.value = "correct"  # y' correct but not equal to y: impossible in the addition world
    assert tb.table.empty and "No triplet" in tb.detail_html.value and tb.errors.errors == []


def test_triplet_browser_show_filters_to_example_ids(tspin):
    tb = Wd.TripletBrowser(tspin)
    tb.correct.value = "correct"  # show() clears filters that could hide the chosen triplets
    tb.show(1, [9, 3, 5], note="three of them")
    assert tb.iteration.value == 1 and tb.correct.value == "any"
    assert sorted(tb.table["example_id"]) == [3, 5, 9] and tb.example.value == 9  # the first id in detail
    assert "data-count='3'" in tb.ids_html.value and "three of them" in tb.ids_html.value
    assert "example 9, iteration 1" in tb.detail_html.value
    tb.iteration.value = 2  # ids are stable across iterations: the filter stays
    assert sorted(tb.table["example_id"]) == [3, 5, 9]
    tb.show_all.click()
    assert (
        tb.example_ids is None
        and len(tb.table) == int((tspin.examples["iteration"] == 2).sum())
        and tb.ids_html.value == ""
    )
    with pytest.raises(ValueError, match="iteration 7"):
        tb.show(7, [1])
    assert tb.errors.errors == []


def test_dashboard_alarm_buttons_open_the_triplets_behind_them(tspin):
    spin4 = build_records("spin", n_examples=60, n_iterations=4, seed=1)  # SPIN's margin collapses at it2, it3
    from tspin_kit.alarms import find_alarms

    expected = find_alarms(spin4, label=A.run_label(spin4))
    assert [(a.iteration, a.name) for a in expected] == [(2, "reward_margin_collapse"), (3, "reward_margin_collapse")]
    d = Wd.Dashboard(spin4)
    assert d.alarms == expected and "data-count='2'" in d.alarms_box.children[0].value
    assert d.triplets is None and d.triplet_box.children == ()
    d.alarm_buttons[0].click()  # no browser among the views: the dashboard builds one below its figures
    tb = d.triplets
    assert d.triplet_box.children == (tb,) and tb in d.views
    assert d.iteration.value == 2 and tb.iteration.value == 2
    assert (
        set(tb.table["example_id"]) == set(expected[0].example_ids) and tb.example.value == expected[0].example_ids[0]
    )
    assert expected[0].message.replace("'", "&#x27;") in tb.ids_html.value
    d.alarm_buttons[1].click()
    assert d.triplets is tb and tb.iteration.value == 3 and set(tb.table["example_id"]) == set(expected[1].example_ids)

    own = Wd.TripletBrowser(spin4, iteration=0)  # a browser among the views is the one opened
    d2 = Wd.Dashboard(spin4, views=[own])
    d2.open_alarm(1)
    assert d2.triplets is own and own.iteration.value == 3 and len(own.table) == len(expected[1].example_ids)
    assert d2.triplet_box.children == ()
    quiet = Wd.Dashboard(tspin)
    assert quiet.alarms == [] and "none fired" in quiet.alarms_box.children[0].value
    assert d.errors.errors == [] and tb.errors.errors == [] and d2.errors.errors == [] and own.errors.errors == []


# --------------------------------------------------------------------------- advantage decay and comparison


def test_advantage_decay_side_by_side(tspin, spin):
    w = Wd.AdvantageDecay({"SPIN": spin, "T-SPIN": tspin})
    names = {t.name for t in w.decay_fig.data if t.showlegend}
    assert names == {"SPIN", "T-SPIN"}
    before = ys(w.decay_fig, 1)
    w.stage.value = "after"
    assert not np.allclose(ys(w.decay_fig, 1), before)
    titles = [a.text for a in w.misalignment_fig.layout.annotations]
    assert any(t.startswith("<b>SPIN:") and "misaligned" in t for t in titles)
    w.iteration.value = 0
    assert "iteration 0" in w.misalignment_fig.layout.title.text
    assert len(w.degenerate_fig.data) == 4 and len(w.score_fig.data) == 2
    assert w.errors.errors == []


def test_advantage_decay_shows_what_vanishes_beside_the_sft_control(tspin, spin):
    sft = build_records("sft", n_examples=40, n_iterations=3, seed=2)
    w = Wd.AdvantageDecay({"SFT": sft, "SPIN": spin, "T-SPIN": tspin})
    u_dashes = {(t.name, t.line.dash) for t in w.decay_fig.data if t.xaxis == "x" and t.mode == "lines+markers"}
    assert u_dashes == {(k, d) for k in ("SFT", "SPIN", "T-SPIN") for d in ("solid", "dash")}  # y' != y, all pairs
    v_names = {t.name for t in w.decay_fig.data if t.xaxis == "x2"}
    assert v_names == {"SFT (SFT control)", "SPIN", "T-SPIN"}
    margin_runs = {t.name for t in w.margin_fig.data if t.showlegend}
    assert margin_runs == {"SPIN"}  # reference-based rewards only; SFT has none
    spin_margin = next(t for t in w.margin_fig.data if t.name == "SPIN" and t.line.dash == "dash")  # all pairs
    assert np.asarray(spin_margin.y, dtype=float) == pytest.approx(
        spin.examples.groupby("iteration")["reward_margin"].mean().to_numpy()
    )
    assert w.errors.errors == []


def test_opponent_view_uses_the_runs_alpha():
    run = build_records("tspin", n_examples=30, n_iterations=2, alpha=0.5, seed=4)
    panel = Wd.AlphaBetaPanel(run)
    assert "c = 0.5·log π(z|x)" in panel.opponent_fig.layout.title.text
    # at alpha = alpha_run the opponent is the policy renormalised over the candidates: softmax(log pi)
    cands = A.candidate_confidences(
        run.examples, panel.iteration.value, panel.example.value, panel.stage.value, alpha_run=0.5
    )
    lp = cands["logp"].to_numpy()
    assert np.asarray(panel.opponent_fig.data[0].y, dtype=float) == pytest.approx(np.exp(lp) / np.exp(lp).sum())
    assert panel.errors.errors == []


def test_run_comparison_toggles_runs_and_metrics(tspin, spin):
    sft = build_records("sft", n_examples=40, n_iterations=3, seed=2)
    w = Wd.RunComparison({"SFT": sft, "SPIN": spin, "T-SPIN": tspin})
    assert {t.name for t in w.comparison_fig.data} == {"SFT", "SPIN", "T-SPIN"}
    w.run_select.value = ("SPIN", "T-SPIN")
    assert {t.name for t in w.comparison_fig.data} == {"SPIN", "T-SPIN"}
    w.metric_select.value = ("score", "misaligned_share", "token_entropy")
    assert len(w.comparison_fig.data) == 6 and "tspin-comparison-table" in w.final_html.value
    assert w.errors.errors == []


def test_runs_from_a_list_get_unique_labels(tspin):
    w = Wd.RunComparison([tspin, tspin])
    assert list(w.runs) == ["tspin (seed 0)", "tspin (seed 0) #2"]


# --------------------------------------------------------------------------- dashboard


class FakeSession:
    """A live session of the documented API over the builder's records, one iteration per step."""

    def __init__(self, records, iterations=3, fail_on=None):
        self._all = records
        self.iterations = iterations
        self.iteration = 0
        self._done_prepare = False
        self._phase_i = 0  # 0 generate, 1 train, 2 evaluate
        self.fail_on = fail_on
        self.gate = None  # threading.Event: phases wait on it when set
        self.calls = []

    @property
    def next_phase(self):
        if not self._done_prepare:
            return "prepare"
        if self.iteration >= self.iterations:
            return "done"
        return ("generate", "train", "evaluate")[self._phase_i]

    def _phase(self, name, progress):
        if self.gate is not None:
            self.gate.wait(5)
        self.calls.append(name)
        if name == self.fail_on:
            raise ValueError(f"{name} blew up")
        for i in range(4):
            if progress:
                progress(i + 1, 4, name)

    def prepare(self, progress=None):
        self._phase("prepare", progress)
        self._done_prepare = True

    def generate(self, progress=None):
        self._phase("generate", progress)
        self._phase_i = 1

    def train(self, progress=None):
        self._phase("train", progress)
        self._phase_i = 2

    def evaluate(self, progress=None):
        self._phase("evaluate", progress)
        self._phase_i = 0
        self.iteration += 1

    def step(self, progress=None):
        for p in ("generate", "train", "evaluate")[self._phase_i :]:
            getattr(self, p)(progress)

    def records(self):
        r = self._all
        ex = r.examples[r.examples["iteration"] < self.iteration]
        met = r.metrics[r.metrics["iteration"] < self.iteration]
        return type(r)(ex.reset_index(drop=True), met.reset_index(drop=True), r.manifest, None)


def test_dashboard_read_only(tspin):
    d = Wd.Dashboard(tspin)
    assert all(b not in d.children for b in d.buttons.values())
    assert "read-only" in d.status.value
    assert d.iteration.max == 2 and "data-iteration='0'" in d.iteration_html.value
    d.iteration.value = 2
    assert "data-iteration='2'" in d.iteration_html.value
    assert d.decay_fig.layout.shapes[0].x0 == 2 and d.score_fig.layout.shapes[0].x0 == 3
    assert "T-SPIN" in d.settings_html.value and "α = 1" in d.settings_html.value
    with pytest.raises(RuntimeError, match="no session"):
        d.run_phase("generate")


def test_dashboard_opens_a_run_directory(tmp_path, spin):
    run_dir = write_run_dir(spin, tmp_path / "run")
    d = Wd.Dashboard(str(run_dir))
    assert d.iteration.max == 2 and str(run_dir) in d.settings_html.value
    assert d.errors.errors == []


def test_dashboard_drives_a_live_session_in_the_background(tspin):
    session = FakeSession(tspin)
    triplets = Wd.TripletBrowser(session)
    panel = Wd.AlphaBetaPanel(session)
    d = Wd.Dashboard(session, views=[triplets, panel])
    assert "No finished iteration" in d.iteration_html.value and d.iteration.disabled
    assert not d.buttons["prepare"].disabled and d.buttons["generate"].disabled
    d.buttons["prepare"].click()
    assert d.wait(5) and session.calls == ["prepare"]
    assert d.buttons["prepare"].disabled and not d.buttons["generate"].disabled and not d.buttons["step"].disabled

    session.gate = threading.Event()  # hold the next phase so we can look at the busy state
    d.buttons["step"].click()
    assert d.busy and all(b.disabled for b in d.buttons.values())
    assert "running step" in d.status.value
    session.gate.set()
    assert d.wait(5)
    assert session.calls == ["prepare", "generate", "train", "evaluate"]
    assert d.progress.value == d.progress.max == 4
    assert "step done" in d.status.value and "next phase: <b>generate</b>" in d.status.value
    # one finished iteration: the slider cannot move, and the hint says why and what to click
    assert d.iteration.max == 0 and d.iteration.disabled and "data-iteration='0'" in d.iteration_html.value
    assert "data-count='1'" in d.iteration_hint.value and "Whole step" in d.iteration_hint.value
    assert triplets.iteration.options == (0,) and len(triplets.table) == 120
    assert panel.iteration.value == 0 and panel.table is not None

    d.run_phase("step", background=False)
    assert d.iteration.max == 1 and d.iteration.value == 1
    d.iteration.value = 0
    assert triplets.iteration.value == 0 and panel.iteration.value == 0
    assert d.errors.errors == [] and triplets.errors.errors == [] and panel.errors.errors == []


def test_dashboard_shows_phase_errors(tspin):
    session = FakeSession(tspin, fail_on="train")
    session.prepare()
    session.generate()
    d = Wd.Dashboard(session)
    assert not d.buttons["train"].disabled
    d.buttons["train"].click()
    assert d.wait(5)
    assert len(d.errors.errors) == 1 and "train blew up" in d.errors.errors[0]
    assert "train failed" in d.errors.banner.value and "data-state='error'" in d.status.value
    assert not d.buttons["train"].disabled  # the user can retry


def test_widget_state_is_strict_json(tspin):
    """A NaN in widget state breaks the kernel message ("Out of range float values are not JSON compliant")."""
    import json

    import ipywidgets as W
    from ipywidgets.widgets.widget import _remove_buffers

    sft = build_records("sft", n_examples=30, n_iterations=2, seed=3)
    built = [
        Wd.AlphaBetaPanel(tspin),
        Wd.TripletBrowser(tspin),
        Wd.Dashboard(tspin),
        Wd.AdvantageDecay([tspin, sft]),
        Wd.RunComparison([tspin, sft]),
        Wd.AlphaBetaPanel(sft),
    ]
    seen = set()

    def walk(w):
        if id(w) in seen or not isinstance(w, W.Widget):
            return
        seen.add(id(w))
        state, _, _ = _remove_buffers(w.get_state())
        for _key, value in state.items():
            json.dumps(value, allow_nan=False)  # raises ValueError on NaN / inf
        for child in getattr(w, "children", ()):
            walk(child)

    for w in built:
        walk(w)
    assert len(seen) > 50


# --------------------------------------------------------------------------- dashboard on a real session


@pytest.mark.slow  # a real toy session: trains
def test_dashboard_drives_a_real_session(tmp_path):
    """The buttons run a real SelfPlaySession (tiny toy world) in a background thread, and the views follow."""
    from conftest import small_config

    from tspin_kit import SelfPlaySession

    session = SelfPlaySession(small_config(tmp_path / "run", iterations=2))
    triplets = Wd.TripletBrowser(session)
    d = Wd.Dashboard(session, views=[triplets])
    assert d.buttons["generate"].disabled and not d.buttons["prepare"].disabled
    d.buttons["prepare"].click()
    assert d.wait(300), "prepare did not finish"
    assert d.errors.errors == [] and session.next_phase == "generate"
    assert not d.buttons["generate"].disabled and d.buttons["train"].disabled
    d.buttons["generate"].click()
    assert d.wait(300) and session.next_phase == "train" and not d.buttons["train"].disabled
    d.buttons["step"].click()  # the rest of iteration 0: train + evaluate
    assert d.wait(300) and d.errors.errors == []
    assert session.next_phase == "generate" and session.iteration == 1
    assert d.iteration.max == 0 and "data-iteration='0'" in d.iteration_html.value
    assert d.progress.value == d.progress.max > 0
    n = len(session.records().examples)
    assert triplets.iteration.options == (0,) and len(triplets.table) == n
    d.run_phase("step", background=False)
    assert d.iteration.max == 1 and d.iteration.value == 1 and session.next_phase == "done"
    assert all(b.disabled for b in d.buttons.values())  # nothing left to run


def test_dashboard_shows_a_real_sessions_error(tmp_path):
    """A real failure (missing data file) surfaces in the dashboard with its message, and prepare stays retryable."""
    from conftest import small_config

    from tspin_kit import SelfPlaySession

    cfg = small_config(tmp_path / "run")
    cfg.data.source = str(tmp_path / "missing.jsonl")
    d = Wd.Dashboard(SelfPlaySession(cfg))
    d.buttons["prepare"].click()
    assert d.wait(120)
    assert len(d.errors.errors) == 1 and "missing.jsonl" in d.errors.errors[0]
    assert "prepare failed" in d.errors.banner.value
    assert not d.buttons["prepare"].disabled


# --------------------------------------------------------------------------- issue 8 (workshop room)
def test_second_whole_step_click_while_one_runs_is_queued_not_dropped(tspin):
    session = FakeSession(tspin, iterations=3)
    d = Wd.Dashboard(session)
    d.run_phase("prepare")
    assert d.wait(5)
    session.gate = threading.Event()  # hold the first step open
    d.run_phase("step")
    d.run_phase("step")  # clicked while the first runs (or right after its "done")
    assert "queued" in d.status.value
    session.gate.set()
    assert d.wait(10)
    assert session.calls == ["prepare"] + ["generate", "train", "evaluate"] * 2
    assert d.iteration.max == 1 and not d.iteration.disabled and not d.buttons["step"].disabled
    assert not d.errors.errors


def test_plot_view_sends_the_whole_figure_and_keeps_category_axes(tspin):
    panel = Wd.AlphaBetaPanel(tspin)
    view = panel._slots["drivers"].view
    rev = view.revision
    panel.alpha.value = 0.5
    assert view.revision == rev + 1
    fig = view.figure_dict()  # exactly what the browser receives, every trace and the whole layout
    assert (
        fig["layout"]["yaxis"]["type"] == "category"
        and fig["layout"]["title"]["text"] == panel.drivers_fig.layout.title.text
    )
    assert len(fig["data"]) == 2 and fig["data"][0]["y"] == [
        f"#{int(e)}" for e in A.top_drivers(panel.table)["example_id"]
    ]
    weights = panel._slots["weights"].view.figure_dict()
    assert "α = 0.5" in weights["layout"]["title"]["text"]
    # one plotly.js for every view of the kernel, and no view carries a bundle of its own
    views = [s.view for s in panel._slots.values()]
    assert len({id(v.library) for v in views}) == 1 and len(views[0].library.source) > 1_000_000
    assert all(len(v._esm) < 20_000 for v in views)


def test_plain_figure_specs_send_the_same_json_as_go_figures(tspin):
    """The alpha/beta panel's fast path (figures as plain dicts, our own typed-array encoding) must send the
    browser exactly what plotly's go.Figure path sends, for every figure a slider move redraws."""
    import json

    import plotly.graph_objects as go

    from widgets.plotly_view import figure_json

    inputs = A.loss_inputs(tspin.examples, 2, "before")
    table = A.recompute_losses(inputs, kind="tspin", alpha=0.7, beta=0.3)
    land = A.loss_landscape(inputs, kind="tspin", scales=np.geomspace(0.05, 5, 5), betas=np.linspace(0, 1, 3))
    ex = int(tspin.examples["example_id"].iloc[0])
    cands = A.candidate_confidences(tspin.examples, 2, ex, "before", alpha_run=1.0)
    builds = {
        "weights": lambda: F.gradient_weights(table, kind="tspin", scale=0.7, beta=0.3),
        "gradients": lambda: F.objective_gradients(table, "T-SPIN"),
        "drivers": lambda: F.top_drivers(A.top_drivers(table)),
        "landscape": lambda: F.loss_landscape(land, kind="tspin", scale=0.7, beta=0.3),
        "opponent": lambda: F.opponent(
            A.opponent_table(cands, 0.7), A.opponent_entropy_curve(cands, np.geomspace(0.05, 20, 9)), 0.7, 1.0
        ),
    }
    for name, build in builds.items():
        fig = build()
        with F.figure_specs():
            spec = build()
        assert isinstance(fig, go.Figure) and isinstance(spec, F.FigureSpec), name
        sent = json.loads(figure_json(spec))
        assert sent == json.loads(figure_json(fig)), name
        assert any(isinstance(v, dict) and "bdata" in v for t in sent["data"] for v in t.values()), name
        assert json.loads(figure_json(spec.to_figure())) == sent, name  # what slot.figure hands back
    # int64 ids are narrowed as plotly does, and an id too large for int32 stays a plain list
    big = F.FigureSpec(data=[{"type": "bar", "x": np.array([1, 2**40]), "y": np.array([1, 300])}], layout={})
    sent = json.loads(figure_json(big))["data"][0]
    assert sent["x"] == [1, 2**40] and sent["y"]["dtype"] == "i2"
    assert sent == json.loads(figure_json(big.to_figure()))["data"][0]  # (an empty layout gets plotly's template)


def test_a_beta_move_leaves_the_opponent_alone_an_alpha_move_redraws_it(tspin):
    panel = Wd.AlphaBetaPanel(tspin)
    view = panel._slots["opponent"].view
    rev = view.revision
    panel.beta.value = 0.4  # the opponent reads alpha and the prompt's candidates, not beta
    assert view.revision == rev and "data-beta='0.4000'" in panel.summary.value
    panel.alpha.value = 0.6
    assert view.revision == rev + 1 and "0.6" in panel.opponent_fig.layout.title.text
    panel.example.value = next(e for e in panel.example.options if e != panel.example.value)
    assert view.revision == rev + 2  # another prompt: redrawn at the same alpha
    assert panel.errors.errors == []


def test_plot_view_click_reaches_python(tspin):
    view = Wd.plotly_view.PlotlyView(
        F.top_drivers(
            A.top_drivers(
                A.recompute_losses(A.loss_inputs(tspin.examples, 0, "before"), kind="tspin", alpha=1.0, beta=0.1)
            )
        )
    )
    got = []
    view.on_click(got.append)
    view._on_msg(view, {"event": "click", "curve": 0, "point": 3, "customdata": 17, "x": 0.5, "y": "#17"}, [])
    assert got and got[0]["customdata"] == 17


def test_triplet_filters_show_any_not_blank(tspin):
    tb = Wd.TripletBrowser(tspin)
    for w in (tb.correct, tb.synthetic_equals_annotated, tb.proto_equals_annotated):
        assert w.value == "any" and w.label == "any" and w.index == 0


def test_every_control_has_a_tooltip(tspin):
    import ipywidgets as W

    views = [
        Wd.AlphaBetaPanel(tspin),
        Wd.TripletBrowser(tspin),
        Wd.AdvantageDecay(tspin),
        Wd.Dashboard(FakeSession(tspin)),
        Wd.RunComparison([tspin, tspin]),
    ]
    missing = []
    for v in views:
        stack = [v]
        while stack:
            w = stack.pop()
            stack.extend(getattr(w, "children", ()))
            if (
                isinstance(w, (W.ValueWidget, W.Button))
                and not isinstance(w, (W.HTML, W.Output))
                and not getattr(w, "tooltip", None)
            ):
                missing.append(f"{type(v).__name__}.{type(w).__name__}({getattr(w, 'description', '')!r})")
    assert not missing, missing


def test_progress_is_one_line_per_phase_in_a_notebook(monkeypatch):
    from tspin_kit import progress

    shown = []

    class Handle:
        def update(self, obj):
            shown.append(("update", str(obj.data)))

    monkeypatch.delenv("TSPIN_PROGRESS", raising=False)
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    monkeypatch.setattr(
        "IPython.display.display", lambda obj, display_id=None: shown.append(("display", str(obj.data))) or Handle()
    )
    b = progress.bar(10, "generate")
    for _ in range(10):
        b.update(1)
    b.close()
    assert [k for k, _ in shown].count("display") == 1 and shown[-1][1].startswith("generate: 10/10 in ")
    with progress.quiet():
        assert isinstance(progress.bar(5, "train"), progress._Off)
    from transformers.utils import logging as hf_logging

    assert not hf_logging.is_progress_bar_enabled()  # "Loading weights" / "Writing model shards" silenced


def test_empty_and_accuracy_axes_say_what_they_show(tspin):
    import pandas as pd

    empty = F.scores({"T-SPIN": (pd.DataFrame({"policy": [], "score": []}), "tspin")})
    assert list(empty.layout.yaxis.range) == list(F.ACCURACY_RANGE) and list(empty.layout.xaxis.range) == [0, 1]
    assert "press Prepare" in empty.layout.annotations[0].text
    table = A.comparison_table({"a": tspin, "b": tspin})
    fig = F.run_comparison(table, ["score"])
    assert list(fig.layout.yaxis.range) == list(F.ACCURACY_RANGE)
    a, b = fig.data  # identical runs stay distinguishable
    assert a.marker.symbol != b.marker.symbol and a.line.width > b.line.width and a.line.dash != b.line.dash
    assert fig.layout.title.text != "Run comparison"  # the widget heading says that already


def test_clicking_a_point_or_bar_opens_that_triplet(tspin, spin):
    panel = Wd.AlphaBetaPanel(tspin)
    e = int(A.top_drivers(panel.table)["example_id"].iloc[2])
    panel._slots["drivers"].view.click({"curve": 0, "point": 2, "customdata": e, "x": 0.4, "y": f"#{e}"})
    assert (
        panel.triplets is not None
        and panel.triplets.example.value == e
        and list(panel.triplets.table["example_id"]) == [e]
    )
    assert f"example {e}, iteration {panel.iteration.value}" in panel.triplets.detail_html.value
    w = Wd.AdvantageDecay({"T-SPIN": tspin, "SPIN": spin})
    w._slots["misalignment"].view.click({"curve": 2, "point": 0, "customdata": 7})  # second panel: SPIN
    assert w.triplets.records is spin and w.triplets.example.value == 7
    tabs = Wd.workshop_tabs(FakeSession(tspin), tspin)
    tabs.children[3]._slots["weights"].view.click({"curve": 0, "point": 0, "customdata": 11})
    assert tabs.selected_index == 1 and tabs.children[1].example.value == 11
