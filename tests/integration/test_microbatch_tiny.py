"""Cross-item micro-batching on the tiny model: batched cloze scoring equals the
one-at-a-time scores, the batcher never deadlocks, and a run with several items in
flight records the same answers as a run answering one item at a time.

Tolerance: merged padded forwards differ from unpadded ones only by float rounding;
on the float32 tiny model the log-probabilities agree within ``ATOL`` (measured
differences are ~1e-5 on sums of up to ~20 token log-probs) and every argmax is equal.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from safescale.experiments.config import parse_config
from safescale.models.microbatch import MicroBatchedLM, MicroBatcher, score_continuations_batched
from safescale.models.tiny import build_tiny_model, save_tiny_model
from safescale.rundir import load_responses, load_steps

ATOL = 1e-3

MESSAGES = [
    "Short?",
    "A much longer question about iodinated contrast media and kidney function, "
    "with several clauses, so that its prompt is far longer than the others?",
    "Question:",
    "Which imaging study first for suspected appendicitis in a child?",
]
CONTINUATIONS = [
    ["yes", "no way", "maybe so then"],
    ["alpha beta", "g"],
    ["relevant", "not relevant"],
    ["ultrasound of the abdomen", "CT", "MRI without contrast", "x"],
]


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_batched_continuations_equal_one_at_a_time(chat, batch_size):
    lm = build_tiny_model(seed=0, chat=chat)
    alone = lm.score_continuations(MESSAGES, CONTINUATIONS)
    merged = score_continuations_batched(lm, MESSAGES, CONTINUATIONS, batch_size=batch_size)
    assert np.array_equal(np.isnan(alone.logprob), np.isnan(merged.logprob))
    np.testing.assert_allclose(merged.logprob, alone.logprob, atol=ATOL, equal_nan=True)
    assert np.array_equal(merged.n_tokens, alone.n_tokens)
    assert np.array_equal(merged.n_chars, alone.n_chars)
    for row, texts in enumerate(CONTINUATIONS):
        n = len(texts)
        assert np.argmax(merged.logprob[row, :n]) == np.argmax(alone.logprob[row, :n])
    # each prompt alone (no shared prefix, no padding) gives the same numbers too
    for row, (message, texts) in enumerate(zip(MESSAGES, CONTINUATIONS, strict=True)):
        single = lm.score_continuations([message], [texts]).logprob[0]
        np.testing.assert_allclose(merged.logprob[row, : len(texts)], single, atol=ATOL)


def _serve_item_threads(batcher: MicroBatcher, body, n: int, *, timeout: float) -> None:
    """Run ``body(worker)`` in ``n`` item threads of ``batcher`` while this thread (the
    one that made the batcher) serves their model calls; fail on a stuck worker."""
    ended: list[int] = []

    def run(worker: int) -> None:
        try:
            with batcher.worker():
                body(worker)
        finally:
            ended.append(worker)
            batcher.wake()

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in range(n)]
    for t in threads:
        t.start()
    batcher.serve(lambda: len(ended) == n, timeout=timeout)
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads), "a worker is stuck (deadlock)"


def test_batcher_merges_calls_and_never_deadlocks_when_items_end_at_different_times():
    """Threads that make 1..5 calls each (so they finish at different times) and one
    that fails: every thread ends (timeout guard), every result equals the direct call,
    and calls were merged (fewer forwards than requests)."""
    lm = build_tiny_model(seed=1)
    batcher = MicroBatcher(lm, batch_size=4)
    wrapped = MicroBatchedLM(lm, batcher)
    letters = ["A", "B", "C"]
    results: dict[tuple[int, int], object] = {}
    errors: dict[int, BaseException] = {}

    def calls(worker: int) -> list[tuple[str, object]]:
        out = []
        for k in range(worker + 1):
            message = MESSAGES[(worker + k) % len(MESSAGES)] + f" ({worker}.{k})"
            if k % 2 == 0:
                out.append(("c", (message, CONTINUATIONS[(worker + k) % len(CONTINUATIONS)])))
            else:
                out.append(("o", (message + "\nA) x\nB) y\nC) z", letters)))
        return out

    def run(worker: int) -> None:
        try:
            for k, (kind, (message, payload)) in enumerate(calls(worker)):
                if kind == "c":
                    results[worker, k] = wrapped.score_continuations([message], [payload])
                else:
                    results[worker, k] = wrapped.score_options([message], payload)
            if worker == 2:
                raise RuntimeError("item 2 failed")
        except RuntimeError as exc:
            errors[worker] = exc

    _serve_item_threads(batcher, run, 5, timeout=120)
    assert list(errors) == [2]
    n_requests = sum(len(calls(w)) for w in range(5))
    assert len(results) == n_requests
    assert batcher.merged_requests == n_requests
    assert batcher.batches < n_requests  # calls of different items shared forwards
    for (worker, k), got in results.items():
        kind, (message, payload) = calls(worker)[k]
        if kind == "c":
            want = lm.score_continuations([message], [payload])
            np.testing.assert_allclose(got.logprob, want.logprob, atol=ATOL)
            assert np.array_equal(got.n_tokens, want.n_tokens)
        else:
            want = lm.score_options([message], payload)
            np.testing.assert_allclose(got, want, atol=ATOL)


def test_an_error_in_a_merged_call_reaches_its_caller_and_the_others_go_on():
    lm = build_tiny_model(seed=1, context_length=64)
    batcher = MicroBatcher(lm, batch_size=4)
    wrapped = MicroBatchedLM(lm, batcher)
    outcome: dict[int, object] = {}

    def run(worker: int) -> None:
        message = "x " * 80 if worker == 0 else MESSAGES[2 * (worker - 1)]
        try:
            outcome[worker] = wrapped.score_continuations([message], [["yes", "no"]])
        except ValueError as exc:
            outcome[worker] = exc

    _serve_item_threads(batcher, run, 3, timeout=60)
    assert isinstance(outcome[0], ValueError) and "context limit" in str(outcome[0])
    for worker in (1, 2):
        want = lm.score_continuations([MESSAGES[2 * (worker - 1)]], [["yes", "no"]])
        np.testing.assert_allclose(outcome[worker].logprob, want.logprob, atol=ATOL)


# ---------------------------------------------------------------- the runner
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _config(tiny_dir: Path, out: Path, in_flight: int, formulation: str):
    text = f"""
