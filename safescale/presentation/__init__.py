"""Presentation of a finished run: the report (rich tables and ``report.md``), the
plots, the scaling section and the Inspect AI export, all rendered from
``metrics.json`` and the run records (no language model, no torch).

Importing the package imports none of its modules.
"""
