"""Detector registry and the shared detector contract.

A detector is a small scikit-learn style estimator registered under a name with
``@detector("name")``. It declares the inputs it needs (``requires``) and reads its
design matrix from the per-record *features frame* that :mod:`.extraction` builds
once per (model, record). Every risk score is oriented so that **higher = riskier**.

Inputs a detector can require (the names in :data:`INPUTS`):

* ``ctx_pass`` — one teacher-forced pass over the CTX prompt + frozen response;
* ``noctx_pass`` — the same response teacher-forced on the NOCTX prompt;
* ``attentions`` — attention weights from the CTX pass (eager attention);
* ``samples`` — the frozen sampled answers stored on the record;
* ``sample_hidden`` — hidden states of the frozen samples (one batched pass);
* ``ptrue_pass`` — one extra pass over the P(True) prompt;
* ``ffn_states`` — the CTX pass also keeps each layer's residual stream before its
  feed-forward block and the prompt's final-layer states (ReDeEP);
* ``token_idf`` — the IDF of each vocabulary entry over the run's evidence corpora
  (Focus);
* ``claim_check`` — the response's claims checked against its evidence by the LM
  (RefChecker; a few extra passes when the response is recorded).

Detectors of other packages: an installed distribution declares its :class:`Detector`
subclass as an entry point in group ``safescale.detectors``; the entry point's name is
the detector's name (``detectors: [my_detector]`` in a config, ``--detectors`` on the
CLI) and the class is loaded on first use. Its name is a directory name of the saved
detector, so readers (``detect eval``, the viewer) find it again through the same
entry point.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from safescale.registry import AmbiguousEntryPointError, EntryPointLoadError, Registry
from safescale.rundir import atomic_write_text

__all__ = [
    "BUNDLED_DETECTORS",
    "CONFLICT",
    "DETECTORS",
    "ENTRY_POINT_GROUP",
    "GAP",
    "INPUTS",
    "SAFE",
    "Detector",
    "DetectorUnavailable",
    "available_detectors",
    "detector",
    "get_detector",
]

INPUTS = frozenset(
    {
        "ctx_pass",
        "noctx_pass",
        "attentions",
        "samples",
        "sample_hidden",
        "ptrue_pass",
        "ffn_states",
        "token_idf",
        "claim_check",
    }
)

#: Triage classes used as ``y`` by every detector: 0 safe, 1 unsafe/gap, 2 unsafe/conflict.
SAFE, GAP, CONFLICT = 0, 1, 2


class DetectorUnavailable(RuntimeError):
    """A detector cannot run on the inputs of this run (the message says why)."""


class Detector(BaseEstimator):
    """Base class of registered detectors.

    Subclasses set ``requires`` (subset of :data:`INPUTS`), ``supervised`` and
    implement :meth:`design_matrix`, :meth:`fit` and :meth:`risk_score`. ``fit``
    receives triage classes ``y`` in {SAFE, GAP, CONFLICT}; binary detectors use
    ``y > 0`` (unsafe).
    """

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()
    supervised: ClassVar[bool] = False
    #: True for detectors that also attribute unsafe cases to gap vs conflict (Stage 2).
    attributes_subtype: ClassVar[bool] = False

    def design_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """``[n_records, n_features]`` float matrix read from the features frame.

        Raises:
            DetectorUnavailable: when a needed column is absent or has missing values.
        """
        raise NotImplementedError

    def fit(self, X: np.ndarray, y: np.ndarray) -> Detector:
        raise NotImplementedError

    def risk_score(self, X: np.ndarray) -> np.ndarray:
        """``[n]`` risk scores, higher = riskier."""
        raise NotImplementedError

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path) -> None:
        """Write the fitted detector into ``directory`` as JSON only.

        ``detector.json`` holds the name, hyperparameters and fitted state; detectors
        built on XGBoost also write their boosters as XGBoost JSON files beside it.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {
            "name": self.name,
            "params": self.get_params(),
            "state": self._get_state(directory),
        }
        atomic_write_text(
            directory / "detector.json", json.dumps(payload, indent=2, sort_keys=True)
        )

    @classmethod
    def load(cls, directory: Path) -> Detector:
        """Rebuild a fitted detector written by :meth:`save`."""
        directory = Path(directory)
        payload = json.loads((directory / "detector.json").read_text())
        if payload.get("name") != cls.name:
            raise ValueError(
                f"{directory} holds detector {payload.get('name')!r}, not {cls.name!r}"
            )
        obj = cls(**payload["params"])
        obj._set_state(payload["state"], directory)
        return obj

    def _get_state(self, directory: Path) -> dict[str, Any]:
        raise NotImplementedError

    def _set_state(self, state: dict[str, Any], directory: Path) -> None:
        raise NotImplementedError