name: inflight
models:
  - name: tiny
    spec: {tiny_dir}
    items_in_flight: {in_flight}
    batch_size: 4
corpora: [radiology-guidelines]
conditions: [closed_book, clean_evidence, agentic_rag]
answer: {{formulation: {formulation}}}
shard_size: 5
limit: 6
bootstrap: {{replicates: 50}}
"""
    return parse_config(text).with_overrides(output_dir=out)


def _key(r) -> tuple:
    return (r.model, r.condition, r.item, r.samples_budget, r.conflict_dose)


@pytest.mark.parametrize("formulation", ["cloze_pmi", "letter"])
def test_a_run_with_items_in_flight_records_the_same_answers(tiny_dir, tmp_path, formulation):
    from safescale.experiments import run_experiment, write_report

    runs = {}
    for n in (1, 3):
        out = tmp_path / f"n{n}"
        summary = run_experiment(_config(tiny_dir, out, n, formulation), progress=False)
        assert summary.answered == 18
        responses = load_responses(out)[0]
        steps = load_steps(out)
        metrics = json.loads(write_report(out, plots=False).metrics_json.read_text())
        runs[n] = (responses, steps, metrics)
    (one, steps_one, metrics_one), (three, steps_three, metrics_three) = runs[1], runs[3]
    # committed in the same deterministic order, with the same answers
    assert [_key(r) for r in one] == [_key(r) for r in three]
    for a, b in zip(one, three, strict=True):
        assert (a.chosen, a.response, a.message, a.evidence_ids, a.cited_ids) == (
            b.chosen,
            b.response,
            b.message,
            b.evidence_ids,
            b.cited_ids,
        )
        np.testing.assert_allclose(a.option_logits, b.option_logits, atol=ATOL)
        assert a.prompt_tokens == b.prompt_tokens
    assert [(s.item, s.condition, s.node, s.decision) for s in steps_one] == [
        (s.item, s.condition, s.node, s.decision) for s in steps_three
    ]
    # the same metrics (timing and the run's own directory aside)
    metrics_one["run"].pop("dir"), metrics_three["run"].pop("dir")
    assert metrics_one["cells"] and metrics_one["validity"]
    _assert_same(metrics_one, metrics_three, "metrics")


def _timing(key: str) -> bool:
    return "latency" in key or "ms_per" in key or key in {"wall_ms", "seconds"}


def _assert_same(a, b, where: str) -> None:
    """Equal JSON values (floats to 1e-4: confidences inherit the option scores' float
    rounding), timing fields skipped."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            if not _timing(key):
                _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-4, nan_ok=True), where
    else:
        assert a == b, where


