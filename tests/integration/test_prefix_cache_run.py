"""The runner with the prefix cache and max-context's corpus order, on the tiny model
saved as a local model directory: the same answers with the cache on and off, items
answered next to those sharing their evidence while records are committed in shard
order, a crash mid-shard resumed to the same records, and one shared evidence block
(the same passages left out) for every max-context item under ``order: corpus``.

Tolerance: as in ``test_prefix_cache_tiny.py`` (a prompt prefilled over a cached
prefix differs from a cold prefill by float rounding only): option scores within
``ATOL = 1e-4``, every chosen option equal.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from safescale.experiments.config import parse_config
from safescale.models.tiny import save_tiny_model
from safescale.rundir import load_responses, load_steps

ATOL = 1e-4
#: rad-0001..0006 share one clean evidence set; their conflict sets interleave
#: (0003, 0004 and 0006 share one), so the conflict shard is answered out of order.
ITEMS = [f"rad-000{i}" for i in range(1, 7)]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _config(
    tiny_dir: Path,
    out: Path,
    *,
    cache_mb: float,
    order: str = "similarity",
    conditions: str = "closed_book, clean_evidence, conflict_evidence, max_context",
    budget: int = 1024,
):
    text = f"""
name: prefix
models:
  - name: tiny
    spec: {tiny_dir}
    prefix_cache_mb: {cache_mb}
corpus: radiology-guidelines
conditions: [{conditions}]
item_filter: {{ids: {json.dumps(ITEMS)}}}
answer: {{formulation: cloze_token}}
context_budget: {budget}
max_context: {{order: {order}}}
bootstrap: {{replicates: 100}}
"""
    return parse_config(text).with_overrides(output_dir=out)


def _assert_same_answers(a: Path, b: Path) -> None:
    ra, rb = load_responses(a)[0], load_responses(b)[0]
    assert [r.key for r in ra] == [r.key for r in rb]  # same records, same order
    for x, y in zip(ra, rb, strict=True):
        assert x.chosen == y.chosen, x.key
        assert x.evidence_ids == y.evidence_ids, x.key
        assert (
            max(abs(p - q) for p, q in zip(x.option_logits, y.option_logits, strict=True)) <= ATOL
        )


@pytest.fixture(scope="module")
def cold_run(tiny_dir, tmp_path_factory) -> Path:
    from safescale.experiments import run_experiment

    out = tmp_path_factory.mktemp("cold") / "run"
    summary = run_experiment(_config(tiny_dir, out, cache_mb=0), progress=False)
    assert summary.prefix_cache == {}
    return out


def test_the_prefix_cache_gives_the_same_answers_and_commits_in_shard_order(
    tiny_dir, cold_run, tmp_path
):
    from safescale.experiments import run_experiment

    out = tmp_path / "hot"
    config = _config(tiny_dir, out, cache_mb=64)
    assert config.config_hash() == _config(tiny_dir, cold_run, cache_mb=0).config_hash()
    summary = run_experiment(config, progress=False)
    stats = summary.prefix_cache["tiny"]
    assert stats["reused_tokens"] > 0 and stats["computed_tokens"] > 0
    _assert_same_answers(cold_run, out)
    responses = load_responses(out)[0]
    conflict = [r.item for r in responses if r.condition == "conflict_evidence"]
    assert conflict == ITEMS  # committed in shard order
    # ... but answered with the items sharing a conflict set next to each other (the
    # order the item threads first appear in the run's checkpoints)
    with sqlite3.connect(out / "checkpoints.sqlite") as db:
        threads = [row[0] for row in db.execute("SELECT thread_id FROM checkpoints ORDER BY rowid")]
    answered = [t.split("|")[4] for t in dict.fromkeys(threads) if "|conflict_evidence|" in t]
    assert answered == ["rad-0001", "rad-0002", "rad-0003", "rad-0004", "rad-0006", "rad-0005"]


def test_a_crash_mid_shard_resumes_to_the_same_records(tiny_dir, cold_run, tmp_path):
    from safescale.experiments import run_experiment

    out = tmp_path / "crash"
    config = _config(tiny_dir, out, cache_mb=64)

    def crash(n: int) -> None:
        # the 5th conflict-evidence commit (rad-0005): rad-0006, answered before it,
        # is done but not committed yet
        if n == 6 + 6 + 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, progress=False, on_item=crash)
    done = load_responses(out)[0]
    assert len(done) == 17 and done[-1].item == "rad-0005"
    resumed = run_experiment(config, progress=False)
    assert (resumed.answered, resumed.skipped) == (24 - 17, 17)
    _assert_same_answers(cold_run, out)


def test_corpus_order_shares_one_evidence_block_across_items(tiny_dir, tmp_path):
    from safescale.experiments import run_experiment

    runs = {}
    for cache_mb in (0, 64):
        out = tmp_path / f"corpus-{cache_mb}"
        config = _config(
            tiny_dir, out, cache_mb=cache_mb, order="corpus", conditions="max_context", budget=4096
        )
        summary = run_experiment(config, progress=False)
        runs[cache_mb] = (out, summary)
    _assert_same_answers(runs[0][0], runs[64][0])
    # with one block for every max-context item, most prompt tokens come from the cache
    assert runs[64][1].prefix_cache["tiny"]["reuse_fraction"] > 0.6
    out = runs[64][0]
    steps = [s for s in load_steps(out) if s.node == "pack_context"]
    assert len(steps) == len(ITEMS)
    blocks = {tuple(s.kept) for s in steps}
    left_out = {tuple(s.dropped) for s in steps}
    assert len(blocks) == 1 and len(left_out) == 1  # the same block for every item
    (kept,) = blocks
    (dropped,) = left_out
    assert kept and dropped  # 4096 tokens of a character tokenizer: the corpus does not fit
    detail = steps[0].detail
    assert detail["order"] == "corpus" and "topic" in detail["order_rule"]
    assert set(detail["left_out_reasons"]) == set(dropped)
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["max_context"]["tiny"]["radiology-guidelines"]
    assert record["order"] == "corpus"
    assert tuple(record["kept"]) == kept and set(record["left_out"]) == set(dropped)
    # the prompts of the max-context items differ only after the shared block
    responses = [r for r in load_responses(out)[0] if r.condition == "max_context"]
    assert {tuple(r.evidence_ids) for r in responses} == {kept}
    # the corpus-order run's config differs from the similarity one's
    assert config.config_hash() != config.with_overrides(max_context={}).config_hash()
