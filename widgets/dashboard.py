"""Iteration stepper / dashboard: drive a live session or revisit a finished run.

Live session: buttons run ``prepare``, ``generate``, ``train``, ``evaluate`` or a whole ``step``
in a background thread, so the notebook stays responsive; the buttons are disabled meanwhile, a
progress bar and status line follow the phase's ``progress(done, total, phase)`` callback, and an
error raised by the phase is shown (banner + traceback), never swallowed. Finished run directory
or records: the same view, read-only. An iteration slider revisits any finished iteration; the
run's settings are shown. ``views`` (other widgets of this package) are kept in sync: they get
the new records after each phase and follow the iteration slider.

Instability alarms (``tspin_kit.alarms.find_alarms``, from the records alone) are listed with one
button each that opens the triplet browser at the alarm's iteration, showing only the triplets
behind it: the ``TripletBrowser`` among ``views`` if there is one, else one built below the figures.
"""

from __future__ import annotations

import html
import threading
import time

import ipywidgets as W

from tspin_kit import analysis as A
from tspin_kit import figures as F
from tspin_kit import methods as M
from tspin_kit.alarms import Alarm, find_alarms

from ._common import CARD_STYLE, ErrorLog, FigureSlots, fmt, resolve_source
from .triplets import TripletBrowser

# (phase, label, tooltip). No icons: Font Awesome would come from a CDN, which offline rooms lack.
BUTTONS = (
    ("prepare", "Prepare", "load the data and pi_0, score pi_0 and sample y0 once from it (first phase of a run)"),
    ("generate", "Generate y'", "sample the synthetic responses y' from the current policy pi_t"),
    ("train", "Train", "train pi_t -> pi_{t+1} on the triplets (y, y', y0)"),
    ("evaluate", "Evaluate", "score pi_{t+1} on held-out problems and write this iteration's records"),
    ("step", "Whole step", "generate + train + evaluate: one whole iteration (clicks while a step runs are queued)"),
)


