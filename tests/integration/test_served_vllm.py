"""``kind: vllm`` against the in-process transformers backend on the same weights.

vLLM runs in its own environment (``make vllm`` builds ``.venv-vllm``: its CPU wheel pins
its own torch and an older transformers); the study is run there with the real CLI, the
same study with local weights here, and the two run directories are compared. Cloze
scores come from vLLM's ``prompt_logprobs`` (the engine's own teacher forcing): the
echo-style scoring path no llama.cpp server can check. Skipped, with the reason, when
``.venv-vllm`` is absent.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from safescale.experiments import run_experiment
from safescale.experiments.config import parse_config
from safescale.rundir import RunDir, RunManifest

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
ITEMS = 20
#: Largest |vLLM - transformers| cloze_pmi option score, float32 on both sides: measured
#: 0.80 (median 0.16) over 40 radiology-guidelines items, every chosen option equal. That
#: is more than float32 kernels explain; where the rest comes from is not known yet
#: (docs/served-models.md), so the bound is loose and the choices carry the test.
SCORE_TOLERANCE = 1.0


def _config(out: Path, model: dict) -> dict:
    return {
        "name": out.name,
        "models": [model],
        "corpus": "radiology-guidelines",
        "conditions": ["clean_evidence"],
        "limit": ITEMS,
        "answer": {"formulation": "cloze_pmi"},
        "detection": {"enabled": False},
        "output_dir": str(out),
    }


@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="vLLM's environment is not built (make vllm)")
def test_cloze_scores_from_vllm_prompt_logprobs_match_transformers(tmp_path):
    served = tmp_path / "vllm"
    path = tmp_path / "vllm.yaml"
    path.write_text(
        yaml.safe_dump(
            _config(
                served,
                {
                    "name": "smollm2-vllm",
                    "kind": "vllm",
                    "model": "smollm2-135m-instruct",
                    "dtype": "float32",
                },
            )
        )
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    done = subprocess.run(
        [str(VLLM_PYTHON), "-m", "safescale.cli", "run", str(path), "--no-report"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    local = tmp_path / "local"
    run_experiment(
        parse_config(yaml.safe_dump(_config(local, {"name": "smollm2-135m-instruct"}))),
        progress=False,
    )
    a = {r.item: r for r in RunDir(served).responses()}
    b = {r.item: r for r in RunDir(local).responses()}
    assert len(a) == len(b) == ITEMS and set(a) == set(b)
    same = sum(a[i].chosen == b[i].chosen for i in a)
    diffs = np.array(
        [abs(x - y) for i in a for x, y in zip(a[i].option_logits, b[i].option_logits, strict=True)]
    )
    print(f"vllm cloze parity: {same}/{ITEMS} same choice, max |d| {diffs.max():.4f}")
    assert same >= 0.95 * ITEMS
    assert diffs.max() <= SCORE_TOLERANCE
    manifest = RunManifest.model_validate_json((served / "manifest.json").read_text())
    (entry,) = manifest.models.values()
    assert entry.served["kind"] == "vllm"
    assert entry.served["engine_args"]["enable_prefix_caching"] is False
    assert all(r.formulation == "cloze_pmi" for r in a.values())
