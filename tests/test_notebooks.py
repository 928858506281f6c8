"""Every notebook under notebooks/ executes end to end in smoke mode, and is committed clean.

- The list is found by globbing ``notebooks/**/*.ipynb`` (never hand-kept); checkpoints are skipped.
- Execution: nbclient on a temporary copy of ``notebooks/`` (the repository stays clean), with
  ``TSPIN_SMOKE=1`` (tiny settings), ``TSPIN_PROGRESS=0`` (no progress bars), ``TSPIN_CACHE`` and
  ``TSPIN_RUNS`` pointing at one temporary folder shared by all notebooks of the session (pi_0 is trained
  once per setting; a run two notebooks ask for is trained once), widget state not stored (each saved
  FigureWidget would embed a ~5 MB JavaScript bundle), and a per-notebook timeout.
- Workshop exercise notebooks run with their blanks in place: a blank raises NotImplementedError and the
  exercise's check reports "not done yet" instead of failing; the ``*_solution`` notebooks assert that
  their checks pass.
- Committed notebooks have no outputs, no execution counts and no saved widget state, and their first
  markdown cell states the full-mode runtime and the smoke switch.

Execution times are written to ``test-artifacts/notebook_times.json`` (all notebooks together should stay
under 5 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(p for p in NOTEBOOK_DIR.glob("**/*.ipynb") if ".ipynb_checkpoints" not in p.parts)
IDS = [str(p.relative_to(NOTEBOOK_DIR)) for p in NOTEBOOKS]
NOTEBOOK_TIMEOUT = 240  # seconds, one notebook on 2 busy cores
CELL_TIMEOUT = 200
TIMES: dict[str, float] = {}


# ----------------------------------------------------------------------------- the notebooks' helpers


def test_toy_config_smoke_and_full(monkeypatch, tmp_path):
    from tspin_kit import ConfigError, presets

    monkeypatch.setenv("TSPIN_RUNS", str(tmp_path))
    monkeypatch.setenv("TSPIN_SMOKE", "1")
    assert presets.smoke_mode()
    small = presets.toy_config("spin")
    assert (small.data.num_examples, small.iterations, small.method.name) == (64, 2, "spin")
    assert small.run_dir.startswith(str(tmp_path)) and presets.config_hash(small) in small.run_dir
    monkeypatch.setenv("TSPIN_SMOKE", "0")
    full = presets.toy_config("tspin", method={"beta": 0.3}, iterations=10)
    assert (full.data.num_examples, full.model.toy_sft_epochs, full.iterations, full.method.beta) == (1000, 40, 10, 0.3)
    assert presets.toy_config("tspin", run_dir=None).run_dir is None
    assert presets.config_hash(full) != presets.config_hash(presets.toy_config("tspin"))
    with pytest.raises(TypeError, match="bta"):
        presets.toy_config("tspin", method={"bta": 1.0})
    with pytest.raises(ConfigError, match="method.beta"):
        presets.toy_config("tspin", method={"beta": -1.0})


def test_workshop_checks_report_blank_wrong_and_right():
    import math

    import torch
    import torch.nn.functional as F

    from tspin_kit import losses as L
    from tspin_kit.workshop import check_drivers, check_find_alpha, check_tspin_loss

    def blank(*args, **kwargs):
        raise NotImplementedError

    for check in (check_tspin_loss, check_drivers, check_find_alpha):
        result = check(blank)
        assert result.status == "not done yet" and not result, result

    def loss(a, s, p, *, alpha, beta):
        return -F.logsigmoid(alpha * (a - s)) - beta * F.logsigmoid(alpha * (s - p))

    def naive(a, s, p, *, alpha, beta):  # log(sigmoid) overflows for large advantages
        return -torch.log(torch.sigmoid(alpha * (a - s))) - beta * torch.log(torch.sigmoid(alpha * (s - p)))

    assert check_tspin_loss(loss).passed
    assert check_tspin_loss(naive).status == "failed"
    assert (
        check_tspin_loss(lambda a, s, p, *, alpha, beta: loss(a, s, p, alpha=alpha, beta=beta).mean()).status
        == "failed"
    )
    assert check_drivers(
        lambda u, v, *, alpha, beta: torch.sigmoid(-alpha * u) + beta * torch.sigmoid(-alpha * v)
    ).passed
    assert check_drivers(lambda u, v, *, alpha, beta: torch.sigmoid(-alpha * u)).status == "failed"

    def find_alpha(c, target):
        lo, hi = math.log(1e-4), math.log(1e4)
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if L.entropy(L.opponent_distribution(c, math.exp(mid))).item() < target else (lo, mid)
        return math.exp(lo)

    assert check_find_alpha(find_alpha).passed
    assert check_find_alpha(lambda c, target: 1.0).status == "failed"


# ----------------------------------------------------------------------------- the notebooks


def test_notebooks_are_found():
    names = {p.name for p in NOTEBOOKS}
    assert "00_quickstart.ipynb" in names and "dashboard.ipynb" in names, f"found {sorted(names)}"
    assert any(p.parent.name == "workshop" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_clean(path: Path):
    nb = nbformat.read(path, as_version=4)
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state in the notebook metadata"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert not cell.get("outputs"), f"{path.name}, cell {i}: outputs are committed; clear them"
        assert cell.get("execution_count") is None, f"{path.name}, cell {i}: execution count is committed"
        assert "widgets" not in cell.get("metadata", {}), f"{path.name}, cell {i}: saved widget state"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_header_states_runtime_and_smoke_switch(path: Path):
    nb = nbformat.read(path, as_version=4)
    first = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
    assert re.search(r"full mode", first, re.IGNORECASE), (
        f"{path.name}: the first markdown cell must state the full-mode runtime"
    )
    assert re.search(r"\d+(\.\d+)?\s*(s|min|h|seconds|minutes|hours?)\b", first), f"{path.name}: no runtime figure"
    assert "TSPIN_SMOKE" in first, f"{path.name}: the first markdown cell must name the smoke switch TSPIN_SMOKE"
    sources = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "smoke_mode()" in sources, f"{path.name}: no code cell reads the smoke switch"


@pytest.fixture(scope="session")
def smoke_workspace(tmp_path_factory):
    """A copy of notebooks/ plus one shared cache and runs folder for the whole session."""
    base = tmp_path_factory.mktemp("notebooks_smoke")
    shutil.copytree(NOTEBOOK_DIR, base / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints", "runs"))
    env = dict(os.environ)
    env.update(
        {
            "TSPIN_SMOKE": "1",
            "TSPIN_PROGRESS": "0",
            "TSPIN_CACHE": str(base / "cache"),
            "TSPIN_RUNS": str(base / "runs"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "MPLBACKEND": "Agg",
        }
    )
    yield base / "notebooks", env
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "notebook_times.json").write_text(
        json.dumps({**TIMES, "total": round(sum(TIMES.values()), 1)}, indent=2) + "\n"
    )


class _DiscardedWidgetState(dict):
    """Widget state that is never kept: lookups of unknown widgets give a throwaway dict.

    nbclient 0.11 with ``store_widget_state=False`` still writes an Output widget's outputs into
    ``widget_state[comm_id]`` when the kernel clears or writes to an ``ipywidgets.Output`` during a cell
    (``nbclient/output_widget.py``, ``clear_output`` and ``output``), and raises ``KeyError`` because the
    comm was never recorded. Writes into the throwaway dicts vanish, so nothing reaches the notebook.
    """

    def __missing__(self, key):
        return {}


def _client(nb, path: Path):
    from nbclient import NotebookClient

    class Client(NotebookClient):
        def reset_execution_trackers(self) -> None:
            super().reset_execution_trackers()
            self.widget_state = _DiscardedWidgetState()

    return Client(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        store_widget_state=False,
        resources={"metadata": {"path": str(path.parent)}},
    )


@pytest.mark.slow
@pytest.mark.timeout(NOTEBOOK_TIMEOUT)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_executes_in_smoke_mode(path: Path, smoke_workspace):
    copy_root, env = smoke_workspace
    copy = copy_root / path.relative_to(NOTEBOOK_DIR)
    nb = nbformat.read(copy, as_version=4)
    client = _client(nb, copy)
    t0 = time.perf_counter()
    client.execute(env=env)
    TIMES[str(path.relative_to(NOTEBOOK_DIR))] = round(time.perf_counter() - t0, 1)
    assert "widgets" not in nb.metadata, "widget state was stored despite store_widget_state=False"
    if path.stem.startswith("ex") and not path.stem.endswith("_solution"):
        outputs = json.dumps([c.get("outputs", []) for c in nb.cells if c.cell_type == "code"]).lower()
        assert "not done yet" in outputs, f"{path.name}: with the blank in place the check should say 'not done yet'"


@pytest.mark.slow  # starts a Jupyter kernel (about 10 s)
@pytest.mark.timeout(NOTEBOOK_TIMEOUT)
def test_real_model_notebook_in_full_mode_without_a_gpu_stops_in_its_first_cell(tmp_path):
    """05_real_model in full mode on a machine without a GPU (this one, or any with CUDA hidden) stops in its
    first code cell with a message that names the missing GPU and the smoke switch, before any download."""
    from nbclient.exceptions import CellExecutionError

    path = NOTEBOOK_DIR / "05_real_model.ipynb"
    nb = nbformat.read(path, as_version=4)
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells = nb.cells[: first_code + 2]  # the first code cell and the next cell: execution must stop at the first
    env = dict(os.environ)
    env.update(
        {
            "TSPIN_SMOKE": "0",
            "CUDA_VISIBLE_DEVICES": "",
            "TSPIN_PROGRESS": "0",
            "HF_HUB_OFFLINE": "1",
            "TSPIN_RUNS": str(tmp_path / "runs"),
            "TSPIN_CACHE": str(tmp_path / "cache"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
    )
    client = _client(nb, tmp_path / path.name)
    with pytest.raises(CellExecutionError) as err:
        client.execute(env=env)
    message = str(err.value)
    assert "Full mode needs a GPU" in message and "TSPIN_SMOKE=1" in message and "SMOKE = True" in message
    executed = [c for c in nb.cells if c.cell_type == "code" and c.get("execution_count")]
    assert len(executed) == 1  # nothing after the first code cell ran
