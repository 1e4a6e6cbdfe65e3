"""On-disk index benchmark (``index_type: ivfpq_disk``): memory, build time, latency and
recall at MedRAG scale.

Run alone on an idle machine (the numbers are wrong under load)::

    python benchmarks/bench_index_ondisk.py                     # 1M and 5M, ~1-2 h, ~9 GB disk
    python benchmarks/bench_index_ondisk.py --sizes 50000       # a check that it runs (~1 min)
    python benchmarks/bench_index_ondisk.py --json benchmarks/results/bench_index_ondisk.json

For each size ``n`` it prints, each phase in a fresh process so that its peak resident
memory (``ru_maxrss``) is its own:

1. **build**: synthetic vectors of the embedder's dimension (d=384) are generated chunk
   by chunk and fed to :func:`safescale.retrieval.ondisk.build_ondisk_index` (no full
   matrix in memory at any point): build time, peak RSS, bytes on disk;
2. **exact ground truth** for a sample of queries, computed chunk-wise over the vectors
   file (the top-10 by inner product, merged across chunks);
3. **search**: the index opened from disk, one query per call, at the default
   ``nprobe`` and at half and twice it: p50 / p99 latency, recall@10 against the exact
   top-10, peak RSS (opening + searching).

Then a projection to MedRAG's PubMed (23.9M snippets) from the largest size: disk and
build time linear in ``n``; search latency linear in the codes scanned (``n * nprobe /
nlist``, a fixed 1/16 with the defaults; an upper bound, fixed costs do not grow); RSS as
measured plus the growth of the training sample (build) and of the coarse quantizer
(search) at the defaults for 23.9M.

Target (issue 27): peak RSS < 4 GB at 5M passages with recall@10 >= 0.9.

Synthetic vectors: the distribution of ``benchmarks/bench_retrieval.py`` (``n / 200``
cluster directions, a shared 48-dimensional power-law component, isotropic noise,
unit length); queries are fresh draws from the same distribution.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from render_results import figure, write_result

DIMENSION = 384
K = 10
PUBMED = 23_900_000
CHUNK = 131_072
RERANKS = (10, 25, 50, 100)  # exact re-scoring of rerank x k PQ candidates


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def phase_build(n: int, workdir: Path, n_queries: int, seed: int) -> dict:
    from bench_retrieval import SyntheticEmbeddings

    from safescale.retrieval.ondisk import build_ondisk_index

    generator = SyntheticEmbeddings(n, seed)
    chunks = (generator.sample(min(CHUNK, n - start)) for start in range(0, n, CHUNK))
    started = time.perf_counter()
    last = {"phase": None}

    def progress(phase: str, done: int, total: int) -> None:
        if phase != last["phase"]:
            last["phase"] = phase
            print(f"  [{time.perf_counter() - started:7.1f}s] {phase}", file=sys.stderr)

    index = build_ondisk_index(workdir / "index", chunks, n, DIMENSION, progress=progress)
    seconds = time.perf_counter() - started
    np.save(workdir / "queries.npy", generator.sample(n_queries))
    disk = sum(p.stat().st_size for p in (workdir / "index").iterdir())
    return {
        "build_s": seconds,
        "build_rss_mb": _peak_rss_mb(),
        "disk_bytes": disk,
        "nlist": int(index.index.nlist),
    }


def phase_truth(workdir: Path) -> dict:
    """Exact top-K of the queries, chunk by chunk over the vectors file (pread)."""
    import faiss

    queries = np.load(workdir / "queries.npy")
    path = workdir / "index" / "vectors.f32"
    rows = path.stat().st_size // (4 * DIMENSION)
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.full((len(queries), 0), -1, dtype=np.int64)
    started = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        for start in range(0, rows, CHUNK):
            count = min(CHUNK, rows - start)
            data = os.pread(fd, count * 4 * DIMENSION, start * 4 * DIMENSION)
            block = np.frombuffer(data, dtype=np.float32).reshape(count, DIMENSION)
            scores, ids = faiss.knn(queries, block, K, metric=faiss.METRIC_INNER_PRODUCT)
            best_scores = np.hstack([best_scores, scores])
            best_ids = np.hstack([best_ids, ids + start])
            keep = np.argsort(-best_scores, axis=1)[:, :K]
            best_scores = np.take_along_axis(best_scores, keep, axis=1)
            best_ids = np.take_along_axis(best_ids, keep, axis=1)
    finally:
        os.close(fd)
    np.save(workdir / "truth.npy", best_ids)
    return {"truth_s": time.perf_counter() - started, "truth_rss_mb": _peak_rss_mb()}


def phase_search(workdir: Path, nprobe: int, rerank: int) -> dict:
    import faiss

    from safescale.retrieval.ondisk import OnDiskIndex

    faiss.omp_set_num_threads(1)  # one query per call, as the conditions search
    index = OnDiskIndex.open(workdir / "index")
    queries = np.load(workdir / "queries.npy")
    truth = np.load(workdir / "truth.npy")
    index.search(queries[:5], K, nprobe, rerank)  # warm the lists' pages a little
    times, found = [], []
    for query in queries:
        started = time.perf_counter()
        _, ids = index.search(query[None, :], K, nprobe, rerank)
        times.append((time.perf_counter() - started) * 1000.0)
        found.append(ids[0])
    per_query = np.array([len(set(a) & set(b)) / K for a, b in zip(found, truth, strict=True)])
    # 95 % percentile bootstrap over the queries (seeded: the same queries, the same CI)
    draws = np.random.default_rng(0).integers(0, len(per_query), (2000, len(per_query)))
    lo, hi = np.percentile(per_query[draws].mean(axis=1), [2.5, 97.5])
    return {
        "nprobe": nprobe,
        "rerank": rerank,
        "p50_ms": float(np.percentile(times, 50)),
        "p99_ms": float(np.percentile(times, 99)),
        "recall": float(per_query.mean()),
        "recall_lo": float(lo),
        "recall_hi": float(hi),
        "n_queries": len(per_query),
        "search_rss_mb": _peak_rss_mb(),
    }


def _child(*args: str) -> dict:
    """Run one phase in a fresh interpreter; its last stdout line is the JSON result."""
    command = [sys.executable, __file__, "--phase", *args]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    sys.stderr.write(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench(n: int, n_queries: int, root: Path, seed: int) -> dict:
    from safescale.retrieval.ondisk import resolve_ondisk_params

    workdir = root / f"n{n}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    print(f"n = {n:,}: build", file=sys.stderr)
    row = {"n": n, **_child("build", str(n), str(workdir), str(n_queries), str(seed))}
    row.update(_child("truth", str(workdir)))
    params = resolve_ondisk_params(n, DIMENSION, {})
    nprobe = params["nprobe"]
    nprobes = sorted({max(1, nprobe // 2), nprobe, min(params["nlist"], nprobe * 2)})
    # nprobe around its default at the default rerank, then rerank around its default
    settings = [(nprobe, params["rerank"]) for nprobe in nprobes] + [
        (params["nprobe"], rerank) for rerank in RERANKS if rerank != params["rerank"]
    ]
    row["searches"] = [
        _child("search", str(workdir), str(nprobe), str(rerank)) for nprobe, rerank in settings
    ]
    row["default_nprobe"] = params["nprobe"]
    row["default_rerank"] = params["rerank"]
    shutil.rmtree(workdir, ignore_errors=True)
    return row


def _print(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    table = Table(title=f"ivfpq_disk, d = {DIMENSION}, recall@{K} vs exact search")
    for column in (
        "n",
        "nlist",
        "build (s)",
        "build RSS (MB)",
        "disk (GB)",
        "nprobe",
        "rerank",
        "p50 (ms)",
        "p99 (ms)",
        f"recall@{K} [95 % CI]",
        "search RSS (MB)",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        for search in row["searches"]:
            mark = "*" if _is_default(row, search) else ""
            table.add_row(
                f"{row['n']:,}",
                str(row["nlist"]),
                f"{row['build_s']:.0f}",
                f"{row['build_rss_mb']:.0f}",
                f"{row['disk_bytes'] / 1e9:.2f}",
                f"{search['nprobe']}{mark}",
                str(search["rerank"]),
                f"{search['p50_ms']:.2f}",
                f"{search['p99_ms']:.2f}",
                f"{search['recall']:.3f} [{search['recall_lo']:.3f}, {search['recall_hi']:.3f}]",
                f"{search['search_rss_mb']:.0f}",
            )
    console.print(table)
    console.print(
        "* the defaults (nprobe nlist / 16, exact re-scoring of rerank x k PQ candidates)"
    )
    largest = max(rows, key=lambda r: r["n"])
    default = next(s for s in largest["searches"] if _is_default(largest, s))
    peak = max(largest["build_rss_mb"], max(s["search_rss_mb"] for s in largest["searches"]))
    if largest["n"] >= 5_000_000:
        met = peak < 4096 and default["recall_lo"] >= 0.9
        console.print(
            f"target at n = {largest['n']:,} (peak RSS < 4 GB, recall@{K} >= 0.9 at the "
            f"lower end of its 95 % CI): peak RSS {peak:.0f} MB, recall "
            f"{default['recall']:.3f} [{default['recall_lo']:.3f}, {default['recall_hi']:.3f}] "
            f"over {default['n_queries']} queries -> {'met' if met else 'NOT met'}"
        )
    from safescale.retrieval.ondisk import resolve_ondisk_params

    here = resolve_ondisk_params(largest["n"], DIMENSION, {})
    there = resolve_ondisk_params(PUBMED, DIMENSION, {})
    scale = PUBMED / largest["n"]
    row_bytes = DIMENSION * 4
    train_growth = (there["train_size"] - here["train_size"]) * row_bytes / 2**20
    centroid_growth = (there["nlist"] - here["nlist"]) * row_bytes / 2**20
    console.print(
        f"projection to PubMed ({PUBMED:,} snippets) from n = {largest['n']:,} "
        f"(nlist {there['nlist']}, nprobe {there['nprobe']}, train_size "
        f"{there['train_size']:,}): disk {largest['disk_bytes'] * scale / 1e9:.0f} GB; build "
        f"~{largest['build_s'] * scale / 3600:.1f} h (linear in n); p50 ~"
        f"{default['p50_ms'] * scale:.1f} ms (upper bound: linear in the codes scanned, "
        f"n / 16); build RSS ~{largest['build_rss_mb'] + train_growth:.0f} MB (+ the larger "
        f"training sample); search RSS ~{default['search_rss_mb'] + centroid_growth:.0f} MB "
        "(+ the larger quantizer) plus the pages of the lists probed"
    )


def _is_default(row: dict, search: dict) -> bool:
    return (search["nprobe"], search["rerank"]) == (row["default_nprobe"], row["default_rerank"])


def _figures(rows: list[dict]) -> list[dict]:
    """One result-file figure per size and ``nprobe``, as :func:`_print` tabulates them."""
    out = []
    for row in rows:
        for search in row["searches"]:
            default = " (default)" if _is_default(row, search) else ""
            out.append(
                figure(
                    f"{row['n']:,} vectors, nlist {row['nlist']}, nprobe {search['nprobe']}, "
                    f"rerank {search['rerank']}{default}",
                    f"recall@{K} {search['recall']:.3f} [{search['recall_lo']:.3f}, "
                    f"{search['recall_hi']:.3f}] (n = {search['n_queries']} queries), "
                    f"p50 {search['p50_ms']:.2f} ms, "
                    f"build RSS {row['build_rss_mb']:.0f} MB, search RSS "
                    f"{search['search_rss_mb']:.0f} MB",
                    "at 5M: peak RSS < 4 GB, recall@10 >= 0.9",
                    n=row["n"],
                    nlist=row["nlist"],
                    nprobe=search["nprobe"],
                    rerank=search["rerank"],
                    recall=search["recall"],
                    recall_lo=search["recall_lo"],
                    recall_hi=search["recall_hi"],
                    n_queries=search["n_queries"],
                    p50_ms=search["p50_ms"],
                    p99_ms=search["p99_ms"],
                    build_s=row["build_s"],
                    build_rss_mb=row["build_rss_mb"],
                    search_rss_mb=search["search_rss_mb"],
                    disk_bytes=row["disk_bytes"],
                )
            )
    return out


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--phase":
        phase, rest = sys.argv[2], sys.argv[3:]
        if phase == "build":
            out = phase_build(int(rest[0]), Path(rest[1]), int(rest[2]), int(rest[3]))
        elif phase == "truth":
            out = phase_truth(Path(rest[0]))
        else:
            out = phase_search(Path(rest[0]), int(rest[1]), int(rest[2]))
        print(json.dumps(out))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,5000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--workdir", type=Path, default=None, help="scratch (default: tmp)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write a result file")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-ondisk-"))
    started = time.perf_counter()
    rows = [bench(int(n), args.queries, root, args.seed) for n in args.sizes.split(",") if n]
    _print(rows)
    if args.json is not None:
        write_result(
            args.json,
            "bench_index_ondisk",
            "On-disk index (`ivfpq_disk`): memory, latency, recall",
            _figures(rows),
        )
    print(f"total {time.perf_counter() - started:.0f}s", file=sys.stderr)
    if args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
