"""Viewer pieces that need no run: option probabilities and the inlined JSON."""

from __future__ import annotations

import json
import math

import pytest

from safescale.viewer.build import script_json
from safescale.viewer.data import option_probabilities


def test_option_probabilities_are_the_softmax_of_the_scores():
    probs = option_probabilities([0.0, math.log(3.0)])
    assert probs == pytest.approx([0.25, 0.75])
    assert option_probabilities([1000.0, 1000.0, 1000.0]) == pytest.approx([1 / 3] * 3)
    assert option_probabilities([]) == []


def test_inlined_json_cannot_close_its_script_element():
    text = script_json({"q": "</script><script>alert(1)</script> <!-- \u2028"})
    assert "</" not in text and "<!--" not in text and "\u2028" not in text
    assert json.loads(text)["q"].startswith("</script>")
