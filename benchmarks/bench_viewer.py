"""Run viewer: page size and time to interactive in headless Chromium.

1. A run of N items (default 600) x 3 conditions (the shape of ``safescale run ecrt``:
   clean_evidence, conflict_evidence, standard_rag), made by the real runner on the tiny
   random model over a generated retina-rules corpus. Its static page
   (``safescale view``): file size (goal < 25 MB) and the time from navigation start to
   a rendered overview and a rendered filtered item list, as the page measures it
   (``performance.now()`` when rendering finished; goal < 2 s).
2. A run over the full 12,522-item retina-rules corpus (one condition by default, to
   keep the run short), served with ``--serve``: page size, time to a rendered item
   list, and the latency of item-detail requests (``/api/item/<id>``).

The runs are kept under ``--work`` and resumed, so a second invocation only measures.

Run: ``.venv/bin/python benchmarks/bench_viewer.py [--items 600] [--large 12522]
[--json benchmarks/results/bench_viewer.json]``
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from render_results import figure, write_result

ECRT_CONDITIONS = ["clean_evidence", "conflict_evidence", "standard_rag"]


def _corpus(work: Path, n: int) -> Path:
    out = work / f"retina-{n}"
    if not (out / "items.jsonl").is_file() and not out.is_dir():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "safescale.cli",
                "corpus",
                "generate",
                "retina-rules",
                str(out),
                "--n",
                str(n),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return out


def _run(work: Path, name: str, corpus: Path, conditions: list[str]) -> Path:
    from safescale.experiments import run_experiment, write_report
    from safescale.experiments.config import parse_config
    from safescale.models.tiny import build_tiny_model

    model_dir = work / "tiny-model"
    if not model_dir.is_dir():
        lm = build_tiny_model(seed=0)
        lm.model.save_pretrained(str(model_dir))
        lm.tokenizer.save_pretrained(str(model_dir))
    text = f"""
