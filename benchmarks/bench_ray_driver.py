"""The Ray driver's own cost: how fast it commits what the workers send, and how many
bytes a shard result carries per item, against the workers' per-item compute measured in
the same run.

Runs the bundled ``demo`` study (both corpora, six conditions, detection and reliance on)
with ``--limit`` items per corpus on a local Ray instance with ``--workers`` workers (the
driver is the only writer of the run directory; workers ship everything back). Prints:

* the driver's commit rate, records/s (responses with their steps and attribution,
  reliance lines, detection inputs; LM-cache rows ride along), with a 95 % bootstrap
  interval over the committed shards;
* bytes a shard result carries per answered item (UTF-8 bytes of its records, rows and
  inputs), and of
  that the LM-cache rows;
* the workers' compute seconds per answered item (answering plus the later stages), and
  the ratio ``compute per item / driver seconds per item``: how many workers one driver
  keeps busy before committing becomes the bottleneck.

Run alone: ``.venv/bin/python benchmarks/bench_ray_driver.py [--limit 2] [--workers 1]
[--json benchmarks/results/bench_ray_driver.json]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from render_results import figure, write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local instance on loopback


def _rate_interval(commits: list[tuple[int, float, int]], seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of records/s over shards (ratio of sums per replicate)."""
    records = np.array([c[0] for c in commits], dtype=float)
    seconds = np.array([c[1] for c in commits], dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(commits), size=(2000, len(commits)))
    rates = records[picks].sum(axis=1) / np.maximum(seconds[picks].sum(axis=1), 1e-12)
    return float(np.percentile(rates, 2.5)), float(np.percentile(rates, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=2, help="items per corpus")
    parser.add_argument("--workers", type=int, default=1, help="Ray workers")
    parser.add_argument("--json", type=Path, default=None, help="also write a result file")
    args = parser.parse_args()

    from safescale.experiments.config import load_config
    from safescale.experiments.ray_backend import run_experiment_ray

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config("demo").with_overrides(
            output_dir=Path(tmp) / "demo",
            limit=args.limit,
            reliance={"enabled": True},
            shard_size=4,
        )
        summary = run_experiment_ray(config, num_workers=args.workers, progress=False)
        lm_bytes = _lm_row_bytes(Path(tmp) / "demo")

    items = summary.answered
    rate = summary.commit_rate or float("nan")
    low, high = _rate_interval(summary.commits)
    per_item_bytes = summary.bytes_received / items
    compute_per_item = summary.compute_seconds / items
    driver_per_item = summary.commit_seconds / items
    headroom = compute_per_item / driver_per_item
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print(
        f"study: demo, {items} responses ({args.limit} items per corpus), {summary.shards} "
        f"shards ({summary.stage_shards} of later stages), {args.workers} workers"
    )
    print(
        f"driver commit rate: {rate:.0f} records/s (95 % CI {low:.0f}-{high:.0f}, "
        f"n = {len(summary.commits)} shards; {summary.records_committed} records in "
        f"{summary.commit_seconds:.2f} s)"
    )
    print(
        f"shard payload: {per_item_bytes / 1e3:.1f} kB per answered item "
        f"(LM-cache rows {lm_bytes / items / 1e3:.1f} kB of it)"
    )
    print(
        f"workers' compute: {compute_per_item:.2f} s per answered item; driver "
        f"{driver_per_item * 1e3:.1f} ms per answered item; one driver keeps "
        f"{headroom:.0f} such workers busy"
    )
    if args.json is not None:
        rows = [
            figure(
                "driver commit rate (records/s: responses with steps and attribution, "
                "reliance lines, detection inputs)",
                f"{rate:.0f} records/s (95 % CI {low:.0f}-{high:.0f}, n = "
                f"{len(summary.commits)} shards)",
                "",
                rate=rate,
                low=low,
                high=high,
                records=summary.records_committed,
                seconds=summary.commit_seconds,
            ),
            figure(
                "bytes a shard result carries per answered item",
                f"{per_item_bytes / 1e3:.1f} kB (LM-cache rows {lm_bytes / items / 1e3:.1f} kB)",
                "",
                bytes_per_item=per_item_bytes,
                lm_row_bytes_per_item=lm_bytes / items,
            ),
            figure(
                "workers' compute per item vs the driver's commit time per item",
                f"{compute_per_item:.2f} s vs {driver_per_item * 1e3:.1f} ms: one driver "
                f"keeps {headroom:.0f} such workers busy",
                "",
                compute_per_item_s=compute_per_item,
                driver_per_item_s=driver_per_item,
                headroom=headroom,
            ),
        ]
        write_result(args.json, "bench_ray_driver", "The Ray driver's commit rate", rows)


def _lm_row_bytes(run_dir: Path) -> int:
    import sqlite3

    db = sqlite3.connect(run_dir / "lm_cache.sqlite")
    try:
        query = "SELECT COALESCE(SUM(LENGTH(key) + LENGTH(value)), 0) FROM calls"
        return int(db.execute(query).fetchone()[0])
    finally:
        db.close()


if __name__ == "__main__":
    main()
