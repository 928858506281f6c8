"""Screenshot of the workshop dashboard (``notebooks/dashboard.ipynb`` in Voila, smoke mode) for the README.

    .venv/bin/python scripts/screenshot_dashboard.py [--out docs/img/dashboard.png]

What ``make dashboard`` serves (the "tspin" Voila template, no CDN), on a smoke-sized run made first
in a temporary folder: the page is opened in Debian chromium, Prepare and one Whole step are clicked
on the "Live run" tab, and the page is saved once every figure has drawn. Needs /usr/bin/chromium
(``scripts/install_browser.sh``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# imported after the sys.path insert above, which makes `tests` importable from a checkout
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, free_port, stop, wait_port  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "dashboard.png")
    args = p.parse_args(argv)
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for d in ("config", "runtime", "ipython"):
            (tmp / d).mkdir()
        env = dict(
            os.environ,
            TSPIN_SMOKE="1",
            TSPIN_RUNS=str(tmp / "runs"),
            TSPIN_PROGRESS="0",
            OMP_NUM_THREADS="1",
            JUPYTER_PATH=str(ROOT / "widgets" / "share"),
            JUPYTER_CONFIG_DIR=str(tmp / "config"),
            JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
            IPYTHONDIR=str(tmp / "ipython"),
            PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        )
        nb = tmp / "dashboard.ipynb"
        shutil.copy(ROOT / "notebooks" / "dashboard.ipynb", nb)
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from tspin_kit import presets; presets.run_toy(presets.toy_config('tspin', smoke=True))",
            ],
            env=env,
            cwd=tmp,
            check=True,
            capture_output=True,
            timeout=600,
        )
        port = free_port()
        log = tmp / "voila.log"
        with open(log, "w") as fh:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "voila",
                    "--no-browser",
                    f"--port={port}",
                    "--Voila.ip=127.0.0.1",
                    "--template=tspin",
                    str(nb),
                ],
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=tmp,
            )
        try:
            wait_port(port, 60, proc, log)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
                page = browser.new_page(viewport={"width": 1280, "height": 1500}, device_scale_factor=1)
                page.set_default_timeout(120_000)
                page.goto(f"http://127.0.0.1:{port}/", timeout=120_000)
                status = page.locator("#tspin-status")
                expect(status).to_contain_text("ready", timeout=120_000)
                page.locator("button:has-text('Prepare')").click()
                expect(status).to_contain_text("prepare done", timeout=120_000)
                page.locator("button:has-text('Whole step')").click()
                expect(status).to_contain_text("step done", timeout=300_000)
                page.wait_for_function(
                    "() => { const g = [...document.querySelectorAll('.tspin-plot')].filter(g => g.offsetParent);"
                    " return g.length >= 2 && g.every(x => x._fullLayout && !x.dataset.error); }"
                )
                page.wait_for_timeout(500)  # let the last resize settle before the picture
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
        finally:
            stop(proc)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
