"""Objectives beyond the papers' methods, one module each: a function registered with `tspin_kit.methods.register`,
its literal test in tests/, and its page under docs/methods/. Every module here is imported when the table of
methods is first read (`methods.table`), so nothing else needs editing to add one."""
