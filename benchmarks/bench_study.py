"""Per-item cost of a study next to its raw-forward floor, measured in the same run.

For each of ``--items`` items of a corpus (clean-evidence cloze prompts, the ``ecrt``
study's setting), with the bundled model:

* floors: a raw forward of the answer prompt (``logits_to_keep=1``), a raw forward of
  the NOCTX prompt + response ids, and the decoding of the sampled answers
  (``generate_from`` on a prefilled prompt: decoding only, no prefill);
* answer + ECRT features: the shared pass (the answer read from the prompt prefill,
  CTX by extending its cache, NOCTX on the short prompt) vs the separate path (answer,
  then two teacher-forced passes); target <= 1.3x of (answer forward + NOCTX forward);
* the ``ecrt`` study per response: the condition graph with detection recorded at
  answer time for all 14 detectors and ``detection_samples`` sampled answers (decoded
  from the answer's prompt cache, ``generate_from``; P(True) by extending the CTX cache
  by its question suffix; EigenScore over a view of the prompt cache), then
  ``extract_features`` from the stored inputs; target <= 2x of its floor (answer +
  NOCTX forwards + decoding); the separate row samples with ``generate`` (its own
  prefill) and runs every detector pass from scratch; and the extrapolated time of the
  full ``--study-items`` (12,522) study per condition (target <= 9 h);
* per condition: the seconds per item of every condition graph (no detection), with
  the prefix cache off and on in the same run (``--prefix-cache-mb``; the cache of a
  condition persists across its items, as in a study, so the median item is the
  steady state) and max-context packed in ``--max-context-order``.

Every measurement starts from a fresh LM cache that holds only the neutral-prompt
scores of the corpus's option texts (``cloze_pmi`` divides by them): a study computes
each option text's neutral score once and reads it from its run cache for every later
item (``retina-rules`` has 23 distinct option texts over 600 items), so a per-item cost
that recomputed them would not be a study's per-item cost. Their one-off cost is printed.

Ratios are the figures to read; absolute times depend on the machine's load.

Run: ``.venv/bin/python benchmarks/bench_study.py [--items 6]
[--json benchmarks/results/bench_study.json]``
"""

# The timed lambdas are called at once, inside the loop iteration that defines them.
# ruff: noqa: B023
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from render_results import figure, write_result

