"""Cross-item micro-batching: seconds per item with 1 vs N items in flight, measured in
the same run.

Two sections, both with the bundled model by default:

* **scoring primitive**: the cloze prompts of ``--items`` items (their option texts as
  continuations), scored one prompt per call (:meth:`LanguageModel.score_continuations`,
  what one item at a time does) vs merged ``N`` prompts per call
  (:func:`safescale.models.microbatch.score_continuations_batched`);
* **runner**: one shard of ``--items`` items of one condition answered by the real
  :class:`~safescale.experiments.runner.CellWorker` (graphs, LM cache, checkpoints) with
  the model's ``items_in_flight`` = each of ``--in-flight``; every setting gets a fresh
  run directory (no cache hits) and a one-item warm-up first.

The ratios (N vs 1, > 1 = batching is slower) are the figures to read; absolute times
depend on the machine's load. On a CPU the merged forward does the same arithmetic on
padded rows, so expect ratios near 1 at best; batching pays off on accelerators.

Run: ``.venv/bin/python benchmarks/bench_batching.py [--items 8] [--in-flight 1,2,4]
[--json benchmarks/results/bench_batching.json]`` (``--json``: also write the figures as a
result file, rendered into docs/results.md by ``benchmarks/render_results.py``)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from render_results import figure, write_result


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _config(args, run_dir: Path, in_flight: int):
    from safescale.experiments.config import parse_config

    text = f"""
name: bench-batching
models:
  - name: bench
    spec: {args.model}
    items_in_flight: {in_flight}
    batch_size: {args.batch_size}
corpora: [{args.corpus}]
conditions: [{args.condition}]
answer: {{formulation: {args.formulation}}}
"""
    return parse_config(text).with_overrides(output_dir=run_dir)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--corpus", default="radiology-guidelines")
    parser.add_argument("--condition", default="clean_evidence")
    parser.add_argument("--formulation", default="cloze_pmi")
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--in-flight", default="1,2,4")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip-primitive", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write a result file")
    args = parser.parse_args()
    settings = [int(x) for x in args.in_flight.split(",")]
    if 1 not in settings:
        settings.insert(0, 1)

    from safescale.agents import prompts
    from safescale.corpora import load_corpus
    from safescale.experiments.runner import CellTask, CellWorker
    from safescale.models import load_model
    from safescale.models.microbatch import score_continuations_batched

    corpus = load_corpus(args.corpus)
    items = sorted(corpus.items, key=lambda i: i.id)[: args.items + 1]
    warmup, timed = items[0], items[1:]
    print(f"model {args.model} · corpus {corpus.name} · {len(timed)} items")
    rows = []

    if not args.skip_primitive:
        lm = load_model(args.model, batch_size=args.batch_size)
        messages, texts = [], []
        for item in timed:
            passages = [corpus.passage(pid) for pid in item.evidence.clean]
            messages.append(prompts.cloze_message(item, passages, None))
            texts.append([item.options[letter] for letter in item.letters])
        lm.score_continuations(messages[:1], texts[:1])  # warm-up
        alone = _time(
            lambda: [lm.score_continuations([m], [t]) for m, t in zip(messages, texts, strict=True)]
        )
        print("\n[scoring primitive] cloze prompts of the items")
        print(f"  one prompt per call   {alone / len(timed):7.3f} s/item")
        for n in settings:
            if n == 1:
                continue
            merged = _time(
                lambda n=n: [
                    score_continuations_batched(
                        lm, messages[i : i + n], texts[i : i + n], batch_size=n
                    )
                    for i in range(0, len(messages), n)
                ]
            )
            print(
                f"  {n} prompts per call    {merged / len(timed):7.3f} s/item"
                f"   ratio vs one: {merged / alone:5.2f}x"
            )
            rows.append(
                figure(
                    f"scoring primitive: {n} cloze prompts per call vs one "
                    f"({len(timed)} {corpus.name} items)",
                    f"{merged / alone:.2f}x",
                    "<= 1.0x",
                    seconds_per_item=merged / len(timed),
                    alone_seconds_per_item=alone / len(timed),
                )
            )

    print(f"\n[runner] {args.condition} · {args.formulation} · one shard")
    seconds: dict[int, float] = {}
    for n in settings:
        with tempfile.TemporaryDirectory() as tmp:
            config = _config(args, Path(tmp) / "run", n)
            Path(config.run_dir).mkdir(parents=True)
            worker = CellWorker(config, "bench")
            try:
                cell = ("bench", corpus.name, args.condition, 1)
                axes = {
                    "context_budget": config.context_budget[0],
                    "retrieval_k": config.retrieval.k[0],
                }
                worker.run_task(CellTask(*cell, (warmup.id,), **axes))
                task = CellTask(*cell, tuple(i.id for i in timed), **axes)
                seconds[n] = _time(lambda task=task, worker=worker: worker.run_task(task))
                merged = ""
                if worker.batcher is not None:
                    merged = (
                        f"   {worker.batcher.merged_requests} calls in "
                        f"{worker.batcher.batches} forwards"
                    )
            finally:
                worker.close()
        ratio = seconds[n] / seconds[1]
        print(
            f"  items_in_flight {n}   {seconds[n] / len(timed):7.3f} s/item"
            f"   ratio vs 1: {ratio:5.2f}x{merged}"
        )
        if n != 1:
            rows.append(
                figure(
                    f"runner, {args.condition} ({args.formulation}): `items_in_flight` {n} "
                    f"vs 1, seconds per item ({len(timed)} {corpus.name} items)",
                    f"{ratio:.2f}x",
                    "<= 1.0x (else keep 1 on CPU)",
                    seconds_per_item=seconds[n] / len(timed),
                    one_seconds_per_item=seconds[1] / len(timed),
                )
            )
    if args.json is not None:
        write_result(
            args.json, "bench_batching", "Several items in flight (cross-item batching)", rows
        )


if __name__ == "__main__":
    main()
