"""Fixtures for the browser tests: a real JupyterLab / Voila server and Debian chromium via Playwright.

Follows ``../shared/docs/browser-testing.md``: a free port per run with ``port_retries=0`` (a fixed
port once let a leftover server answer the readiness probe), Jupyter config/runtime/IPython dirs in a
temporary folder, an ``overrides.json`` that disables news/update checks and auto-starts the kernel,
chromium launched from ``/usr/bin/chromium`` (``playwright install`` cannot download here), servers
stopped by PID. On failure a full-page screenshot goes to ``test-artifacts/``; with
``TSPIN_SCREENSHOTS=1`` every test keeps its screenshots (for looking at light and dark themes).

The run the notebooks open is made by the records builder and written in the store's layout, then
read by the engine's ``load_run`` inside the notebook: no training, so the tests take seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
NOTEBOOKS = Path(__file__).parent / "notebooks"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
    # windowingMode "none": every cell stays in the DOM (the notebook tests read figures far down)
    "@jupyterlab/notebook-extension:tracker": {"autoStartDefaultKernel": True, "windowingMode": "none"},
}


def pytest_collection_modifyitems(config, items):
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(
        reason="BROWSER TESTS NOT RUN: /usr/bin/chromium is missing; run scripts/install_browser.sh (CI installs it)"
    )
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def wait_port(port: int, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"port {port} not open after {timeout} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """A server root with the notebooks, a run directory, and private Jupyter dirs."""
    from tspin_kit.synthetic import build_records, write_run_dir

    root = tmp_path_factory.mktemp("browser")
    work = root / "work"
    shutil.copytree(NOTEBOOKS, work)
    run_dir = write_run_dir(build_records("tspin", n_examples=300, n_iterations=3, seed=0), work / "run_tspin")
    env = dict(os.environ)
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "JUPYTER_DATA_DIR_UNUSED"):
        (root / name.lower()).mkdir()
    env.update(
        JUPYTER_CONFIG_DIR=str(root / "jupyter_config_dir"),
        JUPYTER_RUNTIME_DIR=str(root / "jupyter_runtime_dir"),
        IPYTHONDIR=str(root / "ipythondir"),
        TSPIN_BROWSER_RUN_DIR=str(run_dir),
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
    )
    settings = root / "app_settings"
    settings.mkdir()
    (settings / "overrides.json").write_text(json.dumps(OVERRIDES))
    return {"root": root, "work": work, "run_dir": run_dir, "env": env, "app_settings": settings}


def lab(workspace, root_dir: Path, env: dict, name: str = "lab"):
    """A JupyterLab server on ``root_dir`` (generator: yields its url/token, stops it by PID)."""
    port, token = free_port(), uuid.uuid4().hex
    log = workspace["root"] / f"{name}.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--allow-root",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        f"--LabApp.app_settings_dir={workspace['app_settings']}",
    ]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=root_dir)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", 60, proc, log)
        yield {"url": f"http://127.0.0.1:{port}", "token": token, "proc": proc, "log": log}
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def lab_server(workspace):
    yield from lab(workspace, workspace["work"], workspace["env"])


def _voila(workspace, notebook: str, template: str | None = None):
    port = free_port()
    env = dict(workspace["env"], JUPYTER_PATH=str(ROOT / "widgets" / "share")) if template else workspace["env"]
    log = workspace["root"] / f"voila-{Path(notebook).stem}.log"
    cmd = [
        sys.executable,
        "-m",
        "voila",
        "--no-browser",
        f"--port={port}",
        "--Voila.ip=127.0.0.1",
        "--VoilaConfiguration.show_tracebacks=True",
        str(workspace["work"] / notebook),
    ] + ([f"--template={template}"] if template else [])
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=workspace["work"])
    try:
        wait_port(port, 60, proc, log)  # not GET / : every GET runs the notebook
        yield {"url": f"http://127.0.0.1:{port}", "proc": proc, "log": log}
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def voila_server(workspace):
    yield from _voila(workspace, "dashboard_voila.ipynb")


@pytest.fixture(scope="session")
def triplets_server(workspace):
    """Voila on a notebook that shows only ``TripletBrowser(run_dir)`` (300 triplets per iteration)."""
    yield from _voila(workspace, "triplets_voila.ipynb", template="tspin")  # make dashboard's: no CDN


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    console: list[str] = []
    pg.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    pg.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    pg._tspin_console = console
    yield pg
    rep = getattr(request.node, "rep_call", None)
    failed = rep is None or rep.failed
    if failed or os.environ.get("TSPIN_SCREENSHOTS"):
        ARTIFACTS.mkdir(exist_ok=True)
        name = request.node.name.replace("/", "_")
        try:
            pg.screenshot(path=str(ARTIFACTS / f"{name}{'-FAILED' if failed else ''}.png"), full_page=True)
        except Exception as e:  # noqa: BLE001 - a failing screenshot must not hide the test's failure
            console.append(f"screenshot failed: {e}")
        (ARTIFACTS / f"{name}.console.txt").write_text("\n".join(console))
    context.close()


@pytest.fixture(scope="session")
def workshop_server(workspace):
    """Voila on the real ``notebooks/dashboard.ipynb`` (smoke settings, its finished run made first),
    with the "tspin" template of ``make dashboard`` (no CDN links)."""
    env = dict(
        workspace["env"],
        TSPIN_SMOKE="1",
        TSPIN_RUNS=str(workspace["root"] / "runs"),
        TSPIN_PROGRESS="0",
        JUPYTER_PATH=str(ROOT / "widgets" / "share"),
    )
    nb = workspace["work"] / "dashboard.ipynb"
    shutil.copy(ROOT / "notebooks" / "dashboard.ipynb", nb)
    # the run exists before the page is opened (the first-render target is "after the run exists")
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from tspin_kit import presets; presets.run_toy(presets.toy_config('tspin', smoke=True))",
        ],
        env=env,
        cwd=workspace["work"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    port = free_port()
    log = workspace["root"] / "workshop_voila.log"
    cmd = [
        sys.executable,
        "-m",
        "voila",
        "--no-browser",
        f"--port={port}",
        "--Voila.ip=127.0.0.1",
        "--template=tspin",
        "--VoilaConfiguration.show_tracebacks=True",
        str(nb),
    ]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=workspace["work"])
    try:
        wait_port(port, 60, proc, log)
        yield {"url": f"http://127.0.0.1:{port}", "proc": proc, "log": log}
    finally:
        stop(proc)


@pytest.fixture
def console(page):
    """The page's console messages and page errors, collected by the ``page`` fixture."""
    return page._tspin_console