ALL_CONDITIONS = (
    "closed_book",
    "clean_evidence",
    "conflict_evidence",
    "standard_rag",
    "agentic_rag",
    "max_context",
)


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--corpus", default="retina-rules")
    parser.add_argument("--items", type=int, default=6)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--study-items", type=int, default=12522)
    parser.add_argument("--conditions", default="all", help="comma list, or 'all', or 'none'")
    parser.add_argument("--prefix-cache-mb", type=float, default=512)
    parser.add_argument("--max-context-order", choices=["similarity", "corpus"],
                        default="similarity")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write a result file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from safescale.agents import AgentContext, AgentSettings, build_condition
    from safescale.agents.lmcache import CachedLM
    from safescale.agents.run import answer_item
    from safescale.corpora import load_corpus
    from safescale.detection.extraction import (
        DetectionInputStore,
        ExtractionPlan,
        SharedPassRecorder,
        extract_features,
        teacher_forced_pair,
        token_idf,
    )
    from safescale.detection.pipeline import DEFAULT_DETECTORS
    from safescale.models import load_model
    from safescale.models.prefix_cache import PrefixCache

    lm = load_model(args.model)
    corpus = load_corpus(args.corpus)
    items = [i for i in corpus.items if i.evidence.clean][: args.items]
    full_plan = ExtractionPlan.for_detectors(DEFAULT_DETECTORS)
    ecrt_plan = ExtractionPlan()
    idf = token_idf(lm, [corpus])  # Focus's IDF table: once per corpus, as the runner does
    rows: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    from safescale.models import NEUTRAL_MESSAGE

    # the steady state of a study's LM cache: every option text's neutral-prompt score
    warm = CachedLM(lm)
    option_sets = sorted({tuple(i.options[k] for k in i.letters) for i in corpus.items})
    t_neutral = _time(
        lambda: [warm.score_continuations([NEUTRAL_MESSAGE], [list(o)]) for o in option_sets]
    )

    def graph_run(condition, item, settings, plan, store_dir):
        recorder = None
        if plan is not None:
            store = DetectionInputStore(Path(store_dir))
            recorder = SharedPassRecorder(plan, store, lm.model_hash, lm.n_layers)
        ctx = AgentContext(
            lm=warm.copy(),  # fresh but for the neutral-prompt scores (see the docstring)
            corpus=corpus,
            store=stores.get(condition),
            settings=settings,
            run_id="bench",
            detection=recorder,
        )
        graph = build_condition(condition)
        return answer_item(graph, condition, item.id, ctx, model=lm.name)

    stores: dict[str, object] = {}
    conditions = (
        [*ALL_CONDITIONS]
        if args.conditions == "all"
        else ([] if args.conditions == "none" else args.conditions.split(","))
    )
    if {"standard_rag", "agentic_rag", "max_context"} & set(conditions):
        from safescale.retrieval import open_store

        store = open_store(corpus, show_progress=False)
        for name in ("standard_rag", "agentic_rag", "max_context"):
            stores[name] = store

    settings0 = AgentSettings(formulation="cloze_pmi")
    settings_c = AgentSettings(formulation="cloze_pmi", max_context_order=args.max_context_order)
    # one prefix cache per condition, kept across its items (a study's steady state)
    prefix_caches = {c: PrefixCache.from_megabytes(args.prefix_cache_mb) for c in conditions}
    settings_s = AgentSettings(formulation="cloze_pmi", extra_samples=args.samples)
    graph_run("clean_evidence", items[0], settings_s, full_plan, tempfile.mkdtemp())  # warm-up
    for item in items:
        with tempfile.TemporaryDirectory() as tmp:
            response, _ = graph_run("clean_evidence", item, settings0, None, tmp)
        message, noctx = response.message, response.message_noctx
        response_ids = list(lm.tokenizer(response.response, add_special_tokens=False)["input_ids"])
        answer_ids = torch.tensor([lm.prompt_ids(message, answer_cue=True)])
        noctx_ids = torch.tensor([lm.prompt_ids(noctx) + response_ids])
        with torch.inference_mode():
            f_answer = _time(lambda: lm.model(input_ids=answer_ids, logits_to_keep=1))
            f_noctx = _time(lambda: lm.model(input_ids=noctx_ids, logits_to_keep=1))
        opened = lm.open_prompt(message)
        f_decode = _time(
            lambda: lm.generate_from(opened, max_new_tokens=12, n=args.samples, temperature=0.7)
        )
        # work the floor leaves out but the features need: the cloze reading's
        # option continuations over the prompt cache, and the logit lens' own work (final
        # norm + LM head + KL at every layer, response rows of CTX and NOCTX)
        texts = [item.options[k] for k in item.letters]
        f_options = _time(lambda: lm.score_continuations_from(lm.open_prompt(message), texts))
        f_options -= f_answer  # the prefill is timed on its own above
        passes = [lm.internals(m, response_ids, lens="off") for m in (message, noctx)]
        with torch.inference_mode():
            f_lens = sum(
                _time(lambda: lm._lens_statistics(x.hidden_states, x.logits, "kl", 0))
                for x in passes
            )
        add("floor: answer-prompt forward", f_answer)
        add("floor: NOCTX forward", f_noctx)
        add(f"floor: decoding {args.samples} x 12 tokens", f_decode)
        add("work: cloze option continuations", max(0.0, f_options))
        add("work: logit lens, CTX + NOCTX", f_lens)
        # answer + ECRT, separate path: answer graph, then two teacher-forced passes
        with tempfile.TemporaryDirectory() as tmp:
            t_answer = _time(lambda: graph_run("clean_evidence", item, settings0, None, tmp))
        t_pair = _time(lambda: teacher_forced_pair(lm, response))
        add("answer + ECRT, separate passes", t_answer + t_pair)
        with tempfile.TemporaryDirectory() as tmp:
            t_shared = _time(lambda: graph_run("clean_evidence", item, settings0, ecrt_plan, tmp))
        add("answer + ECRT, shared pass", t_shared)
        # the ecrt study: answer, samples and every detector's inputs at answer time
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            rec, _ = graph_run("clean_evidence", item, settings_s, full_plan, tmp)
            t_answer_all = time.perf_counter() - start
            store = DetectionInputStore(Path(tmp))
            t_features = _time(
                lambda: extract_features(
                    [rec], lm, full_plan, stored=store, model_hash=lm.model_hash, idf=idf
                )
            )
        add("ecrt study per response (shared)", t_answer_all + t_features)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            rec, _ = graph_run("clean_evidence", item, settings_s, None, tmp)
            t_old_answer = time.perf_counter() - start
        t_old_features = _time(lambda: extract_features([rec], lm, full_plan, idf=idf))
        add("ecrt study per response (separate detection stage)", t_old_answer + t_old_features)
        for condition in conditions:
            for state in ("off", "on"):
                lm.prefix_cache = prefix_caches[condition] if state == "on" else None
                with tempfile.TemporaryDirectory() as tmp:
                    add(
                        f"condition {condition}, prefix cache {state}",
                        _time(lambda: graph_run(condition, item, settings_c, None, tmp)),
                    )
            lm.prefix_cache = None

    med = {name: statistics.median(values) for name, values in rows.items()}
    floor_ecrt = med["floor: answer-prompt forward"] + med["floor: NOCTX forward"]
    floor_study = floor_ecrt + med[f"floor: decoding {args.samples} x 12 tokens"]
    floor_work = (
        floor_ecrt + med["work: cloze option continuations"] + med["work: logit lens, CTX + NOCTX"]
    )
    print(
        f"model {lm.name} · corpus {corpus.name} · {len(items)} items · threads "
        f"{torch.get_num_threads()} · medians per item"
    )
    print(
        f"neutral-prompt scores of {len(option_sets)} option sets (once per corpus and "
        f"model, then cached): {t_neutral:.1f} s"
    )
    print("| piece | seconds | x floor |\n|---|---|---|")
    json_rows = []
    for name, value in med.items():
        if name.startswith("condition "):
            continue  # their own table below
        if name.startswith(("floor", "work")):
            print(f"| {name} | {value:.3f} | |")
            json_rows.append(figure(f"{name}, seconds per item", f"{value:.3f} s", "", s=value))
        elif name.startswith("answer + ECRT"):
            print(
                f"| {name} | {value:.3f} | {value / floor_ecrt:.2f}x (target <= 1.3x); "
                f"{value / floor_work:.2f}x of the floor + option continuations + lens |"
            )
            json_rows.append(
                figure(
                    f"{name} vs answer-prompt + NOCTX forwards",
                    f"{value / floor_ecrt:.2f}x; {value / floor_work:.2f}x of the floor plus the "
                    "option continuations and the logit lens",
                    "<= 1.3x",
                    s=value,
                    floor_s=floor_ecrt,
                    floor_work_s=floor_work,
                )
            )
        elif name.startswith("ecrt study"):
            hours = value * args.study_items / 3600
            print(
                f"| {name} | {value:.3f} | {value / floor_study:.2f}x (target <= 2x); "
                f"{args.study_items} items: {hours:.1f} h per condition (target <= 9 h) |"
            )
            json_rows.append(
                figure(
                    f"{name}, all {len(DEFAULT_DETECTORS)} detectors, {args.samples} samples, "
                    "vs its floor",
                    f"{value / floor_study:.2f}x; {args.study_items:,} items ≈ {hours:.1f} h "
                    "per condition",
                    "<= 2x, <= 9 h",
                    s=value,
                    floor_s=floor_study,
                    hours=hours,
                )
            )
        else:
            print(
                f"| {name} | {value:.3f} | {value / med['floor: answer-prompt forward']:.2f}x "
                "answer forward |"
            )
    if conditions:
        print(
            f"\n| condition (max-context order {args.max_context_order}) | prefix cache off "
            f"(s/item) | on, {args.prefix_cache_mb:g} MB (s/item) | on / off | off x answer "
            "forward |\n|---|---|---|---|---|"
        )
        for condition in conditions:
            off = med[f"condition {condition}, prefix cache off"]
            on = med[f"condition {condition}, prefix cache on"]
            print(
                f"| {condition} | {off:.3f} | {on:.3f} | {on / off:.2f}x | "
                f"{off / med['floor: answer-prompt forward']:.2f}x |"
            )
            json_rows.append(
                figure(
                    f"{condition} graph (no detection), seconds per item, prefix cache off / on",
                    f"{off:.2f} / {on:.2f} s",
                    "",
                    off_s=off,
                    on_s=on,
                )
            )
        for condition in conditions:
            cache = prefix_caches[condition]
            if cache is not None:
                print(f"prefix cache of {condition}: {cache.stats.as_dict()}")
    spreads = [statistics.pstdev(v) / statistics.mean(v) for v in rows.values() if len(v) > 1]
    if spreads:
        print(f"largest relative spread across items: {max(spreads):.0%} (machine load adds noise)")
    if args.json is not None:
        notes = [
            f"{args.corpus} clean-evidence prompts, `cloze_pmi`, medians of {len(items)} items; "
            f"the neutral-prompt PMI scores of the corpus's option texts took {t_neutral:.1f} s "
            "once per corpus and are then read from the run's cache."
        ]
        write_result(
            args.json, "bench_study", "Per-item cost of a study against its floor", json_rows,
            notes=notes,
        )  # fmt: skip


if __name__ == "__main__":
    main()
