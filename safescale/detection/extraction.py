"""Per-record feature extraction: the shared teacher-forced passes, computed once.

For each frozen :class:`~safescale.agents.records.ResponseRecord` the response text is
tokenized once and teacher-forced twice — on ``record.message`` (CTX) and on
``record.message_noctx`` (NOCTX). Every feature that needs a CTX pass (ECRT, perplexity,
MSP, MTE, PMI, length, the hidden-state probe and — when attentions are requested —
the Lookback-Lens ratios from the *same* pass) reads these two passes. Only P(True)
(one extra pass) and EigenScore (one batched pass over the frozen samples) add model
calls, and only when those detectors are requested. Nothing is ever generated.

Results are cached per (model hash, record content, extraction settings) as JSON files,
so re-running detection on the same responses calls no model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from safescale.agents.records import ResponseRecord
from safescale.detection.baselines.eigenscore import eigenscore, sample_embeddings
from safescale.detection.baselines.entropy import mean_token_entropy
from safescale.detection.baselines.ln_entropy import ln_entropy
from safescale.detection.baselines.lookback import lookback_ratios
from safescale.detection.baselines.msp import msp_seq, msp_step
from safescale.detection.baselines.perplexity import nll_mean
from safescale.detection.baselines.pmi import ctx_noctx_pmi
from safescale.detection.baselines.probe import probe_layer, probe_vector
from safescale.detection.baselines.ptrue import ptrue_nll
from safescale.detection.baselines.selfcheck import selfcheck_inconsistency
from safescale.detection.ecrt import ECRT_PREFIX
from safescale.detection.ecrt_features import ecrt_features
from safescale.detection.registry import get_detector
from safescale.models.internals import Internals

if TYPE_CHECKING:
    from safescale.models.backend import LanguageModel

__all__ = [
    "FEATURE_VERSION",
    "ExtractionPlan",
    "FeatureCache",
    "extract_features",
    "pass_columns",
    "record_key",
    "teacher_forced_pair",
]

#: Bump when a feature formula changes: cached features of older versions are ignored.
FEATURE_VERSION = 1


@dataclass(frozen=True)
class ExtractionPlan:
    """What to compute per record.

    Attributes:
        attentions: run the CTX pass with eager attention and keep Lookback ratios.
        samples: sample-based scores from the frozen samples (no model call).
        sample_hidden: EigenScore (one batched pass over the samples).
        ptrue: P(True) (one extra pass).
        probe_layer_fraction: depth fraction of the hidden-state probe layer.
    """

    attentions: bool = False
    samples: bool = False
    sample_hidden: bool = False
    ptrue: bool = False
    probe_layer_fraction: float = 0.75

    @classmethod
    def for_detectors(
        cls, names: Iterable[str], probe_layer_fraction: float = 0.75
    ) -> ExtractionPlan:
        """The plan covering the inputs of the named registered detectors."""
        needs: set[str] = set()
        for name in names:
            needs |= get_detector(name).requires
        return cls(
            attentions="attentions" in needs,
            samples="samples" in needs,
            sample_hidden="sample_hidden" in needs,
            ptrue="ptrue_pass" in needs,
            probe_layer_fraction=probe_layer_fraction,
        )


def _digest(payload: object) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def record_key(record: ResponseRecord) -> str:
    """Content digest of a record (what its features depend on besides the model)."""
    return _digest(
        {
            "message": record.message,
            "message_noctx": record.message_noctx,
            "response": record.response,
            "chosen": record.chosen,
            "samples": [[s.token_ids, s.token_logprobs, s.letter] for s in record.samples],
        }
    )[:32]


class FeatureCache:
    """JSON files under ``directory/<group>/<key>.json`` (atomic writes).

    ``directory=None`` disables caching.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = None if directory is None else Path(directory)
        self.hits = 0
        self.misses = 0

    def _path(self, group: str, key: str) -> Path:
        assert self.directory is not None
        return self.directory / group / f"{key}.json"

    def get(self, group: str, key: str) -> dict[str, Any] | None:
        if self.directory is None:
            return None
        path = self._path(group, key)
        if not path.is_file():
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(path.read_text())

    def put(self, group: str, key: str, payload: dict[str, Any]) -> None:
        if self.directory is None:
            return
        path = self._path(group, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle)
        os.replace(tmp, path)


