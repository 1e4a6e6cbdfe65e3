"""The evidence store with the real bundled all-MiniLM-L6-v2 embedder."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from safescale.corpora.schema import Status
from safescale.models.embedder import load_embedder
from safescale.retrieval import EvidenceStore, open_store
from safescale.retrieval.llama_index import EvidenceRetriever
from safescale.retrieval.testing import make_corpus, make_passage

pytestmark = pytest.mark.slow

PASSAGES = [
    make_passage(
        "fleischner-2017-solid-small",
        "Solid pulmonary nodule smaller than 6 mm in a low-risk patient: no routine "
        "follow-up CT is required.",
        level=1,
        topic="lung",
        date=dt.date(2017, 7, 1),
    ),
    make_passage(
        "fleischner-2005-solid-small",
        "Pulmonary nodule up to 4 mm in a low-risk patient: no follow-up needed; 4 to 6 mm: "
        "follow-up CT at 12 months.",
        level=2,
        status=Status.SUPERSEDED,
        topic="lung",
        date=dt.date(2005, 11, 1),
    ),
    make_passage(
        "acr-thyroid-tirads5",
        "Thyroid nodule classified TI-RADS 5 measuring 1 cm or more: fine-needle aspiration "
        "is recommended.",
        level=2,
        topic="thyroid",
        date=dt.date(2017, 5, 1),
    ),
    make_passage(
        "acr-adrenal-washout",
        "Adrenal incidentaloma with attenuation of 10 HU or less on unenhanced CT is a "
        "lipid-rich adenoma and needs no further imaging.",
        level=2,
        topic="adrenal",
        date=dt.date(2017, 3, 1),
    ),
    make_passage(
        "acr-renal-bosniak",
        "Bosniak I and II renal cysts are benign and do not require follow-up imaging.",
        level=3,
        topic="kidney",
        date=dt.date(2019, 8, 1),
    ),
    make_passage(
        "expert-liver-hemangioma",
        "A typical hepatic hemangioma seen on MRI in an adult without liver disease needs "
        "no follow-up.",
        level=4,
        topic="liver",
        date=dt.date(2015, 1, 1),
    ),
]


@pytest.fixture(scope="module")
def embedder():
    return load_embedder()


def test_minilm_embedder_contract(embedder) -> None:
    assert embedder.name == "all-minilm-l6-v2"
    assert embedder.dimension == 384
    assert len(embedder.content_hash) == 64
    assert load_embedder("all-MiniLM-L6-v2").content_hash == embedder.content_hash
    vectors = embedder.encode(["adrenal adenoma", "lipid-rich adrenal lesion", "thyroid FNA"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_semantic_retrieval_filters_rerank_and_round_trip(embedder, tmp_path: Path) -> None:
    corpus = make_corpus(PASSAGES, name="mini-guidelines")
    store = EvidenceStore.build(corpus, embedder, "flat", cache_dir=tmp_path / "cache")
    assert store.build_stats is not None and store.build_stats.embedded == len(PASSAGES)

    queries = {
        "What should be done about a 9 mm TI-RADS 5 thyroid nodule of 1.2 cm?": (
            "acr-thyroid-tirads5"
        ),
        "Incidental adrenal mass of 5 Hounsfield units on non-contrast CT": "acr-adrenal-washout",
        "Simple kidney cyst found on CT, does it need follow up?": "acr-renal-bosniak",
    }
    results = store.search(list(queries), k=3)
    assert [r[0].passage.id for r in results] == list(queries.values())

    lung = "4 mm solid lung nodule in a non-smoker: is follow-up CT needed?"
    everything = store.search(lung, k=2, include_superseded=True)
    assert {h.passage.id for h in everything} == {
        "fleischner-2017-solid-small",
        "fleischner-2005-solid-small",
    }
    current = store.search(lung, k=2)  # the default: current passages only
    assert current[0].passage.id == "fleischner-2017-solid-small"
    assert all(h.passage.status is Status.CURRENT for h in current)
    reranked = store.search(lung, k=2, rerank=True, include_superseded=True)
    assert reranked[0].passage.id == "fleischner-2017-solid-small"  # level 1 and newer

    directory = store.save(tmp_path / "store")
    # loaded without an embedder: the recorded one is loaded by name for text queries
    loaded = EvidenceStore.load(directory, corpus)
    again = loaded.search(list(queries), k=3)
    assert [[(h.passage.id, h.score) for h in r] for r in again] == [
        [(h.passage.id, h.score) for h in r] for r in results
    ]
    assert loaded.embedder is not None
    assert loaded.embedder.content_hash == embedder.content_hash

    nodes = EvidenceRetriever(loaded, k=1).retrieve(lung)
    assert nodes[0].node.metadata["grade_level"] in (1, 2)


def test_bundled_corpus_end_to_end(embedder, tmp_path: Path, monkeypatch) -> None:
    from safescale.corpora import load_corpus

    corpus = load_corpus("radiology-guidelines")
    monkeypatch.setenv("SAFESCALE_CACHE", str(tmp_path / "cache"))

    store = open_store(corpus, embedder, "hnsw")
    sample = corpus.passages[:: max(1, len(corpus.passages) // 20)]
    results = store.search(
        [p.text for p in sample], k=3, include_superseded=True, include_withdrawn=True
    )
    # every passage is found by its own text among the top 3 (near-duplicates allowed)
    assert all(p.id in {h.passage.id for h in r} for p, r in zip(sample, results, strict=True))
    assert open_store(corpus, embedder, "hnsw").build_stats is None  # cached now

    from safescale.cli import app

    runner = CliRunner()
    built = runner.invoke(app, ["index", "build", "radiology-guidelines", "--index-type", "flat"])
    assert built.exit_code == 0, built.output
    assert f"{len(corpus.passages)} passages" in built.output
    query = sample[0].text[:80]
    found = runner.invoke(
        app, ["index", "search", "radiology-guidelines", query, "-k", "3", "--min-grade", "4"]
    )
    assert found.exit_code == 0, found.output
    assert "current" in found.output
    assert "superseded" not in found.output.split("statuses:")[0]
    old = next(p for p in corpus.passages if p.status is Status.SUPERSEDED)
    hidden = runner.invoke(app, ["index", "search", "radiology-guidelines", old.text, "-k", "3"])
    assert hidden.exit_code == 0
    assert "superseded" not in hidden.output.split("statuses:")[0]
    shown = runner.invoke(
        app,
        ["index", "search", "radiology-guidelines", old.text, "-k", "3", "--include-superseded"],
    )
    assert shown.exit_code == 0
    assert "superseded" in shown.output.split("statuses:")[0]  # a row's status column
    retrieved = EvidenceRetriever(store, k=3, include_superseded=True).retrieve(old.text)
    assert old.id in {n.node.node_id for n in retrieved}
    assert old.id not in {n.node.node_id for n in EvidenceRetriever(store, k=3).retrieve(old.text)}
