"""Test-only helper modules (not tests, not fixtures): ``from helpers.bpe_world import ...``.

pytest puts ``tests/`` on ``sys.path`` (rootdir-based ``prepend`` import mode: ``tests/`` has no
``__init__.py``), so the tests and ``tests/browser`` import these as ``helpers.<module>``.
Fixtures stay in ``tests/conftest.py``; synthetic run records live in the package
(``tspin_kit.synthetic``).
"""
