"""Metric families: each section of ``metrics.json`` is computed by one function
registered under a name.

A *metric family* is a function ``family(ctx: MetricContext) -> section``: it reads the
shared :class:`MetricContext` (built once per computation) and returns its section as
JSON data (dicts, lists, strings, numbers, booleans, None; numpy integers and floats
and :class:`~safescale.statistics.bootstrap.Estimate` values are converted, non-finite
floats become null). It never calls a language model.

* The bundled families (:data:`BUNDLED_FAMILIES`) are registered in
  :mod:`safescale.statistics.metrics`; each writes the top-level section of its name,
  in that fixed order.
* Any other family goes under one key of ``metrics.json``, ``extra: {name: section}``
  (sorted by name; absent when there is none). It is either registered with
  ``@metric_family("name")`` by code the process imports, or declared by an installed
  distribution as an entry point in group :data:`ENTRY_POINT_GROUP` (``safescale.metrics``)
  whose name is the family's name; entry points are looked up each time metrics are
  computed.

Rules: a name is a slug and not a bundled family's name; the context is shared, so a
family treats it (the outcome frame and the groups above all) as read-only; a family
that raises, or returns something that is not JSON data, stops the computation with a
:class:`MetricFamilyError` naming it. The ``metrics.json`` rewrites that mark a rate
"not labeled" (a corpus without the safety label it needs) touch only the bundled
sections: a family's own rates over such corpora are its own to mark
(``ctx.corpora[name].safety_labels.is_labeled("high_risk")``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from safescale.registry import AmbiguousEntryPointError, EntryPointLoadError, Registry
from safescale.rundir import check_slug

if TYPE_CHECKING:
    import pandas as pd

    from safescale.corpora.corpus import Corpus
    from safescale.rundir import AttributionRecord, RelianceRecord, ResponseRecord
    from safescale.statistics.bootstrap import BootstrapConfig
    from safescale.statistics.metrics import MetricsConfig, Resampler

__all__ = [
    "BUNDLED_FAMILIES",
    "ENTRY_POINT_GROUP",
    "METRIC_FAMILIES",
    "MetricContext",
    "MetricFamily",
    "MetricFamilyError",
    "bundled_families",
    "extra_families",
    "metric_family",
    "run_family",
]

#: The entry-point group an installed distribution declares its metric families in.
ENTRY_POINT_GROUP = "safescale.metrics"

#: The bundled families, in the order their sections appear in ``metrics.json``.
BUNDLED_FAMILIES: tuple[str, ...] = (
    "run",
    "settings",
    "definitions",
    "validity",
    "cells",
    "comparisons",
    "concentration",
    "attribution",
    "grade_override",
    "transitions",
    "distractors",
    "dose_response",
    "reliance",
    "scaling",
    "triage",
    "labels",
)


@dataclass(frozen=True)
class MetricContext:
    """What every metric family reads: built once per metrics computation.

    Attributes:
        records: the responses (at most one per model, condition, item and setting).
        corpora: the corpora the items come from, by name.
        frame: the outcome frame of the records (one row per response, see
            :func:`safescale.statistics.metrics.outcome_frame`).
        groups: the frame split by cell, keyed by
            :data:`safescale.statistics.metrics.CELL_KEYS` values
            ``(model, corpus, condition, samples_budget, conflict_dose, context_budget,
            retrieval_k)`` (context budget 0 = the model's maximum).
        unit: the bootstrap resampling unit, ``"evidence_id"`` or ``"item"``.
        resampler: the bootstrap resampler shared by every interval (one resample per
            set of units, so a family's intervals are coherent with the cells').
        bootstrap: bootstrap settings.
        metrics: metric settings (``metrics:`` of the run config).
        models: the models in report order.
        corpus_names: the corpora the records come from, sorted.
        conditions: the conditions in report order (bundled in paper order, then the
            others by name).
        samples_budgets: the samples budgets, ascending.
        conflict_doses: the conflict doses, ascending.
        context_budgets: the context budgets, ascending, 0 (the model's maximum) last.
        retrieval_ks: the retrieval depths, ascending.
        settings: the ``(samples_budget, conflict_dose, context_budget, retrieval_k)``
            combinations present, in report order.
        attribution: failure attributions (``attribution.jsonl``).
        distractors: clean evidence -> retrieval transitions with the gold passages
            present (:func:`safescale.statistics.evidence_effects.distractor_transitions`).
        reliance: causal-reliance records (``reliance.jsonl``).
        triage: detection results (``detection/*/triage.json``), or None.
        formulations: ``{model: {corpus: answer calibration record}}`` (manifest).
        model_info: ``{model: manifest model entry}`` (parameter count, context length).
        run_info: extra entries of the ``run`` section (directory, name, notes).
    """

    records: Sequence[ResponseRecord]
    corpora: Mapping[str, Corpus]
    frame: pd.DataFrame
    groups: Mapping[tuple, pd.DataFrame]
    unit: str
    resampler: Resampler
    bootstrap: BootstrapConfig
    metrics: MetricsConfig
    models: tuple[str, ...]
    corpus_names: tuple[str, ...]
    conditions: tuple[str, ...]
    samples_budgets: tuple[int, ...]
    conflict_doses: tuple[int, ...]
    context_budgets: tuple[int, ...]
    retrieval_ks: tuple[int, ...]
    settings: tuple[tuple[int, int, int, int], ...]
    attribution: Sequence[AttributionRecord]
    distractors: Sequence[dict[str, Any]]
    reliance: Sequence[RelianceRecord]
    triage: list[dict[str, Any]] | None
    formulations: Mapping[str, Mapping[str, Any]]
    model_info: Mapping[str, Mapping[str, Any]]
    run_info: Mapping[str, Any]


MetricFamily = Callable[[MetricContext], Any]

#: Every metric family by name: the bundled ones (registered when
#: :mod:`safescale.statistics.metrics` is imported), those registered with
#: :func:`metric_family`, and the entry points of :data:`ENTRY_POINT_GROUP`.
METRIC_FAMILIES: Registry[MetricFamily] = Registry(
    "metric family",
    group=ENTRY_POINT_GROUP,
    bundled=dict.fromkeys(BUNDLED_FAMILIES, "safescale.statistics.metrics"),
)


class MetricFamilyError(ValueError):
    """A metric family that cannot be used: it clashes with a bundled one, its entry
    point does not load, it raised, or its section is not JSON data."""


def _check_name(name: str) -> str:
    check_slug(name, "metric family name")
    if name in BUNDLED_FAMILIES:
        raise MetricFamilyError(
            f"metric family {name!r} has the name of a bundled family (the {name!r} "
            "section of metrics.json); give it its own name"
        )
    return name


def metric_family(name: str) -> Callable[[MetricFamily], MetricFamily]:
    """Register ``family(ctx: MetricContext) -> section`` under ``name``: its section
    goes to ``metrics.json`` under ``extra[name]``.

    Raises:
        MetricFamilyError: ``name`` is a bundled family's name.
        ValueError: ``name`` is not a slug, or another function holds it.
    """
    _check_name(name)

    def wrap(family: MetricFamily) -> MetricFamily:
        if not callable(family):
            raise MetricFamilyError(f"metric family {name!r} is not a function")
        return METRIC_FAMILIES.register(name, family)

    return wrap


def bundled_families() -> list[tuple[str, MetricFamily]]:
    """The bundled families in :data:`BUNDLED_FAMILIES` order."""
    found = []
    for name in BUNDLED_FAMILIES:
        family = METRIC_FAMILIES.get(name)
        if family is None:  # the bundled module does not register it: a packaging bug
            raise RuntimeError(f"bundled metric family {name!r} is not registered")
        found.append((name, family))
    return found


def _entry_point_family(name: str) -> MetricFamily:
    """The function the installed entry point ``name`` declares (not registered).

    Raises:
        MetricFamilyError: it clashes, does not load or is not a function.
    """
    values = [ep.value for ep in METRIC_FAMILIES.entry_points()[name]]
    where = f"metric family entry point {name!r} ({', '.join(values)})"
    if name in BUNDLED_FAMILIES:
        raise MetricFamilyError(
            f"{where} has the name of a bundled family (the {name!r} section of "
            "metrics.json); rename the entry point"
        )
    try:
        check_slug(name, "metric family name")
        family = METRIC_FAMILIES.load_entry_point(name)
    except ValueError as error:
        raise MetricFamilyError(f"{where}: {error}") from None
    except AmbiguousEntryPointError as error:
        raise MetricFamilyError(
            f"metric family {name!r} is declared by {len(error.values)} entry points "
            f"({', '.join(error.values)}); uninstall all but one"
        ) from None
    except EntryPointLoadError as error:
        if not isinstance(error.cause, Exception):
            raise error.cause from None
        raise MetricFamilyError(
            f"loading {where} failed: {type(error.cause).__name__}: {error.cause}"
        ) from error.cause
    if not callable(family):
        raise MetricFamilyError(f"{where} is not a function")
    held = METRIC_FAMILIES.registered().get(name)
    if held is not None and held is not family:
        raise MetricFamilyError(
            f"{where} is another function than the metric family registered as {name!r} "
            f"({held}); uninstall one or rename it"
        )
    registered_as = METRIC_FAMILIES.name_of(family)
    if registered_as is not None and registered_as != name:
        raise MetricFamilyError(
            f"{where} is registered as {registered_as!r}; name the entry point {registered_as!r}"
        )
    return family  # type: ignore[return-value]


def extra_families() -> list[tuple[str, MetricFamily]]:
    """The families that are not bundled, sorted by name: those registered with
    :func:`metric_family` and the installed entry points of :data:`ENTRY_POINT_GROUP`
    (loaded now; the same function both registered and declared counts once).

    Raises:
        MetricFamilyError: an entry point clashes with a bundled or registered family,
            does not load or is not a function.
    """
    found = {
        name: family
        for name, family in METRIC_FAMILIES.registered().items()
        if name not in BUNDLED_FAMILIES
    }
    for name in METRIC_FAMILIES.entry_points():
        found[name] = _entry_point_family(name)
    return sorted(found.items())


def run_family(name: str, family: MetricFamily, ctx: MetricContext) -> Any:
    """``family(ctx)``; a failure names the family.

    A bundled family's exception propagates unchanged with a note naming the family;
    any other family's becomes a :class:`MetricFamilyError`.
    """
    try:
        return family(ctx)
    except Exception as error:
        if name in BUNDLED_FAMILIES:
            error.add_note(f"(in the bundled metric family {name!r})")
            raise
        raise MetricFamilyError(
            f"metric family {name!r} failed: {type(error).__name__}: {error}"
        ) from error
