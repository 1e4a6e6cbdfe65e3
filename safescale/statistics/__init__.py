"""Statistics of a finished run (no language model, no torch): the metrics of
``metrics.json`` as registered families, bootstrap intervals, power and minimum
detectable effects, clustering of correlated items, validity checks, evidence effects
(grade override, transitions, dose response) and the scaling analysis.

Every function here reads frozen records and corpus labels only; importing the package
imports none of its modules.
"""