def teacher_forced_pair(
    lm: LanguageModel, record: ResponseRecord, *, attentions: bool = False
) -> tuple[Internals, Internals]:
    """The CTX and NOCTX passes over the same response token ids (two forward passes)."""
    response_ids = list(lm.tokenizer(record.response, add_special_tokens=False)["input_ids"])
    if not response_ids:
        raise ValueError(f"record {record.item!r}/{record.condition!r} has an empty response")
    ctx = lm.internals(record.message, response_ids, attentions=attentions, lens="none")
    noctx = lm.internals(record.message_noctx, response_ids, lens="none")
    return ctx, noctx


def pass_columns(ctx: Internals, noctx: Internals, *, probe_layer_index: int) -> dict[str, Any]:
    """Every column derived from the CTX/NOCTX pair (ECRT + pass-based baselines)."""
    row: dict[str, Any] = {f"{ECRT_PREFIX}{k}": v for k, v in ecrt_features(ctx, noctx).items()}
    row.update(
        {
            "nll_mean": nll_mean(ctx),
            "msp_seq": msp_seq(ctx),
            "msp_step": msp_step(ctx),
            "mte": mean_token_entropy(ctx),
            "pmi": ctx_noctx_pmi(ctx, noctx),
            "length": float(ctx.response_ids.numel()),
            "probe_hidden": probe_vector(ctx, probe_layer_index).tolist(),
        }
    )
    if ctx.attentions is not None:
        row["lookback"] = lookback_ratios(ctx).tolist()
    return row


def _pass_group(
    lm: LanguageModel, record: ResponseRecord, plan: ExtractionPlan, cache: FeatureCache
) -> dict[str, Any]:
    layer = probe_layer(lm.n_layers, plan.probe_layer_fraction)
    base = {
        "v": FEATURE_VERSION,
        "model": lm.model_hash,
        "record": record_key(record),
        "layer": layer,
    }
    key_attn = _digest({**base, "attentions": True})
    key_plain = _digest({**base, "attentions": False})
    for key in [key_attn] if plan.attentions else [key_plain, key_attn]:
        hit = cache.get("passes", key)
        if hit is not None:
            return hit
    ctx, noctx = teacher_forced_pair(lm, record, attentions=plan.attentions)
    row = pass_columns(ctx, noctx, probe_layer_index=layer)
    cache.put("passes", key_attn if plan.attentions else key_plain, row)
    return row


def _ptrue_group(lm: LanguageModel, record: ResponseRecord, cache: FeatureCache) -> dict[str, Any]:
    key = _digest(
        {"v": FEATURE_VERSION, "model": lm.model_hash, "m": record.message, "r": record.response}
    )
    hit = cache.get("ptrue", key)
    if hit is None:
        hit = {"ptrue_nll": ptrue_nll(lm, record)}
        cache.put("ptrue", key, hit)
    return hit


def _eigen_group(lm: LanguageModel, record: ResponseRecord, cache: FeatureCache) -> dict[str, Any]:
    samples = [s.token_ids for s in record.samples]
    key = _digest({"v": FEATURE_VERSION, "model": lm.model_hash, "m": record.message, "s": samples})
    hit = cache.get("eigen", key)
    if hit is None:
        Z = sample_embeddings(lm, record.message, record.samples, lm.n_layers // 2)
        hit = {"eigenscore": eigenscore(Z) if Z.shape[0] >= 2 else math.nan}
        cache.put("eigen", key, hit)
    return hit


def extract_features(
    records: Sequence[ResponseRecord],
    lm: LanguageModel,
    plan: ExtractionPlan | None = None,
    *,
    cache: FeatureCache | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """One row of features per record (identity columns first, then features).

    Sample-based columns are NaN for records without samples (those detectors then
    report themselves unavailable).
    """
    plan = plan or ExtractionPlan()
    cache = cache or FeatureCache(None)
    rows = []
    for i, record in enumerate(records):
        row: dict[str, Any] = {
            "run": record.run,
            "model": record.model,
            "condition": record.condition,
            "item": record.item,
            "record_key": record_key(record),
            "n_samples": len(record.samples),
        }
        row.update(_pass_group(lm, record, plan, cache))
        if plan.samples:
            row["ln_entropy"] = ln_entropy(record.samples)
            row["selfcheck"] = selfcheck_inconsistency(record.chosen, record.samples)
        if plan.sample_hidden:
            row.update(_eigen_group(lm, record, cache))
        if plan.ptrue:
            row.update(_ptrue_group(lm, record, cache))
        rows.append(row)
        if progress is not None:
            progress(i + 1, len(records))
    return pd.DataFrame(rows)
