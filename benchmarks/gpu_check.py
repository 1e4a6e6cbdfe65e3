"""GPU check: vLLM in this process (``kind: vllm``) against the transformers backend on
the same weights, for a machine with an accelerator.

For each model (the bundled SmolLM2-135M by default, plus any local directory or
Hugging Face id given with ``--model``, available offline), runs one clean-evidence
cell twice with the real runner into fresh run directories:

* ``transformers``: ``kind: local``;
* ``vllm``: ``kind: vllm`` (prefix caching off, fixed seeds: the deterministic defaults).

and prints, per model and per formulation (``--formulations``, default ``cloze_pmi``
and ``letter``): items/s of each engine, the share of items whose chosen option is the
same, and the largest and median absolute difference of the option scores. Cloze
scores come from vLLM's ``prompt_logprobs`` (the echo path the CPU test suite cannot
check: llama-cpp-python's server misaligns its echoed log-probs), letters from the
first generated token's alternatives.

Needs ``pip install 'safescale[vllm]'`` in an environment whose torch matches the
accelerator (vLLM pins its own torch; see docs/served-models.md). Without vLLM it says
so and exits with status 1.

Run: ``python benchmarks/gpu_check.py [--model meta-llama/Meta-Llama-3-8B-Instruct]
[--limit 100]``
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path


def _run(model: dict, formulation: str, args, out: Path):
    import yaml

    from safescale.experiments import run_experiment
    from safescale.experiments.config import parse_config
    from safescale.rundir import RunDir

    config = parse_config(
        yaml.safe_dump(
            {
                "name": "gpu-check",
                "models": [model],
                "corpus": args.corpus,
                "conditions": ["clean_evidence"],
                "limit": args.limit,
                "answer": {"formulation": formulation},
                "detection": {"enabled": False},
                "output_dir": str(out),
            }
        )
    )
    started = time.perf_counter()
    run_experiment(config, fresh=True, progress=False)
    seconds = time.perf_counter() - started
    return seconds, {r.item: r for r in RunDir(out).responses()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", action="append", default=[],
                        help="a further model (directory or HF id), repeatable")  # fmt: skip
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--corpus", default="radiology-guidelines")
    parser.add_argument("--formulations", default="cloze_pmi,letter")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if importlib.util.find_spec("vllm") is None:
        raise SystemExit("error: vllm is not installed here (pip install 'safescale[vllm]' "
                         "on a machine with an accelerator)")  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    print("| model | formulation | transformers items/s | vllm items/s | same choice | "
          "max abs d score | median abs d score |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for index, spec in enumerate(["smollm2-135m-instruct", *args.model]):
        for formulation in [f.strip() for f in args.formulations.split(",") if f.strip()]:
            local = {"name": f"m{index}-local", "spec": spec}
            served = {"name": f"m{index}-vllm", "kind": "vllm", "model": spec}
            t_local, a = _run(local, formulation, args, tmp / f"{index}-{formulation}-local")
            t_vllm, b = _run(served, formulation, args, tmp / f"{index}-{formulation}-vllm")
            common = [i for i in a if i in b]
            same = sum(a[i].chosen == b[i].chosen for i in common)
            diffs = [
                abs(x - y)
                for i in common
                for x, y in zip(a[i].option_logits, b[i].option_logits, strict=True)
            ]
            worst = max(diffs, default=float("nan"))
            median = statistics.median(diffs) if diffs else float("nan")
            print(f"| {spec} | {formulation} | {len(a) / t_local:.2f} | {len(b) / t_vllm:.2f} "
                  f"| {same}/{len(common)} | {worst:.4f} | {median:.4f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
