"""Voila's first render of the workshop dashboard (``notebooks/dashboard.ipynb``, as ``make dashboard``
serves it: the ``tspin`` template, no CDN), after its run exists.

The finished T-SPIN run is made first (smoke settings with ``--quick`` or by default; ``--full`` for the
real settings), then Voila is started once and the page opened ``--repeats`` times in Debian chromium
(each GET runs the notebook in a fresh kernel). First render = from ``page.goto`` until the dashboard's
status line says "ready". Target (issue 8): <= 10 s, median.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = C.parse_quick()
    ap.add_argument("--full", action="store_true", help="the notebook's real settings instead of smoke mode")
    args = ap.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: run scripts/install_browser.sh")
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="bench_voila_"))
    env = {
        **os.environ,
        "TSPIN_SMOKE": "0" if args.full else "1",
        "TSPIN_RUNS": str(root / "runs"),
        "TSPIN_PROGRESS": "0",
        "JUPYTER_PATH": str(C.ROOT / "widgets" / "share"),
        "JUPYTER_CONFIG_DIR": str(root / "cfg"),
        "JUPYTER_RUNTIME_DIR": str(root / "rt"),
        "IPYTHONDIR": str(root / "ipy"),
        "PYTHONPATH": str(C.ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    shutil.copy(C.ROOT / "notebooks" / "dashboard.ipynb", root / "dashboard.ipynb")
    t0 = time.perf_counter()
    smoke = "False" if args.full else "True"
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from tspin_kit import presets; presets.run_toy(presets.toy_config('tspin', smoke={smoke}))",
        ],
        env=env,
        cwd=root,
        check=True,
        capture_output=True,
        timeout=900,
    )
    make_run_s = time.perf_counter() - t0
    port = free_port()
    log = open(root / "voila.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voila",
            "--no-browser",
            f"--port={port}",
            "--Voila.ip=127.0.0.1",
            "--template=tspin",
            str(root / "dashboard.ipynb"),
        ],
        env=env,
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    renders = []
    try:
        for _ in range(600):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            for _ in range(repeats):
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                t = time.monotonic()
                page.goto(f"http://127.0.0.1:{port}/", timeout=120_000)
                page.locator("#tspin-status").filter(has_text="ready").wait_for(timeout=120_000)
                renders.append(time.monotonic() - t)
                page.close()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)
    st = C.stats(renders)
    tgt = C.target("Voila first render of dashboard.ipynb (median)", st["median"], "<=", 10.0, " s")
    result = {
        "benchmark": "voila",
        "quick": args.quick,
        "machine": C.machine_info(),
        "settings": {"mode": "full" if args.full else "smoke", "repeats": repeats, "make_run_s": make_run_s},
        "first_render_s": st,
        "targets": [tgt],
        "met": tgt["met"],
    }
    table = (
        f"Voila first render of notebooks/dashboard.ipynb ({result['settings']['mode']} run, made first in "
        f"{make_run_s:.0f} s): median {st['median']:.1f} s (min {st['min']:.1f}, max {st['max']:.1f}, n={st['n']})\n"
        f"target {tgt['target']}: {'met' if tgt['met'] else 'NOT met'}"
    )
    C.emit(result, table)


if __name__ == "__main__":
    main()