name: {name}
models: [{{name: tiny, spec: {model_dir}}}]
corpora: [{corpus}]
conditions: [{", ".join(conditions)}]
retrieval: {{k: 4}}
context_budget: 1024
bootstrap: {{replicates: 200}}
"""
    out = work / name
    config = parse_config(text).with_overrides(output_dir=out)
    started = time.perf_counter()
    summary = run_experiment(config, progress=True)
    if summary.answered:
        print(f"  ran {summary.answered} responses in {time.perf_counter() - started:.0f} s")
    if not (out / "metrics.json").is_file() or summary.answered:
        write_report(out, plots=True)
    return out


def _chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        sys.exit("no chromium: apt-get install chromium")
    return path


def _ready_ms(url: str) -> tuple[float, float]:
    """(ms from navigation start to rendered, as the page measures it; process wall s)."""
    with tempfile.TemporaryDirectory() as profile:
        started = time.perf_counter()
        result = subprocess.run(
            [
                _chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=30000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        wall = time.perf_counter() - started
    match = re.search(r'data-ready-ms="([0-9.]+)"', result.stdout)
    if match is None:
        raise RuntimeError(f"page did not render: {result.stderr[-500:]}")
    return float(match.group(1)), wall


def _open_times(url: str, repeats: int) -> tuple[float, float]:
    runs = [_ready_ms(url) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-viewer")
    parser.add_argument("--items", type=int, default=600)
    parser.add_argument("--large", type=int, default=12522)
    parser.add_argument("--large-conditions", default="clean_evidence")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write a result file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args.work.mkdir(parents=True, exist_ok=True)

    from safescale.viewer import ViewServer, load_view_data, write_view

    print(f"1. static page: {args.items} items x {len(ECRT_CONDITIONS)} conditions")
    run = _run(args.work, f"ecrt-{args.items}", _corpus(args.work, args.items), ECRT_CONDITIONS)
    started = time.perf_counter()
    page = write_view(run)
    build_s = time.perf_counter() - started
    size_mb = page.stat().st_size / 1e6
    overview_ms, wall = _open_times(page.as_uri(), args.repeats)
    list_ms, _ = _open_times(page.as_uri() + "#view=items&outcome=unsafe", args.repeats)
    list_ms_static = list_ms
    data = load_view_data(run)
    item = data.index["items"][len(data.index["items"]) // 2]["id"]
    item_ms, _ = _open_times(page.as_uri() + f"#item={item}", args.repeats)
    print(f"  responses: {len(data.index['responses'])}; built in {build_s:.1f} s")
    print(f"  file size: {size_mb:.1f} MB (goal < 25 MB)")
    print(
        f"  rendered overview {overview_ms:.0f} ms, filtered item list {list_ms:.0f} ms, "
        f"item page {item_ms:.0f} ms after navigation start (goal < 2000 ms; "
        f"chromium process incl. start-up {wall:.1f} s)"
    )

    print(f"2. --serve: {args.large} items x {args.large_conditions}")
    conditions = args.large_conditions.split(",")
    large = _run(args.work, f"retina-{args.large}", _corpus(args.work, args.large), conditions)
    started = time.perf_counter()
    view = load_view_data(large)
    server = ViewServer(view).start()
    load_s = time.perf_counter() - started
    try:
        html = urllib.request.urlopen(server.url).read()
        list_ms, wall = _open_times(server.url + "#view=items", args.repeats)
        ids = [i["id"] for i in view.index["items"]]
        picks = ids[:: max(1, len(ids) // 50)][:50]
        latencies = []
        for item_id in picks:
            started = time.perf_counter()
            body = urllib.request.urlopen(server.url + f"api/item/{item_id}").read()
            latencies.append(1000 * (time.perf_counter() - started))
        page_ms, _ = _open_times(server.url + f"#item={picks[len(picks) // 2]}", args.repeats)
    finally:
        server.close()
    print(f"  responses: {len(view.index['responses'])}; read and served in {load_s:.1f} s")
    print(f"  page (details on demand): {len(html) / 1e6:.1f} MB")
    print(
        f"  rendered item list {list_ms:.0f} ms, item page (with its fetch) {page_ms:.0f} ms "
        f"after navigation start (chromium process incl. start-up {wall:.1f} s)"
    )
    print(
        f"  /api/item/<id>: median {statistics.median(latencies):.1f} ms, "
        f"max {max(latencies):.1f} ms over {len(latencies)} items ({len(body)} bytes last)"
    )
    if args.json is not None:
        n_conditions = len(ECRT_CONDITIONS)
        rows = [
            figure(
                f"static page, {args.items} items x {n_conditions} conditions: size",
                f"{size_mb:.1f} MB",
                "< 25 MB",
                size_mb=size_mb,
            ),
            figure(
                "static page: overview / filtered item list / item page rendered",
                f"{overview_ms / 1e3:.2f} s / {list_ms_static / 1e3:.2f} s / {item_ms / 1e3:.2f} s",
                "< 2 s",
                overview_ms=overview_ms,
                list_ms=list_ms_static,
                item_ms=item_ms,
            ),
            figure(
                f"`--serve`, {args.large:,} items: page size / item list rendered",
                f"{len(html) / 1e6:.1f} MB / {list_ms / 1e3:.2f} s",
                "",
                size_mb=len(html) / 1e6,
                list_ms=list_ms,
                item_page_ms=page_ms,
            ),
            figure(
                "`--serve`: an item's details (`api/item/<id>`)",
                f"{statistics.median(latencies):.1f} ms (median; max {max(latencies):.1f} ms)",
                "",
                median_ms=statistics.median(latencies),
                max_ms=max(latencies),
            ),
        ]
        write_result(
            args.json, "bench_viewer", "Run viewer: page size and time to render", rows,
            notes=["Headless Chromium; times from navigation start."],
        )  # fmt: skip


if __name__ == "__main__":
    main()
