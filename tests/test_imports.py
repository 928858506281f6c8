"""Every engine module imports, and the engine never imports the UI layer (docs/architecture.md)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import pytest
from conftest import subprocess_env

import tspin_kit

MODULES = sorted(f"tspin_kit.{m.name}" for m in pkgutil.iter_modules(tspin_kit.__path__))


def test_module_list_is_complete():
    assert {"tspin_kit.session", "tspin_kit.losses", "tspin_kit.store", "tspin_kit.cli"} <= set(
        MODULES
    )


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
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ipywidgets', 'anywidget', 'widgets', 'traitlets', 'IPython'))\n"
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