class Dashboard(FigureSlots, W.VBox):
    """``source``: a live ``SelfPlaySession``, a run directory or records. ``views``: widgets to sync."""

    def __init__(self, source, views=(), **kwargs):
        super().__init__(**kwargs)
        self.errors = ErrorLog()
        self.records, self.session = resolve_source(source)
        self.views = list(views)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._queue: list[str] = []  # phases clicked while one runs: run in order, never dropped
        self._running = False
        self._quiet = False
        self.buttons = {
            name: W.Button(description=label, tooltip=tip, layout=W.Layout(width="130px"))
            for name, label, tip in BUTTONS
        }
        self.progress = W.IntProgress(
            value=0,
            min=0,
            max=1,
            description="",
            tooltip="progress of the running phase",
            layout=W.Layout(width="260px"),
        )
        self.status = W.HTML()
        self.settings_html = W.HTML()
        self.iteration = W.IntSlider(
            value=0,
            min=0,
            max=0,
            description="iteration",
            continuous_update=False,
            tooltip="revisit a finished iteration t (the policy pi_t that generated y')",
        )
        self.iteration_hint = W.HTML()
        self.iteration_html = W.HTML()
        self.alarms: list[Alarm] = []
        self.alarm_buttons: list[W.Button] = []
        self.alarms_box = W.VBox()
        self.triplets: TripletBrowser | None = next((v for v in self.views if isinstance(v, TripletBrowser)), None)
        self.triplet_box = W.VBox()  # holds the browser the dashboard builds when no view is one
        self._slot("decay")
        self._slot("score")
        g = self.errors.guard
        for name, b in self.buttons.items():
            b.on_click(g(lambda _b, name=name: self.run_phase(name), name))
        self.iteration.observe(g(self._on_iteration, "iteration"), names=["value"])
        controls = (
            [W.HBox(list(self.buttons.values())), W.HBox([self.progress, self.status])]
            if self.session is not None
            else [self.status]
        )
        self.children = [
            W.HTML("<h3 style='margin:4px 0'>Self-play dashboard</h3>"),
            self.settings_html,
            *controls,
            W.HBox([self.iteration, self.iteration_hint]),
            self.iteration_html,
            self.alarms_box,
            self._slots["decay"],
            self._slots["score"],
            self.triplet_box,
            self._export_bar("dashboard", lambda: self.records.metrics),
            self.errors.box,
        ]
        g(self._refresh, "initial view")()
        self._set_status("read-only: finished run" if self.session is None else "ready", "idle")

    # -- running phases ------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._running

    def run_phase(self, name: str, background: bool = True) -> None:
        """Run ``session.<name>(progress=...)``; in a thread unless ``background=False``."""
        if self.session is None:
            raise RuntimeError("this dashboard shows a finished run: there is no session to drive")
        with self._lock:
            if self._running:  # a click while a phase runs: queued, run right after it (never dropped)
                self._queue.append(name)
                self._set_status(
                    f"{html.escape(name)} queued: runs when the running phase ends ({len(self._queue)} waiting)", "busy"
                )
                return
            self._running = True
        self.errors.clear()
        self._enable(False)
        if background:
            self._thread = threading.Thread(target=self._work_queue, args=(name,), name=f"tspin-{name}", daemon=True)
            self._thread.start()
        else:
            self._work_queue(name)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the running phase and every queued one end (tests, scripts); True if they did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._running:
            t = self._thread
            if t is not None and t is not threading.current_thread():
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if deadline is not None and time.monotonic() >= deadline:
                break
            if self._running and (t is None or not t.is_alive()):
                time.sleep(0.01)
        return not self.busy

    def _work_queue(self, name: str) -> None:
        """Run ``name``, then each phase queued meanwhile; the buttons come back only at the end."""
        try:
            while True:
                self._work(name)
                with self._lock:  # the check and the release in one lock: a click cannot slip between
                    if not self._queue:
                        self._running = False
                        break
                    name = self._queue.pop(0)
        except BaseException:
            with self._lock:
                self._running = False
                self._queue.clear()
            raise
        finally:
            self._enable(True)

    def _work(self, name: str) -> None:
        self.progress.value, self.progress.max = 0, 1
        self._set_status(f"running {name}…", "running")
        t0 = time.perf_counter()
        from tspin_kit.progress import quiet

        try:
            with quiet():  # the widget shows progress; no bars from this thread in some other cell
                getattr(self.session, name)(progress=self._progress)
        except Exception as e:  # noqa: BLE001 - shown to the user, never swallowed
            self.errors.report(e, f"{name} failed")
            self._set_status(f"{name} failed after {time.perf_counter() - t0:.1f} s (see the error below)", "error")
        else:
            self._set_status(f"{name} done in {time.perf_counter() - t0:.1f} s", "idle")
        finally:
            try:
                self.records = self.session.records()
                self._refresh(follow_last=True)
                for v in self.views:
                    v.set_records(self.records)
            except Exception as e:  # noqa: BLE001
                self.errors.report(e, "refresh after " + name)

    def _progress(self, done: int, total: int, phase: str) -> None:
        self.progress.max = max(int(total), 1)
        self.progress.value = min(int(done), self.progress.max)
        self._set_status(f"{html.escape(str(phase))}: {done}/{total}", "running")

    def _enable(self, on: bool) -> None:
        if on and self._running:  # a queued phase still runs: the buttons stay off
            on = False
        nxt = getattr(self.session, "next_phase", None) if self.session is not None else None
        for name, b in self.buttons.items():
            if not on:
                b.disabled = True
            elif nxt is None:
                b.disabled = False
            elif name == "step":
                b.disabled = nxt in ("prepare", "done")
            else:
                b.disabled = name != nxt

    def _set_status(self, text: str, state: str) -> None:
        color = {"idle": "inherit", "running": "#1f78b4", "busy": "#b15928", "error": "#b91c1c"}.get(state, "inherit")
        nxt = getattr(self.session, "next_phase", None) if self.session is not None else None
        extra = f" · next phase: <b>{html.escape(str(nxt))}</b>" if nxt else ""
        self.status.value = (
            f"<span id='tspin-status' data-state='{state}' style='{CARD_STYLE};color:{color}'>{text}{extra}</span>"
        )

    # -- views ---------------------------------------------------------------------------------
    def _refresh(self, follow_last: bool = False) -> None:
        rec = self.records
        s = A.run_settings(rec)
        self.settings_html.value = settings_html(s)
        iters = A.iterations_of(rec.examples)
        self._quiet = True
        try:
            if iters:
                self.iteration.min, self.iteration.max = min(iters), max(iters)
                if follow_last:
                    self.iteration.value = max(iters)
                self.iteration.disabled = len(iters) < 2
            else:
                self.iteration.disabled = True
            self.iteration_hint.value = iteration_hint(iters, self.session is not None)
        finally:
            self._quiet = False
        self._enable(True)
        self._show_alarms()
        self._on_iteration()

    # -- alarms --------------------------------------------------------------------------------
    def _show_alarms(self) -> None:
        self.alarms = find_alarms(self.records, label=A.run_label(self.records))
        g = self.errors.guard
        rows, self.alarm_buttons = [], []
        for i, a in enumerate(self.alarms):
            color = "#b91c1c" if a.severity == "critical" else "#b15928"
            text = W.HTML(
                f"<span class='tspin-alarm' data-alarm='{a.name}' data-iteration='{a.iteration}' "
                f"style='{CARD_STYLE};color:{color}'>"
                f"<b>{a.severity}</b> · {html.escape(a.message)}</span>"
            )
            b = W.Button(
                description=f"show {len(a.example_ids)} triplets",
                layout=W.Layout(width="170px"),
                disabled=not a.example_ids,
                tooltip="open the triplet browser at this iteration, on these triplets",
            )
            b.on_click(g(lambda _b, i=i: self.open_alarm(i), f"alarm {a.name}"))
            self.alarm_buttons.append(b)
            rows.append(W.HBox([b, text]))
        head = (
            f"<b>Instability alarms</b> ({len(self.alarms)}, from the records alone)"
            if self.alarms
            else "<b>Instability alarms</b>: none fired."
        )
        self.alarms_box.children = [
            W.HTML(f"<div id='tspin-alarms' data-count='{len(self.alarms)}' style='{CARD_STYLE}'>{head}</div>"),
            *rows,
        ]

    def open_alarm(self, alarm: Alarm | int) -> TripletBrowser:
        """Show the triplets behind ``alarm`` (or ``self.alarms[alarm]``) in the triplet browser."""
        a = self.alarms[alarm] if isinstance(alarm, int) else alarm
        if self.triplets is None:
            self.triplets = TripletBrowser(self.records, iteration=a.iteration)
            self.views.append(self.triplets)  # from now on it follows the slider and new records
            self.triplet_box.children = [self.triplets]
        if self.iteration.value != a.iteration and self.iteration.min <= a.iteration <= self.iteration.max:
            self.iteration.value = a.iteration  # the views follow
        self.triplets.show(a.iteration, a.example_ids, note=a.message)
        return self.triplets

    def _on_iteration(self, change=None) -> None:
        if self._quiet:
            return
        rec = self.records
        iters = A.iterations_of(rec.examples)
        s = A.run_settings(rec)
        label = A.run_label(rec)
        t = self.iteration.value if iters else None
        self.iteration_html.value = iteration_html(rec, t)
        if iters:
            self._slots["decay"].show(
                F.advantage_decay({label: (A.advantage_summary(rec.examples), s["method"])}, "before", t)
            )
        self._slots["score"].show(
            F.scores(
                {label: (A.policy_scores(rec.metrics), s["method"])},
                t,
                score_name=A.score_name(rec.metrics),
                harness={label: getattr(rec, "harness", None)},
            )
        )  # lm-eval scores, if any
        if change is not None:
            for v in self.views:
                v.set_iteration(t)