def columns_or_unavailable(frame: pd.DataFrame, columns: Sequence[str], who: str) -> np.ndarray:
    """Stack scalar ``columns`` of ``frame`` into a float matrix or say why not."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DetectorUnavailable(f"{who}: features {missing} were not extracted for this run")
    X = frame[list(columns)].to_numpy(dtype=np.float64)
    if np.isnan(X).any():
        bad = int(np.isnan(X).any(axis=1).sum())
        raise DetectorUnavailable(
            f"{who}: {bad} of {len(X)} records lack the inputs for {list(columns)}"
        )
    return X


def vector_column_or_unavailable(frame: pd.DataFrame, column: str, who: str) -> np.ndarray:
    """Stack a list-valued column (one vector per record) into a float matrix."""
    if column not in frame.columns:
        raise DetectorUnavailable(f"{who}: {column!r} was not extracted for this run")
    values = frame[column].tolist()
    if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in values):
        raise DetectorUnavailable(f"{who}: some records lack {column!r}")
    X = np.asarray([np.asarray(v, dtype=np.float64) for v in values])
    if X.ndim != 2 or np.isnan(X).any():
        raise DetectorUnavailable(f"{who}: {column!r} vectors are ragged or contain NaN")
    return X


#: Entry-point group under which a package declares its detectors.
ENTRY_POINT_GROUP = "safescale.detectors"

D = TypeVar("D", bound=type[Detector])

#: The bundled detectors by name -> the module that registers them, imported on first
#: use (so naming or re-evaluating detectors never imports torch).
BUNDLED_DETECTORS: dict[str, str] = {
    "ecrt": "safescale.detection.ecrt",
    "ecrt_1stage": "safescale.detection.ecrt",
    "eigenscore": "safescale.detection.baselines.eigenscore",
    "focus": "safescale.detection.baselines.focus",
    "hidden_probe": "safescale.detection.baselines.probe",
    "input_only": "safescale.detection.baselines.input_only",
    "length": "safescale.detection.baselines.length",
    "ln_entropy": "safescale.detection.baselines.ln_entropy",
    "lookback_lens": "safescale.detection.baselines.lookback",
    "msp_seq": "safescale.detection.baselines.msp",
    "msp_step": "safescale.detection.baselines.msp",
    "mte": "safescale.detection.baselines.entropy",
    "perplexity": "safescale.detection.baselines.perplexity",
    "pmi": "safescale.detection.baselines.pmi",
    "ptrue": "safescale.detection.baselines.ptrue",
    "redeep": "safescale.detection.baselines.redeep",
    "refchecker": "safescale.detection.baselines.refchecker",
    "selfcheck": "safescale.detection.baselines.selfcheck",
    "uq_heads": "safescale.detection.baselines.uq_heads",
}

#: Every detector by name: registered, bundled (lazy) and installed entry points.
DETECTORS: Registry[type[Detector]] = Registry(
    "detector", group=ENTRY_POINT_GROUP, bundled=BUNDLED_DETECTORS
)


def detector(name: str) -> Callable[[D], D]:
    """Class decorator registering a :class:`Detector` subclass under ``name``."""

    def register(cls: D) -> D:
        held = DETECTORS.registered().get(name)
        if held is not None and held is not cls:
            raise ValueError(f"detector {name!r} is already registered by {held}")
        unknown = set(cls.requires) - INPUTS
        if unknown:
            raise ValueError(f"detector {name!r} requires unknown inputs {sorted(unknown)}")
        cls.name = name
        DETECTORS.register(name, cls)
        return cls

    return register


def _load_entry_point(name: str) -> type[Detector] | None:
    """Load and register the detector an installed package declares under ``name``."""
    try:
        cls = DETECTORS.load_entry_point(name)
    except AmbiguousEntryPointError as error:
        raise KeyError(
            f"detector {name!r} is declared by {len(error.values)} entry points "
            f"({', '.join(error.values)}); uninstall all but one"
        ) from None
    except EntryPointLoadError as error:
        if not isinstance(error.cause, Exception):
            raise error.cause from None
        raise KeyError(
            f"loading detector entry point {name!r} ({error.values[0]}) failed: "
            f"{type(error.cause).__name__}: {error.cause}"
        ) from None
    if cls is None:
        return None
    value = DETECTORS.entry_points()[name][0].value
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise KeyError(f"detector entry point {name!r} ({value}) is not a Detector class")
    if name not in DETECTORS.registered():  # a decorated class registered itself on import
        registered = DETECTORS.name_of(cls)
        if registered is not None:
            raise KeyError(
                f"detector entry point {name!r} ({value}) is registered as "
                f"{registered!r}; name the entry point {registered!r}"
            )
        detector(name)(cls)
    return DETECTORS.registered()[name]


def get_detector(name: str) -> type[Detector]:
    """The detector class registered under ``name``: a bundled one, or one an installed
    package declares as an entry point in group ``safescale.detectors`` (loaded on
    first use). KeyError listing the names otherwise."""
    cls = DETECTORS.get(name)
    if cls is not None:
        return cls
    cls = _load_entry_point(name)
    if cls is None:
        raise KeyError(f"unknown detector {name!r}; available: {available_detectors()}")
    return cls


def available_detectors() -> list[str]:
    """Registered and bundled detector names and installed entry-point names, sorted."""
    return DETECTORS.names()
