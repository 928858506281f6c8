"""Every engine module imports, and the engine never imports the UI layer (docs/architecture.md)."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env

import tspin_kit

MODULES = sorted(f"tspin_kit.{m.name}" for m in pkgutil.iter_modules(tspin_kit.__path__))


def test_module_list_is_complete():
    assert {"tspin_kit.session", "tspin_kit.losses", "tspin_kit.store", "tspin_kit.cli"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    mod = importlib.import_module(name)
    for attr in getattr(mod, "__all__", []):
        assert hasattr(mod, attr), f"{name}.__all__ names {attr!r}, which it does not define"


def test_package_exports():
    for name in tspin_kit.__all__:
        assert getattr(tspin_kit, name) is not None
    with pytest.raises(AttributeError):
        tspin_kit.no_such_name  # noqa: B018


def test_engine_does_not_import_the_ui_layer():
    code = (
        "import importlib, json, sys\n"
        f"for name in {MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('ipywidgets', 'anywidget', 'widgets', 'traitlets', 'IPython'))\n"
        "print(json.dumps(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
        env=subprocess_env(),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_version_has_one_source():
    """``__version__`` lives in ``_version.py`` (imports nothing); the package re-exports it and
    pyproject.toml reads it (the installed metadata agrees)."""
    from importlib.metadata import version

    from tspin_kit._version import __version__

    assert tspin_kit.__version__ == __version__ == version("tspin-kit")
    assert 'attr = "tspin_kit._version.__version__"' in (REPO / "pyproject.toml").read_text()


def test_no_module_imports_upward_from_the_package_init():
    """The package ``__init__`` imports the engine, so an engine module that reads a name from it
    (``from . import __version__``) imports upward: ``from . import X`` and
    ``from tspin_kit import X`` must name a module."""
    root = REPO / "tspin_kit"
    submodules = {p.stem for p in root.glob("*.py")}
    submodules |= {p.parent.name for p in root.glob("*/__init__.py")}
    bad = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "__init__.py":
            continue
        depth = len(path.relative_to(root).parts)  # 1: tspin_kit/x.py, 2: tspin_kit/sub/x.py
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            relative = node.level == depth and node.module is None
            if relative or (node.level == 0 and node.module == "tspin_kit"):
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                bad += [f"{where} {a.name}" for a in node.names if a.name not in submodules]
    assert bad == []
