"""Backend overhead vs raw transformers, measured in one run on the same tokens.

Prints:
* ``score_options`` vs a raw ``model(**inputs)`` forward over the same padded batch
  (goal <= 1.10x);
* ``internals`` (all hidden states + full logit lens) vs a raw forward of the same ids
  (goal <= 1.3x);
* cached load vs first GGUF load (conversion) into a fresh cache (goal >= 10x faster);
* the cloze formulation: 4 option texts scored after a ~400-token prompt (one shared
  prefill + one batched continuation pass) vs one raw forward of that prompt (goal
  <= 1.5x);
* PriDe-style letter debiasing over a study vs plain letters: the position prior from a
  calibration fraction with n cyclic passes each, then one pass per item (goal <=
  1.2x); computed from the measured per-pass costs and the pass counts of a study.

Run: ``.venv/bin/python benchmarks/bench_models.py [--model smollm2-135m-instruct]
[--json benchmarks/results/bench_models.json]`` (``--json``: also write the figures as a
result file, rendered into docs/results.md by ``benchmarks/render_results.py``)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from render_results import figure, write_result


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None, help="also write a result file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from safescale.models import load_model

    with tempfile.TemporaryDirectory() as cache:
        os.environ["SAFESCALE_CACHE"] = cache
        start = time.perf_counter()
        load_model(args.model)
        first = time.perf_counter() - start
        start = time.perf_counter()
        lm = load_model(args.model)
        cached = time.perf_counter() - start

    letters = ["A", "B", "C", "D"]
    messages = [
        f"Question {i}: a {i * 3}-year-old patient with eGFR {20 + i} needs contrast CT.\n"
        "A) proceed\nB) hydrate first\nC) stop metformin\nD) defer\n"
        "Answer with the letter of the correct option."
        for i in range(8)
    ]
    encoded = [lm.prompt_ids(m, answer_cue=True) for m in messages]
    ids, mask, pos = lm._left_pad(encoded)

    def raw_batch():
        with torch.inference_mode():
            lm.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)

    t_raw = _median_time(raw_batch, args.repeats)
    t_score = _median_time(lambda: lm.score_options(messages, letters), args.repeats)

    response = "B) hydrate first, because eGFR below 30 calls for IV saline prophylaxis."
    rec = lm.internals(messages[0], response, lens="none")
    full = rec.input_ids[None]

    def raw_single():
        with torch.inference_mode():
            lm.model(input_ids=full, use_cache=False)

    t_raw1 = _median_time(raw_single, args.repeats)
    t_int = _median_time(lambda: lm.internals(messages[0], response), args.repeats)
    t_int_nolens = _median_time(
        lambda: lm.internals(messages[0], response, lens="off"), args.repeats
    )

    print(f"model: {lm.name}  threads: {torch.get_num_threads()}")
    print(
        f"score_options, 8 prompts: {t_score * 1e3:.1f} ms vs raw forward {t_raw * 1e3:.1f} ms "
        f"-> {t_score / t_raw:.2f}x (goal <= 1.10x)"
    )
    print(
        f"internals (all hidden states, lens off, R={len(rec.response_ids)}): "
        f"{t_int_nolens * 1e3:.1f} ms vs raw forward {t_raw1 * 1e3:.1f} ms "
        f"-> {t_int_nolens / t_raw1:.2f}x (goal <= 1.3x)"
    )
    print(
        f"internals (hidden states + full logit lens over {lm.n_layers + 1} layers): "
        f"{t_int * 1e3:.1f} ms -> {t_int / t_raw1:.2f}x"
    )
    # --- cloze: 4 options after a ~400-token prompt vs one raw forward of that prompt
    from safescale.corpora import load_corpus

    corpus = load_corpus("radiology-guidelines")
    item = max(
        corpus.items,
        key=lambda i: len(" ".join(corpus.passage(p).text for p in i.evidence.conflict)),
    )
    from safescale.agents import prompts

    passages = [corpus.passage(p) for p in item.evidence.conflict]
    cloze_message = prompts.cloze_message(item, passages)
    cloze_ids = torch.tensor([lm.prompt_ids(cloze_message, answer_cue=True)])
    texts = [item.options[letter] for letter in item.letters]

    def raw_prompt():
        with torch.inference_mode():
            lm.model(input_ids=cloze_ids, use_cache=False, logits_to_keep=1)

    t_raw_prompt = _median_time(raw_prompt, args.repeats)
    t_cloze = _median_time(lambda: lm.score_continuations([cloze_message], texts), args.repeats)

    # --- PriDe over a study: calibration items x n cyclic passes, then 1 pass per item
    letter_message = prompts.answer_message(item, passages)
    t_letter = _median_time(lambda: lm.score_options([letter_message], letters), args.repeats)
    n_calibration, n_options = 16, 4
    pride = {}
    for n_items in (157, 12522):  # radiology-guidelines; a RETINA-scale study
        study_letter = n_items * t_letter
        study_pride = (n_calibration * n_options + (n_items - n_calibration)) * t_letter
        pride[n_items] = (study_pride, study_letter)

    print(
        f"cloze, 4 options after a {cloze_ids.shape[1]}-token prompt: {t_cloze * 1e3:.1f} ms "
        f"vs raw forward {t_raw_prompt * 1e3:.1f} ms -> {t_cloze / t_raw_prompt:.2f}x "
        "(goal <= 1.5x)"
    )
    for n_items, (study_pride, study_letter) in pride.items():
        print(
            f"PriDe over a {n_items}-item study ({n_calibration} calibration items x "
            f"{n_options} orderings, then 1 pass each; letter pass {t_letter * 1e3:.0f} ms): "
            f"{study_pride:.1f} s vs letters {study_letter:.1f} s -> "
            f"{study_pride / study_letter:.2f}x (goal <= 1.2x)"
        )
    print(
        f"load: first (GGUF conversion) {first:.1f} s, cached {cached:.2f} s "
        f"-> {first / cached:.0f}x faster (goal >= 10x)"
    )

    if args.json is not None:
        n_rec = len(rec.response_ids)
        rows = [
            figure(
                "`score_options` (8 prompts) vs raw `model(**inputs)`",
                f"{t_score / t_raw:.2f}x",
                "<= 1.10x",
                score_ms=t_score * 1e3,
                raw_ms=t_raw * 1e3,
            ),
            figure(
                f"`internals` with all hidden states (lens off, {n_rec} response tokens) "
                "vs raw forward",
                f"{t_int_nolens / t_raw1:.2f}x (full {lm.n_layers + 1}-layer logit lens: "
                f"{t_int / t_raw1:.1f}x)",
                "<= 1.3x",
                internals_ms=t_int_nolens * 1e3,
                internals_lens_ms=t_int * 1e3,
                raw_ms=t_raw1 * 1e3,
            ),
            figure(
                f"4-option cloze after a {cloze_ids.shape[1]}-token prompt vs one raw "
                "forward of it",
                f"{t_cloze / t_raw_prompt:.2f}x",
                "<= 1.5x",
                cloze_ms=t_cloze * 1e3,
                raw_ms=t_raw_prompt * 1e3,
            ),
            figure(
                f"PriDe debiasing ({n_calibration} calibration items x {n_options} orderings, "
                "then 1 pass per item) vs letters over a study",
                "; ".join(f"{p / s:.2f}x on {n:,} items" for n, (p, s) in pride.items()),
                "<= 1.2x",
                **{f"ratio_{n}": p / s for n, (p, s) in pride.items()},
            ),
            figure(
                "cached load vs first GGUF load",
                f"{cached:.2f} s vs {first:.1f} s ({first / cached:.0f}x)",
                ">= 10x",
                cached_s=cached,
                first_s=first,
            ),
        ]
        write_result(args.json, "bench_models", "Model backend vs raw transformers", rows)


if __name__ == "__main__":
    main()
