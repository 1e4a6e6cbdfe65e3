"""The prefix cache and max-context's packing order on a whole study, in one process.

Runs one study config (default: the bundled ``safe-scale`` study, six conditions) with
the real runner into fresh run directories, one after the other, each from an empty
LM cache (so every prompt is computed, as in a first run):

* ``A`` cold: ``prefix_cache_mb: 0``, ``max_context.order: similarity`` (a run before
  the prefix cache);
* ``B`` prefix cache on, ``order: similarity``;
* ``C`` prefix cache on, ``order: corpus``;
* ``D`` cold, ``order: corpus``.

One-off costs that only a first run pays (the evidence stores' embedding cache, the
model's conversion cache) are paid in a warm-up before ``A``.

Printed:

* the wall time of each run (model load, calibration, store and every item) and its
  ratio to ``A`` (target: ``C`` <= 0.4x);
* seconds per item per condition (mean of the responses' graph wall times) in every
  run, and max-context against clean evidence in ``C`` (target <= 2x);
* whether the cache changes answers: ``B`` against ``A`` and ``C`` against ``D`` (the
  same packing order): chosen options that differ, the largest option-score
  difference (stated tolerance 1e-3), and the prefix cache's token counts;
* the order comparison that decides ``max_context.order``'s default: max-context's
  accuracy and safety rates under ``similarity`` (``A``) and ``corpus`` (``D``), each
  with n and a 95 % bootstrap interval, and the paired difference corpus - similarity
  over the same items, with a verdict in words.

Absolute times depend on the machine's load: run it alone. Ratios are the figures to
read. A quick check of the script itself: ``--limit 2 --formulation cloze_token``.

Run: ``.venv/bin/python benchmarks/bench_prefix.py [--config safe-scale] [--limit N]
[--json benchmarks/results/bench_prefix.json]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from render_results import figure, write_result

RUNS = {
    "A": ("cold, similarity", 0, "similarity"),
    "B": ("cache, similarity", None, "similarity"),
    "C": ("cache, corpus", None, "corpus"),
    "D": ("cold, corpus", 0, "corpus"),
}
RATES = ("accuracy", "high_risk_error", "unsafe_answer", "contradiction")
TOLERANCE = 1e-3


def _config_for(base, out: Path, cache_mb: float, order: str, args):
    models = []
    for model in base.models:
        entry = model.model_dump(mode="json")
        entry["prefix_cache_mb"] = cache_mb
        if args.model:
            entry["spec"] = args.model
        models.append(entry)
    changes = {"output_dir": out, "models": models, "max_context": {"order": order}}
    if args.limit is not None:
        changes["limit"] = args.limit
    if args.conditions:
        changes["conditions"] = [c.strip() for c in args.conditions.split(",") if c.strip()]
    if args.context_budget is not None:
        changes["context_budget"] = [
            None if args.context_budget.lower() == "none" else int(args.context_budget)
        ]
    if args.formulation:
        changes["answer"] = {**base.answer.model_dump(mode="json"), "formulation": args.formulation}
    return base.with_overrides(**changes)


def _per_condition(responses) -> dict[str, float]:
    return {c: statistics.mean(v) for c, v in _seconds_by_condition(responses).items()}


def _seconds_by_condition(responses) -> dict[str, list[float]]:
    by: dict[str, list[float]] = {}
    for r in responses:
        by.setdefault(r.condition, []).append(r.wall_ms / 1000)
    return by


def _mean_interval(values: list[float]) -> str:
    """``mean [lo, hi] (n)``: a Student-t 95 % interval of the mean item time (the
    items of one run; the run-to-run spread of the machine is not in it)."""
    from scipy.stats import t

    n = len(values)
    mean = statistics.mean(values)
    if n < 2:
        return f"{mean:.3f} (n = 1, no interval)"
    half = float(t.ppf(0.975, n - 1)) * statistics.stdev(values) / n**0.5
    return f"{mean:.3f} [{max(0.0, mean - half):.3f}, {mean + half:.3f}] (n = {n})"


def _compare(a, b) -> str:
    by_key = {r.key: r for r in b}
    common = [r for r in a if r.key in by_key]
    changed = [r.key for r in common if r.chosen != by_key[r.key].chosen]
    diff = max(
        (
            abs(x - y)
            for r in common
            for x, y in zip(r.option_logits, by_key[r.key].option_logits, strict=True)
        ),
        default=0.0,
    )
    verdict = "same answers" if not changed and diff <= TOLERANCE else "ANSWERS DIFFER"
    return (
        f"{len(common)} responses: {len(changed)} chosen options differ, largest option-score "
        f"difference {diff:.2e} (tolerance {TOLERANCE:g}): {verdict}"
    )


def _interval(est: dict) -> str:
    if est.get("value") is None:
        return "n/a"
    lo, hi = est.get("lo"), est.get("hi")
    ci = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None and hi is not None else ""
    return f"{100 * est['value']:.1f}%{ci}"


def _order_comparison(run_a: Path, run_d: Path, config, pair: str) -> list[dict]:
    """Max-context under similarity (``run_a``) vs corpus (``run_d``), paired over items;
    returns the result-file rows."""
    from safescale.rundir import RunDir
    from safescale.statistics.metrics import MetricsConfig, metrics_from_records

    similarity = [r for r in RunDir(run_a).responses() if r.condition == "max_context"]
    corpus = [
        r.model_copy(update={"condition": "max_context_corpus"})
        for r in RunDir(run_d).responses()
        if r.condition == "max_context"
    ]
    if not similarity or not corpus:
        print(f"order comparison: no max_context responses in runs {pair}")
        return []
    metrics = metrics_from_records(
        similarity + corpus,
        RunDir(run_a).corpora(),
        bootstrap=config.bootstrap,
        metrics=MetricsConfig(
            comparisons=(("max_context_corpus", "max_context"),),
            compare_budgets=False,
            compare_models=False,
        ),
    )
    print(f"\n### max_context.order: similarity vs corpus (runs {pair})\n")
    rows: list[dict] = []
    print("| order | n | " + " | ".join(RATES) + " |\n|---|---|" + "---|" * len(RATES))
    for cell in metrics["cells"]:
        name = "corpus" if cell["condition"] == "max_context_corpus" else "similarity"
        row = " | ".join(_interval(cell["metrics"][m]) for m in RATES)
        print(f"| {name} ({cell['model']}, {cell['corpus']}) | {cell['n']} | {row} |")
        rows.append(figure(
            f"max-context under `order: {name}` (runs {pair}, {cell['corpus']}): "
            + ", ".join(RATES) + " (95 % bootstrap intervals)",
            f"n = {cell['n']}: " + "; ".join(
                f"{m} {_interval(cell['metrics'][m])}" for m in RATES),
            "",
        ))  # fmt: skip
    for comp in metrics["comparisons"]:
        print(f"\ncorpus - similarity, paired over {comp['n_items']} items "
              f"({metrics['run']['resampling_unit']} resampled, 95 % intervals):")  # fmt: skip
        if comp["n_items"] < 30:
            print(f"  (only {comp['n_items']} items: too few to decide the default; run the "
                  "full study)")  # fmt: skip
        parts = []
        for m in RATES:
            d = comp["deltas"][m]
            if d.get("value") is None:
                print(f"  {m}: n/a")
                parts.append(f"{m} n/a")
                continue
            lo, hi = d["lo"], d["hi"]
            verdict = (
                f"no measurable difference at n = {comp['n_items']} (the interval includes 0)"
                if lo is not None and hi is not None and lo <= 0 <= hi
                else ("corpus higher" if d["value"] > 0 else "corpus lower")
            )
            print(f"  {m}: {100 * d['value']:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]: "
                  f"{verdict}")  # fmt: skip
            parts.append(f"{m} {100 * d['value']:+.1f} points [{100 * lo:+.1f}, "
                         f"{100 * hi:+.1f}]: {verdict}")  # fmt: skip
        rows.append(figure(
            f"max-context corpus - similarity, paired over {comp['n_items']} items (runs {pair})",
            "; ".join(parts), "decides the default",
        ))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="safe-scale", help="bundled name or YAML path")
    parser.add_argument("--limit", type=int, default=None, help="items per corpus")
    parser.add_argument("--runs", default="A,B,C,D", help="which of A,B,C,D (comma list)")
    parser.add_argument("--model", default=None, help="override every model's spec")
    parser.add_argument("--formulation", default=None, help="override answer.formulation")
    parser.add_argument("--prefix-cache-mb", type=float, default=None,
                        help="the cache bound of runs B and C (default: the config's)")  # fmt: skip
    parser.add_argument("--conditions", default=None,
                        help="only these conditions (comma list)")  # fmt: skip
    parser.add_argument("--context-budget", default=None,
                        help="context_budget: tokens, or 'none' (the window)")  # fmt: skip
    parser.add_argument("--keep", default=None, help="write the run directories here")
    parser.add_argument("--json", type=Path, default=None, help="also write a result file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from safescale.experiments import run_experiment
    from safescale.experiments.config import load_config
    from safescale.rundir import RunDir

    base = load_config(args.config)
    wanted = [r.strip() for r in args.runs.split(",") if r.strip()]
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench-prefix-"))
    # one-off costs every run after the first would skip (embedding cache of the evidence
    # stores, the model's conversion cache, the embedder's first load) are paid here,
    # so that run A is not charged for them
    from safescale.corpora import load_corpus
    from safescale.models import load_model
    from safescale.retrieval import open_store

    for ref in base.corpora:
        open_store(
            load_corpus(ref), index_type=base.retrieval.index_type, show_progress=False
        ).search("warm-up", k=1)
    for model in base.models:
        load_model(args.model or model.source, device=model.device, dtype=model.dtype)
    results: dict[str, dict] = {}
    for name in wanted:
        label, cache_mb, order = RUNS[name]
        if cache_mb is None:
            cache_mb = (
                args.prefix_cache_mb
                if args.prefix_cache_mb is not None
                else base.models[0].prefix_cache_mb
            )
        out = root / name
        config = _config_for(base, out, cache_mb, order, args)
        summary = run_experiment(config, fresh=True, progress=False)
        responses = RunDir(out).responses()
        results[name] = {
            "label": label,
            "seconds": summary.seconds,
            "per_condition": _per_condition(responses),
            "seconds_by_condition": _seconds_by_condition(responses),
            "responses": responses,
            "prefix": summary.prefix_cache,
            "dir": out,
        }
        print(f"run {name} ({label}, prefix_cache_mb {cache_mb:g}): {summary.answered} "
              f"responses in {summary.seconds:.1f} s -> {out}", flush=True)  # fmt: skip

    budget = args.context_budget or list(base.context_budget)
    print(f"\nconfig {args.config} · limit {args.limit} · context_budget {budget} · "
          f"threads {torch.get_num_threads()}\n")  # fmt: skip
    names = list(results)
    conditions = list(dict.fromkeys(c for r in results.values() for c in r["per_condition"]))
    print("| seconds per item | " + " | ".join(f"{n}: {results[n]['label']}" for n in names)
          + " | " + " | ".join(f"{n} / A (of means, no interval)" for n in names
                           if n != "A" and "A" in results)
          + " |")  # fmt: skip
    print("|---|" + "---|" * (len(names) + sum(n != "A" and "A" in results for n in names)))
    for condition in conditions:
        cells = [results[n]["seconds_by_condition"].get(condition) for n in names]
        row = " | ".join("" if v is None else _mean_interval(v) for v in cells)
        ratios = ""
        if "A" in results:
            base_value = results["A"]["per_condition"].get(condition)
            ratios = " | ".join(
                f"{results[n]['per_condition'][condition] / base_value:.2f}x"
                if base_value and condition in results[n]["per_condition"]
                else ""
                for n in names
                if n != "A"
            )
        print(f"| {condition} | {row} | {ratios} |")
    walls = " | ".join(f"{results[n]['seconds']:.1f}" for n in names)
    ratios = ""
    if "A" in results:
        ratios = " | ".join(
            f"{results[n]['seconds'] / results['A']['seconds']:.2f}x" for n in names if n != "A"
        )
    print(f"| **study wall time (s)**, one run each (no interval) | {walls} | {ratios} |")
    json_rows = [
        figure(
            f"{condition}: seconds per item, "
            + ", ".join(f"{n} {results[n]['label']}" for n in names),
            " / ".join(
                _mean_interval(results[n]["seconds_by_condition"][condition])
                if condition in results[n]["per_condition"]
                else "—"
                for n in names
            ),
            "",
            **{n: results[n]["per_condition"].get(condition) for n in names},
        )
        for condition in conditions
    ]
    if "A" in results and "C" in results:
        ratio = results["C"]["seconds"] / results["A"]["seconds"]
        print(f"\ncache + corpus order vs cold similarity: {ratio:.2f}x wall time "
              f"(target <= 0.4x: {'met' if ratio <= 0.4 else 'not met'})")  # fmt: skip
        json_rows.append(
            figure("study wall time, C (cache + corpus order) vs A (cold, similarity), "
                   "one run each (no interval)",
                f"{ratio:.2f}x", "<= 0.4x", ratio=ratio)
        )  # fmt: skip
    if "C" in results:
        per = results["C"]["per_condition"]
        if "max_context" in per and "clean_evidence" in per:
            ratio = per["max_context"] / per["clean_evidence"]
            print(f"max-context vs clean evidence per item in run C: {ratio:.2f}x "
                  f"(target <= 2x: {'met' if ratio <= 2 else 'not met'})")  # fmt: skip
            json_rows.append(
                figure("max-context vs clean evidence per item in run C", f"{ratio:.2f}x",
                    "<= 2x", ratio=ratio)
            )  # fmt: skip
            # steady state: the first item of a condition fills the cache (under corpus
            # order, max-context's first item prefills the whole block); committed order
            # starts with the first item answered, as groups keep their first item's place
            seconds = results["C"]["seconds_by_condition"]
            later = {c: seconds[c][1:] for c in ("max_context", "clean_evidence")}
            if all(len(v) >= 2 for v in later.values()):
                steady = statistics.mean(later["max_context"]) / statistics.mean(
                    later["clean_evidence"]
                )
                print(f"the same after each condition's first item: {steady:.2f}x (max-context "
                      f"{_mean_interval(later['max_context'])}, clean evidence "
                      f"{_mean_interval(later['clean_evidence'])})")  # fmt: skip
                json_rows.append(
                    figure("max-context vs clean evidence per item in run C, after each "
                           "condition's first item (steady state)",
                        f"{steady:.2f}x", "<= 2x", ratio=steady)
                )  # fmt: skip
    for a, b in (("B", "A"), ("C", "D")):
        if a in results and b in results:
            compared = _compare(results[a]["responses"], results[b]["responses"])
            print(f"answers {a} vs {b}: {compared}")
            json_rows.append(figure(f"answers of run {a} vs run {b}", compared, "same answers"))
    for name in names:
        for model, stats in results[name]["prefix"].items():
            print(f"prefix cache of run {name} ({model}): {stats}")
    # the order comparison: the cold pair if both ran, else a pair with the cache (the
    # cache gives the cold answers: checked above when B/A and C/D ran, and in the tests)
    for sim, cor in (("A", "D"), ("B", "C"), ("A", "C"), ("B", "D")):
        if sim in results and cor in results:
            json_rows += _order_comparison(
                results[sim]["dir"], results[cor]["dir"], base, f"{sim} and {cor}"
            )
            break
    print(f"\nrun directories: {root}")
    if args.json is not None:
        write_result(
            args.json, "bench_prefix", "The prefix cache and max-context's order on a study",
            json_rows,
        )  # fmt: skip


if __name__ == "__main__":
    main()
