"""Baseline detectors, one module each, registered by name (higher score = riskier)."""

from __future__ import annotations

from safescale.detection.baselines._base import scored_positions
from safescale.detection.baselines.eigenscore import EigenScore, eigenscore, sample_embeddings
from safescale.detection.baselines.entropy import MeanTokenEntropy, mean_token_entropy
from safescale.detection.baselines.focus import Focus, focus_score
from safescale.detection.baselines.input_only import InputOnlyControl
from safescale.detection.baselines.length import ResponseLength
from safescale.detection.baselines.ln_entropy import LNEntropy, ln_entropy
from safescale.detection.baselines.lookback import LookbackLens, lookback_ratios
from safescale.detection.baselines.msp import MSPSequence, MSPStep, msp_seq, msp_step
from safescale.detection.baselines.perplexity import Perplexity, nll_mean
from safescale.detection.baselines.pmi import CtxNoctxPMI, ctx_noctx_pmi
from safescale.detection.baselines.probe import HiddenStateProbe, probe_layer, probe_vector
from safescale.detection.baselines.ptrue import PTrue, ptrue_ids, ptrue_nll
from safescale.detection.baselines.redeep import ReDeEP, redeep_inputs
from safescale.detection.baselines.refchecker import RefChecker, extract_claims
from safescale.detection.baselines.selfcheck import SelfCheckConsistency, selfcheck_inconsistency
from safescale.detection.baselines.uq_heads import UQHead, uq_token_features

__all__ = [
    "CtxNoctxPMI",
    "EigenScore",
    "Focus",
    "HiddenStateProbe",
    "InputOnlyControl",
    "LNEntropy",
    "LookbackLens",
    "MSPSequence",
    "MSPStep",
    "MeanTokenEntropy",
    "PTrue",
    "Perplexity",
    "ReDeEP",
    "RefChecker",
    "ResponseLength",
    "SelfCheckConsistency",
    "UQHead",
    "ctx_noctx_pmi",
    "eigenscore",
    "extract_claims",
    "focus_score",
    "ln_entropy",
    "lookback_ratios",
    "mean_token_entropy",
    "msp_seq",
    "msp_step",
    "nll_mean",
    "probe_layer",
    "probe_vector",
    "ptrue_ids",
    "ptrue_nll",
    "redeep_inputs",
    "sample_embeddings",
    "scored_positions",
    "selfcheck_inconsistency",
    "uq_token_features",
]
