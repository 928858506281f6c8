"""The package version, in a module that imports nothing, so any module can read it without
importing the package ``__init__`` (which imports the engine). pyproject.toml reads it too
(``[tool.setuptools.dynamic]``)."""

__version__ = "0.1.0"