def iteration_hint(iters: list, live: bool) -> str:
    """Why the iteration slider cannot move yet (one or no finished iteration), and what to do."""
    if len(iters) >= 2:
        text = f"{len(iters)} finished iterations: move the slider to revisit one"
    elif live:
        have = f"only iteration {iters[0]} is finished" if iters else "no iteration is finished yet"
        text = f"{have}: click <b>Whole step</b> to add one, then the slider moves"
    else:
        text = f"this run has {'one finished iteration' if iters else 'no finished iteration'}"
    return f"<span id='tspin-iteration-hint' data-count='{len(iters)}' style='{CARD_STYLE};opacity:0.8'>{text}</span>"


def settings_html(s: dict) -> str:
    samp = ", ".join(f"{k}={v}" for k, v in s["sampling"].items()) or "–"
    planned = s["iterations_planned"] if s["iterations_planned"] is not None else "?"
    values = {"alpha": s["alpha"], "beta": s["beta"], "lam": s["lam"], **s.get("params", {})}
    spec = M.get(s["method"])  # only the knobs this method's loss reads
    knobs = "".join(f" · {M.KNOBS[k].symbol} = {values.get(k, M.KNOBS[k].default):g}" for k in spec.knobs)
    return (
        f"<div id='tspin-settings' style='{CARD_STYLE}'><b>{html.escape(F.method_label(s['method']))}</b>"
        f"{knobs} · iterations {s['iterations_done']}/{planned}"
        f" · model {html.escape(str(s['model']))} · seed {s['seed']}"
        f"<br><span style='opacity:0.8'>sampling: {html.escape(samp)}"
        + (f" · run dir <code>{html.escape(s['run_dir'])}</code>" if s["run_dir"] else "")
        + "</span></div>"
    )


def iteration_html(rec, t) -> str:
    if t is None:
        return (
            f"<div id='tspin-iteration-summary' data-iteration='' style='{CARD_STYLE}'>No finished iteration yet.</div>"
        )
    ex = rec.examples
    part = ex[ex["iteration"] == t]
    m = rec.metrics[rec.metrics["iteration"] == t] if rec.metrics is not None and len(rec.metrics) else None
    row = m.iloc[0].to_dict() if m is not None and len(m) else {}
    u, v = part["current_advantage_before"], part["historical_advantage_before"]
    return (
        f"<div id='tspin-iteration-summary' data-iteration='{t}' style='{CARD_STYLE}'>"
        f"<b>iteration {t}</b> ({len(part):,} triplets)"
        f" · score π_{t} {fmt(row.get('score_before'), '.3f')} → π_{t + 1} {fmt(row.get('score_after'), '.3f')}"
        f" · u mean {fmt(u.mean())} nats (median {fmt(u.median())}) · v mean {fmt(v.mean())} nats"
        f" · y'==y {part['synthetic_equals_annotated'].mean():.1%} · y0==y {part['proto_equals_annotated'].mean():.1%}"
        f" · misaligned {part['misaligned'].mean():.1%} · loss {fmt(part['loss'].mean(), '.3f')}"
        f" · β used {fmt(row.get('beta'), '.3g')} · lr {fmt(row.get('lr'), '.2g')}</div>"
    )
