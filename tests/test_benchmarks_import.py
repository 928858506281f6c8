"""Every name a benchmark imports from the package exists (benchmarks import lazily inside main(), so a renamed
engine function would only show when someone runs the benchmark; running them all is too slow for CI)."""

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_benchmark_imports_resolve(script):
    tree = ast.parse((BENCH / script).read_text())
    missing = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("tspin_kit", "widgets"):
            mod = importlib.import_module(node.module)
            missing += [
                f"{node.module}.{a.name}"
                for a in node.names
                if not hasattr(mod, a.name) and importlib.util.find_spec(f"{node.module}.{a.name}") is None
            ]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in ("tspin_kit", "widgets"):
                    importlib.import_module(a.name)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tests":
            missing.append(f"{node.module} (benchmarks must not import tests)")
    assert not missing, f"{script}: {missing}"
