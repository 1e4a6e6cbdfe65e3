"""Input-only control: how much of the label the prompt text gives away.

Not a detector any paper proposes, and not one a deployment could use in place of the
others: a control. It sees only the text the model was given — the answer prompt
(evidence, question and options; ``record.message``) — and no model internals:
TF-IDF of word unigrams and bigrams (fitted on the training responses only, at most
:data:`MAX_FEATURES` terms, sublinear term frequency) and a class-balanced L2 logistic
regression, on the same folds and thresholds as every detector.

Read it as the floor the internal-state detectors must clear: when it reaches the same
balanced accuracy, the label is in the input text (the item template, the evidence
wording) and a detector that "works" may only be reading it back; when it is at chance,
the detectors' signal does not come from a shortcut in the text.

Requires: nothing from the model (the ``prompt_text`` column of the features frame).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from safescale.detection.registry import SAFE, Detector, DetectorUnavailable, detector

__all__ = ["MAX_FEATURES", "InputOnlyControl"]

MAX_FEATURES = 20000


@detector("input_only")
class InputOnlyControl(Detector):
    """TF-IDF of the prompt text + logistic regression (higher = riskier).

    Args:
        C: inverse L2 strength.
        random_state: the solver's seed.
    """

    requires = frozenset()
    supervised = True

    def __init__(self, C: float = 1.0, random_state: int = 0) -> None:
        self.C = C
        self.random_state = random_state

    def design_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """``[n, 1]`` object array of prompt texts."""
        if "prompt_text" not in frame.columns:
            raise DetectorUnavailable(f"{self.name}: the features frame has no prompt texts")
        return frame[["prompt_text"]].to_numpy(dtype=object)

    def fit(self, X: np.ndarray, y: np.ndarray) -> InputOnlyControl:
        texts = [str(t) for t in np.asarray(X, dtype=object)[:, 0]]
        unsafe = (np.asarray(y) != SAFE).astype(int)
        if unsafe.min() == unsafe.max():
            raise ValueError(f"{self.name}: training needs both safe and unsafe records")
        vectorizer = TfidfVectorizer(
            ngram_range=(1, 2), max_features=MAX_FEATURES, sublinear_tf=True
        )
        Z = vectorizer.fit_transform(texts)
        model = LogisticRegression(
            C=self.C, class_weight="balanced", max_iter=2000, random_state=self.random_state
        ).fit(Z, unsafe)
        self.vocabulary_ = {term: int(i) for term, i in vectorizer.vocabulary_.items()}
        self.idf_ = vectorizer.idf_.copy()
        self.coef_ = model.coef_[0].copy()
        self.intercept_ = float(model.intercept_[0])
        self.n_features_in_ = 1
        return self

    def _vectorizer(self) -> TfidfVectorizer:
        vectorizer = TfidfVectorizer(
            ngram_range=(1, 2), sublinear_tf=True, vocabulary=self.vocabulary_
        )
        vectorizer.fit(["x"])  # sets up the analyzer; the vocabulary is fixed
        vectorizer.idf_ = self.idf_
        return vectorizer

    def risk_score(self, X: np.ndarray) -> np.ndarray:
        texts = [str(t) for t in np.asarray(X, dtype=object)[:, 0]]
        Z = self._vectorizer().transform(texts)
        z = np.asarray(Z @ self.coef_).ravel() + self.intercept_
        return 1.0 / (1.0 + np.exp(-z))

    def _get_state(self, directory: Path) -> dict[str, Any]:
        return {
            "vocabulary": self.vocabulary_,
            "idf": self.idf_.tolist(),
            "coef": self.coef_.tolist(),
            "intercept": self.intercept_,
        }

    def _set_state(self, state: dict[str, Any], directory: Path) -> None:
        self.vocabulary_ = {str(k): int(v) for k, v in state["vocabulary"].items()}
        self.idf_ = np.asarray(state["idf"])
        self.coef_ = np.asarray(state["coef"])
        self.intercept_ = float(state["intercept"])
        self.n_features_in_ = 1
