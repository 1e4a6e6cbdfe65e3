"""ECRT feature extraction cost vs one raw forward pass of the CTX prompt + response.

For each retina-rules item (clean evidence), with the bundled SmolLM2 on CPU:

* raw: one plain forward (default attention, no hidden states) over the CTX prompt ids
  + response ids — the least any white-box detector must pay;
* ECRT: the full per-record extraction of :func:`safescale.detection.teacher_forced_pair`
  (CTX and NOCTX teacher-forced passes with hidden states and logit-lens statistics)
  followed by :func:`safescale.detection.ecrt_features`.

Prints per-item medians and the ratio (goal <= 2.2x). Run:
``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_detection.py --items 12
[--json benchmarks/results/bench_detection.json]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from render_results import figure, write_result

from safescale.detection import ecrt_features, teacher_forced_pair
from safescale.models import load_model
from safescale.rundir import ResponseRecord


def retina_items(n: int):
    try:
        from safescale.corpora.loader import load_corpus

        corpus = load_corpus("retina-rules")
        return list(corpus.items[:n]), corpus.passages_by_id
    except Exception:  # the bundled snapshot may be absent: generate the same rules
        from safescale.corpora.generators.retina import generate

        _, passages, items = generate(n=max(n, 30), seed=0)
        return items[:n], {p.id: p for p in passages}


def build_record(lm, item, passages) -> ResponseRecord:
    base = item.question + "\n" + "\n".join(f"{k}) {v}" for k, v in item.options.items())
    evidence = "\n".join(f"[{pid}] {passages[pid].text}" for pid in item.evidence.clean)
    message = f"{base}\nEvidence:\n{evidence}"
    letter = item.gold
    return ResponseRecord(
        run="bench",
        model=lm.name,
        condition="clean",
        item=item.id,
        letters=item.letters,
        option_logits=[0.0] * len(item.letters),
        chosen=letter,
        response=f"Answer: {letter}) {item.options[letter]}",
        message=message,
        message_noctx=base,
        evidence_ids=list(item.evidence.clean),
    )


@torch.inference_mode()
def raw_forward(lm, record: ResponseRecord) -> float:
    ids = lm.prompt_ids(record.message) + list(
        lm.tokenizer(record.response, add_special_tokens=False)["input_ids"]
    )
    x = torch.tensor([ids])
    start = time.perf_counter()
    lm.model(input_ids=x, use_cache=False)
    return time.perf_counter() - start


def ecrt_extract(lm, record: ResponseRecord) -> float:
    start = time.perf_counter()
    ctx, noctx = teacher_forced_pair(lm, record)
    ecrt_features(ctx, noctx)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write a result file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model()
    items, passages = retina_items(args.items)
    records = [build_record(lm, it, passages) for it in items]
    raw_forward(lm, records[0])  # warm-up
    ecrt_extract(lm, records[0])
    raw, ecrt, ratios = [], [], []
    for record in records:
        # interleave so both see the same machine load
        r = raw_forward(lm, record)
        e = ecrt_extract(lm, record)
        raw.append(r)
        ecrt.append(e)
        ratios.append(e / r)
    n_prompt = statistics.median(len(lm.prompt_ids(r.message)) for r in records)
    n_noctx = statistics.median(len(lm.prompt_ids(r.message_noctx)) for r in records)
    print(f"model {lm.name}, {len(records)} items, threads {args.threads}")
    print(f"median CTX prompt {n_prompt:.0f} tokens, NOCTX prompt {n_noctx:.0f} tokens")
    print(f"raw forward (CTX prompt + response): median {1000 * statistics.median(raw):.1f} ms")
    ecrt_ms = 1000 * statistics.median(ecrt)
    print(f"ECRT extraction (2 TF passes + features): median {ecrt_ms:.1f} ms")
    print(
        f"ratio ECRT / raw: median {statistics.median(ratios):.2f}x, "
        f"total {sum(ecrt) / sum(raw):.2f}x (goal <= 2.2x)"
    )
    if args.json is not None:
        rows = [
            figure(
                f"ECRT extraction (2 teacher-forced passes + features) vs one raw CTX forward "
                f"({len(records)} retina items, {n_prompt:.0f}-token prompts)",
                f"{statistics.median(ratios):.2f}x (median; total {sum(ecrt) / sum(raw):.2f}x)",
                "<= 2.2x",
                raw_ms=1000 * statistics.median(raw),
                ecrt_ms=ecrt_ms,
            )
        ]
        write_result(args.json, "bench_detection", "ECRT feature extraction", rows)


if __name__ == "__main__":
    main()
