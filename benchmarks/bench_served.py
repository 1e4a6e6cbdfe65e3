"""A clean-evidence cell through a served model at concurrency 1, 4 and 8, next to the
in-process backend on the same weights, in one process.

Starts llama-cpp-python's OpenAI-compatible server on a free loopback port (the bundled
SmolLM2-135M GGUF, the server the served-model tests use; install it with
``pip install 'safescale[served]'``), then runs the same study config with the real
runner into fresh run directories, each from an empty LM cache:

* ``local``: ``kind: local`` (transformers in this process), ``items_in_flight: 1``;
* ``served xC`` for C in ``--concurrency`` (default 1, 4, 8): ``kind: openai`` with
  ``max_concurrency: C`` and ``items_in_flight: C`` (C items' requests in flight; the
  server batches them).

Every run reads answers with the ``letter`` formulation (the only one llama-cpp-python's
server can serve: its echoed prompt log-probs are misaligned, see
``docs/served-models.md``), so the runs answer the same prompts.

Printed: wall time of each run (model load, probe, store and every item), seconds per
item, and the ratio to ``local`` measured in this same run; then the agreement of each
served run's chosen options with ``local`` (the engines compute the quantized weights
differently, so a few may differ).

Absolute times depend on the machine's load: run it alone. The server and this process
share the machine's cores: on a 2-core machine the ratios say what the HTTP path costs,
not what a GPU server gives. A quick check of the script: ``--limit 2 --concurrency 1``.

Run: ``.venv/bin/python benchmarks/bench_served.py [--limit N] [--concurrency 1,4,8]
[--json benchmarks/results/bench_served.json]`` (``--json``: also write the figures as a
result file, rendered into docs/results.md by ``benchmarks/render_results.py``)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY_ENV = "SAFESCALE_BENCH_SERVER_KEY"


def _config(out: Path, model: dict, args) -> dict:
    return {
        "name": "bench-served",
        "models": [model],
        "corpus": args.corpus,
        "conditions": ["clean_evidence"],
        "limit": args.limit,
        "answer": {"formulation": "letter"},
        "detection": {"enabled": False},
        "output_dir": str(out),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=40, help="items of the cell")
    parser.add_argument("--corpus", default="radiology-guidelines")
    parser.add_argument("--concurrency", default="1,4,8", help="comma list")
    parser.add_argument("--json", type=Path, default=None, help="also write a result file")
    parser.add_argument("--threads", type=int, default=None,
                        help="server threads (default: OMP_NUM_THREADS or 2)")  # fmt: skip
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from render_results import figure, write_result
    from served_fixtures import SERVED_NAME, LlamaServer, have_llama_server

    from safescale.experiments import run_experiment
    from safescale.experiments.config import parse_config
    from safescale.rundir import RunDir

    if not have_llama_server():
        raise SystemExit("error: llama-cpp-python's server is not installed "
                         "(pip install 'safescale[served]')")  # fmt: skip
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    key = "sk-bench-" + os.urandom(6).hex()
    os.environ[KEY_ENV] = key
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-served-"))
    server = LlamaServer(log=tmp / "server.log", api_key=key).start()
    import yaml

    runs: dict[str, tuple[float, list]] = {}
    try:
        plans = [("local", {"name": SERVED_NAME, "items_in_flight": 1})]
        for c in levels:
            plans.append((f"served x{c}", {
                "name": "smollm2-served", "kind": "openai", "base_url": server.base_url,
                "model": SERVED_NAME, "api_key_env": KEY_ENV, "tokenizer": SERVED_NAME,
                "max_concurrency": c, "items_in_flight": c, "context_length": 2048,
            }))  # fmt: skip
        for label, model in plans:
            out = tmp / label.replace(" ", "_")
            config = parse_config(yaml.safe_dump(_config(out, model, args)))
            started = time.perf_counter()
            run_experiment(config, fresh=True, progress=False)
            seconds = time.perf_counter() - started
            runs[label] = (seconds, list(RunDir(out).responses()))
            print(f"{label}: {seconds:.1f} s", flush=True)
    finally:
        server.stop()
    base_s, base_rows = runs["local"]
    print(f"\n### clean evidence, {args.limit} items of {args.corpus}, letter formulation\n")
    print("| backend | wall s | s/item | vs local | same choice as local |")
    print("|---|---|---|---|---|")
    chosen = {r.item: r.chosen for r in base_rows}
    figures = []
    for label, (seconds, rows) in runs.items():
        n = max(1, len(rows))
        same = sum(chosen.get(r.item) == r.chosen for r in rows)
        print(f"| {label} | {seconds:.1f} | {seconds / n:.2f} | {seconds / base_s:.2f}x | "
              f"{same}/{len(rows)} |")  # fmt: skip
        figures.append(
            figure(
                f"{label}: clean evidence, {len(rows)} {args.corpus} items, letter formulation",
                f"{seconds / n:.2f} s/item, {seconds / base_s:.2f}x in-process; "
                f"{same}/{len(rows)} choices as in-process",
                wall_s=seconds,
                items=len(rows),
                same_choice=same,
            )
        )
    if args.json is not None:
        write_result(
            args.json,
            "bench_served",
            "Served model (llama-cpp-python server on loopback) vs in-process",
            figures,
            notes=[
                "The server and the client share this machine's cores: the ratios say "
                "what the HTTP path costs here, not what a GPU server gives."
            ],
        )


if __name__ == "__main__":
    main()