def test_items_in_flight_merges_calls_in_a_shard_and_is_not_part_of_the_config_hash(
    tiny_dir, tmp_path
):
    from safescale.experiments.runner import CellTask, CellWorker

    one = _config(tiny_dir, tmp_path / "a", 1, "cloze_pmi")
    four = _config(tiny_dir, tmp_path / "b", 4, "cloze_pmi")
    assert one.config_hash() == four.config_hash()
    ids = tuple(sorted(i.id for i in _corpus_items())[:4])
    task = CellTask("tiny", "radiology-guidelines", "clean_evidence", 1, ids)
    results = {}
    for config in (one, four):
        Path(config.run_dir).mkdir(parents=True)
        worker = CellWorker(config, "tiny")
        try:
            results[config.models[0].items_in_flight] = worker.run_task(task)
            if worker.batcher is not None:
                assert worker.batcher.merged_requests > worker.batcher.batches > 0
        finally:
            worker.close()
    assert [json.loads(r.response)["item"] for r in results[4]] == list(ids)
    for a, b in zip(results[1], results[4], strict=True):
        ra, rb = json.loads(a.response), json.loads(b.response)
        assert ra["chosen"] == rb["chosen"]
        np.testing.assert_allclose(ra["option_logits"], rb["option_logits"], atol=ATOL)


def _corpus_items():
    from safescale.corpora import load_corpus

    return load_corpus("radiology-guidelines").items


def test_prompts_of_very_different_lengths_are_not_padded_into_one_prefill():
    from safescale.models.microbatch import length_chunks

    # the neutral PMI prompt (a few tokens) never shares a prefill with a 500-token prompt
    assert length_chunks([4, 5, 480, 500, 520, 900], 8) == [[0, 1], [2, 3, 4], [5]]
    assert length_chunks([100] * 5, 2) == [[0, 1], [2, 3], [4]]  # and batch_size holds
    assert length_chunks([], 4) == []


def test_item_threads_model_calls_run_on_the_serving_thread():
    """Every model call of an item thread, merged or not, runs on the thread that made
    the batcher (one torch thread pool in the process)."""
    lm = build_tiny_model(seed=1)
    batcher = MicroBatcher(lm, batch_size=4)
    wrapped = MicroBatchedLM(lm, batcher)
    seen: list[int] = []

    class Spy:
        def __getattr__(self, name):
            return getattr(lm, name)

        def prompt_ids(self, *args, **kwargs):
            seen.append(threading.get_ident())
            return lm.prompt_ids(*args, **kwargs)

    def run(_worker: int) -> None:
        wrapped.score_continuations([MESSAGES[0]], [CONTINUATIONS[0]])
        wrapped.prompt_ids(MESSAGES[0])  # a model method that is not merged

    wrapped.lm = Spy()  # the wrapped model's own methods report their thread
    _serve_item_threads(batcher, run, 2, timeout=60)
    assert len(seen) == 2  # one call per item thread, each run on the serving thread
    assert set(seen) == {threading.get_ident()}
