"""Per-record feature extraction: the shared teacher-forced passes, computed once.

For each frozen :class:`~safescale.rundir.ResponseRecord` the response text is
tokenized once and teacher-forced twice — on ``record.message`` (CTX) and on
``record.message_noctx`` (NOCTX). Every feature that needs a CTX pass (ECRT, perplexity,
MSP, MTE, PMI, length, the hidden-state probe and — when attentions are requested —
the Lookback-Lens ratios from the *same* pass) reads these two passes. Only P(True)
(one extra pass over the CTX sequence + a short suffix) and EigenScore (one batched pass
over the frozen samples) add model calls, and only when those detectors are requested.
Nothing is ever generated.

Results are cached per (model hash, record content, extraction settings) as JSON files,
so re-running detection on the same responses calls no model.

**Shared pass.** When a study is run with detection configured, the answer step itself
records these inputs (:class:`SharedPassRecorder`): the answer prompt is prefilled once
(:meth:`~safescale.models.LanguageModel.open_prompt`), the answer is read from that
cache, the CTX record of the response comes from extending the same cache by the
response tokens (:meth:`~safescale.models.LanguageModel.internals_from`: the same token
sequence ``prompt_ids(message) + response ids`` as the separate pass, equal to float
tolerance), and NOCTX runs on the short prompt. EigenScore reads a view of the prompt
part of that cache, and P(True) (whose prompt starts with the CTX sequence, see
:mod:`~safescale.detection.baselines.ptrue`) extends the CTX cache by a few tokens. The
row of :func:`pass_columns` (plus the EigenScore and P(True) groups) is stored per response key in
the run's ``detection_inputs/`` (:class:`DetectionInputStore`); :func:`extract_features`
reads it there, and only responses without stored inputs need the model.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from safescale.detection.baselines.eigenscore import eigenscore, sample_embeddings
from safescale.detection.baselines.entropy import mean_token_entropy
from safescale.detection.baselines.focus import corpus_idf, focus_score, focus_token_inputs
from safescale.detection.baselines.ln_entropy import ln_entropy
from safescale.detection.baselines.lookback import lookback_ratios
from safescale.detection.baselines.msp import msp_seq, msp_step
from safescale.detection.baselines.perplexity import nll_mean
from safescale.detection.baselines.pmi import ctx_noctx_pmi
from safescale.detection.baselines.probe import probe_layer, probe_vector
from safescale.detection.baselines.ptrue import PTRUE_PROMPT_VERSION, ptrue_nll, ptrue_nll_from
from safescale.detection.baselines.redeep import redeep_inputs
from safescale.detection.baselines.refchecker import REFCHECK_PROMPT_VERSION, check_response
from safescale.detection.baselines.selfcheck import selfcheck_inconsistency
from safescale.detection.baselines.uq_heads import uq_token_features
from safescale.detection.ecrt import ECRT_PREFIX
from safescale.detection.ecrt_features import ecrt_features
from safescale.detection.registry import get_detector
from safescale.models.interface import BlackBoxModel, is_whitebox
from safescale.models.internals import Internals
from safescale.rundir import ResponseRecord, atomic_write_text, sample_dicts
from safescale.rundir import content_key as response_key
from safescale.rundir import record_content_key as record_key

if TYPE_CHECKING:
    from safescale.corpora.corpus import Corpus
    from safescale.models.backend import LanguageModel, PromptPass

__all__ = [
    "DETECTION_INPUTS_DIR",
    "FEATURE_VERSION",
    "DetectionInputStore",
    "ExtractionPlan",
    "FeatureCache",
    "SharedPassRecorder",
    "extract_features",
    "has_stored_inputs",
    "pass_columns",
    "record_inputs",
    "record_key",
    "response_key",
    "teacher_forced_pair",
    "token_idf",
]

#: Bump when a feature formula changes: cached features of older versions are ignored.
FEATURE_VERSION = 1
#: The run-directory folder of the detection inputs recorded by the answer step.
DETECTION_INPUTS_DIR = "detection_inputs"


@dataclass(frozen=True)
class ExtractionPlan:
    """What to compute per record.

    Attributes:
        attentions: run the CTX pass with eager attention and keep Lookback ratios.
        samples: sample-based scores from the frozen samples (no model call).
        sample_hidden: EigenScore (one batched pass over the samples).
        ptrue: P(True) (one extra pass).
        ffn: the CTX pass keeps feed-forward states (ReDeEP's scores).
        focus: Focus's per-token inputs (needs attentions and the corpus IDF).
        refcheck: the response's claims checked against its evidence (RefChecker).
        probe_layer_fraction: depth fraction of the hidden-state probe layer.
    """

    attentions: bool = False
    samples: bool = False
    sample_hidden: bool = False
    ptrue: bool = False
    ffn: bool = False
    focus: bool = False
    refcheck: bool = False
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
            attentions=bool(needs & {"attentions", "ffn_states", "token_idf"}),
            samples="samples" in needs,
            sample_hidden="sample_hidden" in needs,
            ptrue="ptrue_pass" in needs,
            ffn="ffn_states" in needs,
            focus="token_idf" in needs,
            refcheck="claim_check" in needs,
            probe_layer_fraction=probe_layer_fraction,
        )

    def pass_settings(self) -> dict[str, bool]:
        """What the CTX pass of a record must have been run with (part of its keys)."""
        return {"attentions": self.attentions, "ffn": self.ffn, "focus": self.focus}


def token_idf(lm: LanguageModel, corpora: Iterable[Corpus]) -> np.ndarray:
    """``[V]`` IDF of each vocabulary id over the passages of ``corpora`` (each passage
    one document, tokenized with the model's tokenizer), Focus's token-rarity weight."""
    texts = [p.text for corpus in corpora for p in corpus.passages]
    ids = lm.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    vocab = len(lm.tokenizer)
    if is_whitebox(lm):  # a served model: its tokenizer's vocabulary
        vocab = max(vocab, int(lm.model.get_output_embeddings().weight.shape[0]))
    return corpus_idf(ids, vocab)


def _digest(payload: object) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


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
        atomic_write_text(path, json.dumps(payload))


def teacher_forced_pair(
    lm: LanguageModel, record: ResponseRecord, *, attentions: bool = False, ffn: bool = False
) -> tuple[Internals, Internals]:
    """The CTX and NOCTX passes over the same response token ids (two forward passes)."""
    response_ids = list(lm.tokenizer(record.response, add_special_tokens=False)["input_ids"])
    if not response_ids:
        raise ValueError(f"record {record.item!r}/{record.condition!r} has an empty response")
    ctx = lm.internals(record.message, response_ids, attentions=attentions, lens="kl", ffn=ffn)
    noctx = lm.internals(record.message_noctx, response_ids, lens="kl")
    return ctx, noctx


def _rounded(values: Any, digits: int = 6) -> Any:
    if isinstance(values, list):
        return [_rounded(v, digits) for v in values]
    if isinstance(values, dict):
        return {k: _rounded(v, digits) for k, v in values.items()}
    if isinstance(values, bool):
        return values
    return round(float(values), digits)


def pass_columns(
    ctx: Internals,
    noctx: Internals,
    *,
    probe_layer_index: int,
    idf: np.ndarray | None = None,
    pieces: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Every column derived from the CTX/NOCTX pair (ECRT + pass-based baselines).

    With attentions in the CTX pass: the Lookback ratios, the UQ-head token features
    and (given the corpus ``idf`` and the response's decoded token ``pieces``) Focus's
    token inputs; with feed-forward states: ReDeEP's per-layer and per-head scores.
    """
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
        row["uq_tokens"] = _rounded(uq_token_features(ctx))
        if idf is not None and pieces is not None:
            row["focus_inputs"] = _rounded(focus_token_inputs(ctx, idf, pieces))
    if ctx.ffn_js is not None:
        redeep = redeep_inputs(ctx)
        row["redeep_pks"] = _rounded(redeep["pks"])
        row["redeep_ecs"] = _rounded(redeep["ecs"])
    return row


def _pieces(lm: LanguageModel, response_ids: Sequence[int]) -> list[str]:
    """Each response token decoded on its own (Focus's keyword tagging)."""
    return [lm.tokenizer.decode([int(t)]) for t in response_ids]


def _has_pass_inputs(row: dict[str, Any], plan: ExtractionPlan) -> bool:
    """Whether a stored pass row holds what ``plan`` needs."""
    if plan.attentions and "lookback" not in row:
        return False
    if plan.ffn and "redeep_pks" not in row:
        return False
    return not (plan.focus and "focus_inputs" not in row)


def _pass_group(
    lm: LanguageModel,
    record: ResponseRecord,
    plan: ExtractionPlan,
    cache: FeatureCache,
    idf: np.ndarray | None,
) -> dict[str, Any]:
    if not is_whitebox(lm):  # a served model: black-box columns only
        from safescale.detection.served import served_pass_columns

        key = _digest({"v": FEATURE_VERSION, "model": lm.model_hash, "record": record_key(record)})
        hit = cache.get("served_passes", key)
        if hit is None:
            hit = served_pass_columns(lm, record)
            cache.put("served_passes", key, hit)
        return hit
    layer = probe_layer(lm.n_layers, plan.probe_layer_fraction)
    base = {
        "v": FEATURE_VERSION,
        "model": lm.model_hash,
        "record": record_key(record),
        "layer": layer,
    }
    if plan.ffn or plan.focus:
        keys = [_digest({**base, **plan.pass_settings()})]
    else:
        keys = [
            _digest({**base, "attentions": flag})
            for flag in ([True] if plan.attentions else [False, True])
        ]
    for key in keys:
        hit = cache.get("passes", key)
        if hit is not None and _has_pass_inputs(hit, plan):
            return hit
    ctx, noctx = teacher_forced_pair(lm, record, attentions=plan.attentions, ffn=plan.ffn)
    pieces = _pieces(lm, ctx.response_ids.tolist()) if plan.focus else None
    row = pass_columns(
        ctx, noctx, probe_layer_index=layer, idf=idf if plan.focus else None, pieces=pieces
    )
    cache.put("passes", keys[0], row)
    return row


def _refcheck_group(
    lm: LanguageModel, record: ResponseRecord, cache: FeatureCache
) -> dict[str, Any]:
    key = _digest(
        {
            "v": FEATURE_VERSION,
            "prompt": REFCHECK_PROMPT_VERSION,
            "model": lm.model_hash,
            "m": record.message,
            "n": record.message_noctx,
            "r": record.response,
        }
    )
    hit = cache.get("refcheck", key)
    if hit is None:
        hit = check_response(lm, record.message, record.message_noctx, record.response)
        cache.put("refcheck", key, hit)
    return hit


def _ptrue_group(lm: LanguageModel, record: ResponseRecord, cache: FeatureCache) -> dict[str, Any]:
    key = _digest(
        {
            "v": FEATURE_VERSION,
            "prompt": PTRUE_PROMPT_VERSION,
            "model": lm.model_hash,
            "m": record.message,
            "r": record.response,
        }
    )
    hit = cache.get("ptrue", key)
    if hit is None and not is_whitebox(lm):
        from safescale.detection.served import served_ptrue_nll

        hit = {"ptrue_nll": served_ptrue_nll(lm, record)}
        cache.put("ptrue", key, hit)
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


class DetectionInputStore:
    """Detection inputs recorded by the answer step: one JSON file per (model hash,
    response key) under ``directory`` (atomic writes; safe for concurrent writers).

    A payload holds ``v`` (:data:`FEATURE_VERSION`), ``model``, ``layer`` (probe layer),
    ``n_layers``,
    ``attentions`` (whether Lookback ratios are in), ``passes`` (the
    :func:`pass_columns` row) and, when recorded, ``eigen`` / ``ptrue`` groups (the
    latter with its ``prompt`` version; other versions are not read).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _path(self, model_hash: str, key: str) -> Path:
        return self.directory / model_hash[:16] / f"{key}.json"

    def get(self, model_hash: str, key: str) -> dict[str, Any] | None:
        path = self._path(model_hash, key)
        if not path.is_file():
            return None
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        if payload.get("v") != FEATURE_VERSION or payload.get("model") != model_hash:
            return None
        return payload

    def put(self, model_hash: str, key: str, payload: dict[str, Any]) -> None:
        path = self._path(model_hash, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(payload))


@dataclass
class _Handle:
    state: PromptPass
    eigen_base: PromptPass | None


class SharedPassRecorder:
    """Computes a response's detection inputs from the answer's own prompt pass and
    stores them (the :class:`~safescale.agents.context.DetectionRecorder` of a run).

    Args:
        plan: what the detectors need (attentions, EigenScore, P(True), ...).
        store: where the inputs go.
        model_hash: the model's content hash.
        n_layers: the model's depth (probe and EigenScore layers).
        idf: Focus's IDF table, or a function making it on first use (needed when the
            plan has ``focus``).
    """

    def __init__(
        self,
        plan: ExtractionPlan,
        store: DetectionInputStore,
        model_hash: str,
        n_layers: int,
        idf: np.ndarray | Callable[[], np.ndarray] | None = None,
    ) -> None:
        self.plan = plan
        self.store = store
        self.model_hash = model_hash
        self.layer = probe_layer(n_layers, plan.probe_layer_fraction)
        self._idf = idf

    def idf(self) -> np.ndarray | None:
        """Focus's IDF table (made once, on first use)."""
        if callable(self._idf):
            self._idf = self._idf()
        return self._idf

    def open(self, lm: LanguageModel, message: str) -> _Handle:
        """Prefill the answer prompt (eager attention on the fed tokens when Lookback
        ratios are planned; feed-forward states for ReDeEP). EigenScore reads a view of
        its prompt part later; only a cache that cannot be cut back is copied now."""
        state = lm.open_prompt(message, attentions=self.plan.attentions, ffn=self.plan.ffn)
        copy_for_eigen = self.plan.sample_hidden and state.prompt_cache() is None
        return _Handle(state, state.fork() if copy_for_eigen else None)

    def record(
        self,
        lm: LanguageModel,
        handle: _Handle | None,
        *,
        message: str,
        message_noctx: str,
        response: str,
        chosen: str,
        samples: list[dict],
    ) -> None:
        key = response_key(
            message=message,
            message_noctx=message_noctx,
            response=response,
            chosen=chosen,
            samples=samples,
        )
        if self.store.get(self.model_hash, key) is not None:
            return
        if handle is None or handle.state.message != message:
            handle = self.open(lm, message)
        response_ids = list(lm.tokenizer(response, add_special_tokens=False)["input_ids"])
        if not response_ids:
            raise ValueError("the response is empty")
        ctx = lm.internals_from(handle.state, response_ids, lens="kl")
        noctx = lm.internals(message_noctx, response_ids, lens="kl")
        payload: dict[str, Any] = {
            "v": FEATURE_VERSION,
            "model": self.model_hash,
            "layer": self.layer,
            "n_layers": lm.n_layers,
            "attentions": self.plan.attentions,
            "passes": pass_columns(
                ctx,
                noctx,
                probe_layer_index=self.layer,
                idf=self.idf() if self.plan.focus else None,
                pieces=_pieces(lm, response_ids) if self.plan.focus else None,
            ),
        }
        if self.plan.sample_hidden:
            Z = lm.last_hidden_from(
                handle.eigen_base or handle.state,
                [s["token_ids"] for s in samples],
                lm.n_layers // 2,
            )
            payload["eigen"] = {"eigenscore": eigenscore(Z) if Z.shape[0] >= 2 else math.nan}
        if self.plan.ptrue:  # after the CTX pass: extends it by the P(True) suffix
            payload["ptrue"] = {
                "ptrue_nll": ptrue_nll_from(lm, handle.state, response_ids),
                "prompt": PTRUE_PROMPT_VERSION,
            }
        if self.plan.refcheck:
            payload["refcheck"] = check_response(lm, message, message_noctx, response)
        self.store.put(self.model_hash, key, payload)


def _stored_groups(
    stored: DetectionInputStore | None,
    model_hash: str,
    record: ResponseRecord,
    plan: ExtractionPlan,
) -> dict[str, dict[str, Any]]:
    """The groups of a record's stored inputs that fit ``plan`` (may be empty): the
    pass row only when it was made at the plan's probe layer and, if the plan wants
    Lookback ratios, with attentions."""
    if stored is None:
        return {}
    payload = stored.get(model_hash, record_key(record))
    if payload is None:
        return {}
    out: dict[str, dict[str, Any]] = {}
    layer = probe_layer(int(payload["n_layers"]), plan.probe_layer_fraction)
    if payload["layer"] == layer and _has_pass_inputs(payload["passes"], plan):
        out["passes"] = payload["passes"]
    if isinstance(payload.get("eigen"), dict):
        out["eigen"] = payload["eigen"]
    ptrue = payload.get("ptrue")
    if isinstance(ptrue, dict) and ptrue.get("prompt") == PTRUE_PROMPT_VERSION:
        out["ptrue"] = {"ptrue_nll": ptrue["ptrue_nll"]}
    refcheck = payload.get("refcheck")
    if isinstance(refcheck, dict) and refcheck.get("prompt") == REFCHECK_PROMPT_VERSION:
        out["refcheck"] = refcheck
    return out


def has_stored_inputs(
    stored: DetectionInputStore, model_hash: str, record: ResponseRecord, plan: ExtractionPlan
) -> bool:
    """Whether ``stored`` holds every input of ``record`` that ``plan`` needs, so that
    :func:`extract_features` makes no model call for it."""
    groups = _stored_groups(stored, model_hash, record, plan)
    needed = ["passes"]
    needed += ["eigen"] if plan.sample_hidden else []
    needed += ["ptrue"] if plan.ptrue else []
    needed += ["refcheck"] if plan.refcheck else []
    return all(name in groups for name in needed)


def record_inputs(recorder: SharedPassRecorder, lm: LanguageModel, record: ResponseRecord) -> None:
    """Record a frozen response's detection inputs with a separate CTX/NOCTX pass (the
    response was answered without the shared pass): the same payload, keyed the same
    way, as the answer step would have stored."""
    recorder.record(
        lm,
        None,
        message=record.message,
        message_noctx=record.message_noctx,
        response=record.response,
        chosen=record.chosen,
        samples=sample_dicts(record),
    )


def extract_features(
    records: Sequence[ResponseRecord],
    lm: LanguageModel | Callable[[], LanguageModel],
    plan: ExtractionPlan | None = None,
    *,
    cache: FeatureCache | None = None,
    progress: Callable[[int, int], None] | None = None,
    stored: DetectionInputStore | None = None,
    model_hash: str | None = None,
    idf: np.ndarray | Callable[[LanguageModel], np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row of features per record (identity columns first, then features).

    Sample-based columns are NaN for records without samples (those detectors then
    report themselves unavailable).

    Args:
        records: frozen responses of one model.
        lm: the model, or a function that loads it (called only when some record has
            neither stored inputs nor cached features).
        plan: what to compute.
        cache: the feature cache.
        progress: called with (done, total) after each record.
        stored: inputs recorded by the answer step (:class:`SharedPassRecorder`).
        model_hash: the model's hash (default ``lm.model_hash``; needed with a loader).
        idf: Focus's IDF table (or a function making it from the model), for records
            whose Focus inputs must be computed here.
    """
    plan = plan or ExtractionPlan()
    idf_table: list[np.ndarray | None] = []

    def idf_once() -> np.ndarray | None:
        if not idf_table:
            idf_table.append(idf(model()) if callable(idf) else idf)
        return idf_table[0]

    cache = cache or FeatureCache(None)
    loaded: list[LanguageModel] = []

    def model() -> LanguageModel:
        if not loaded:
            loaded.append(lm if isinstance(lm, BlackBoxModel) else lm())
        return loaded[0]

    if model_hash is None:
        model_hash = model().model_hash
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
        groups = _stored_groups(stored, model_hash, record, plan)
        if "passes" in groups:
            row.update(groups["passes"])
        else:
            if plan.focus and idf_once() is None:
                raise ValueError("Focus needs the corpus IDF table (idf=...)")
            row.update(_pass_group(model(), record, plan, cache, idf_once()))
        focus_inputs = row.pop("focus_inputs", None)
        if plan.focus:
            row["focus"] = math.nan if focus_inputs is None else focus_score(**focus_inputs)
        if plan.samples:
            row["ln_entropy"] = ln_entropy(record.samples)
            row["selfcheck"] = selfcheck_inconsistency(record.chosen, record.samples)
        if plan.sample_hidden:
            row.update(groups.get("eigen") or _eigen_group(model(), record, cache))
        if plan.ptrue:
            row.update(groups.get("ptrue") or _ptrue_group(model(), record, cache))
        if plan.refcheck:
            checked = groups.get("refcheck") or _refcheck_group(model(), record, cache)
            row["refcheck"] = checked["refcheck"]
        rows.append(row)
        if progress is not None:
            progress(i + 1, len(records))
    return pd.DataFrame(rows)
