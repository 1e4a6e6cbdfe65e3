"""Grade normalization: every built-in system maps its labels onto levels 1..4."""

from __future__ import annotations

import pytest

from safescale.corpora import (
    UnknownGradeError,
    UnknownGradeSystemError,
    normalize_grade,
    resolve_level,
)


@pytest.mark.parametrize(
    ("system", "raw", "level"),
    [
        ("GRADE", "high", 1),
        ("GRADE", "Moderate", 2),
        ("GRADE", "strong recommendation, low certainty", 3),
        ("GRADE", "very low", 4),
        ("GRADE", "⊕⊕⊕⊕", 1),
        ("GRADE", "⊕⊕○○", 3),
        ("oxford cebm 2011", "1", 1),
        ("CEBM-2011", "Level 2", 2),
        ("CEBM", "2b", 2),
        ("CEBM-2011", "4", 4),
        ("CEBM-2011", "5", 4),
        ("ACCP", "1A", 1),
        ("ACCP", "1B", 2),
        ("ACCP", "2A", 2),
        ("ACCP", "1C", 3),
        ("ACCP", "2B", 3),
        ("accp", "grade 2C", 4),
        ("ACR", "Usually appropriate (8)", 2),
        ("ACR-AC", "may be appropriate", 3),
        ("ACR-AC", "usually not appropriate (2)", 2),
        ("ACR-AC", "usually appropriate (9); strong", 1),
        ("ACR-AC", "may be appropriate (5), limited", 3),
        ("ACR-AC", "7", 2),
        ("ADA", "A", 1),
        ("ADA", "B", 2),
        ("ADA", "c", 3),
        ("ADA", "E", 4),
        ("LEVEL", "Level I", 1),
        ("level i-iv", "II", 2),
        ("LEVEL", "Level II-3", 2),
        ("LEVEL", "Level III", 3),
        ("LEVEL", "IV", 4),
        ("AAO-PPP", "I++", 1),
        ("AAO", "II+, good quality, strong recommendation", 2),
        ("AAO-PPP", "III", 4),
    ],
)
def test_builtin_labels_normalize(system: str, raw: str, level: int) -> None:
    assert normalize_grade(system, raw) == level


@pytest.mark.parametrize(
    ("system", "raw"),
    [
        ("GRADE", "medium"),
        ("GRADE", "high and low"),
        ("CEBM-2011", "6"),
        ("ACCP", "3A"),
        ("ACCP", "1D"),
        ("ACR-AC", "usually appropriate (2)"),
        ("ACR-AC", "sometimes"),
        ("ADA", "D"),
        ("LEVEL", "V"),
        ("LEVEL", "III-1"),
        ("AAO-PPP", "I+++"),
    ],
)
def test_unknown_label_is_an_error_naming_it(system: str, raw: str) -> None:
    with pytest.raises(UnknownGradeError) as info:
        normalize_grade(system, raw)
    assert repr(raw) in str(info.value)
    assert info.value.raw == raw


def test_unknown_system_names_known_systems() -> None:
    with pytest.raises(UnknownGradeSystemError) as info:
        normalize_grade("NICE", "1")
    assert "'NICE'" in str(info.value)
    assert "ACCP" in str(info.value)


def test_manifest_levels_override_builtin_and_fold_case() -> None:
    levels = {"Reference Standard": 1, "1A": 2}
    assert resolve_level("custom", "reference standard", levels, None) == 1
    assert resolve_level("ACCP", "1A", levels, "ACCP") == 2  # explicit table wins
    assert resolve_level("ACCP", "2C", levels, "ACCP") == 4  # falls back to builtin
    with pytest.raises(UnknownGradeError, match="'expert' in grade system 'custom'"):
        resolve_level("custom", "expert", levels, None)
