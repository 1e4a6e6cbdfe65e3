"""The same small sweep in-process and on a local Ray instance with 2 workers.

Prints both wall times, their ratio, Ray's start-up time (not part of the sweep's wall
time), and the per-shard scheduling overhead of the Ray run, measured two ways:

* ``(wall - compute) / shards``: the Ray sweep's wall time minus the time the actors
  spent answering (summed over shards), per shard;
* ``(workers * wall - compute) / shards``: worker-seconds not spent answering (actor
  start and model load, queueing, transfer, commits), per shard; with parallel
  workers this is the figure that says what the scheduling costs.

Run: ``.venv/bin/python benchmarks/bench_ray.py [--limit 4] [--shard-size 2] [--workers 2]
[--json benchmarks/results/bench_ray.json]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from render_results import figure, write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local instance on loopback

SWEEP = """
name: bench-ray
models: [smollm2-135m-instruct]
corpora: [radiology-guidelines]
conditions: [closed_book, clean_evidence, conflict_evidence]
bootstrap: {{replicates: 200}}
limit: {limit}
shard_size: {shard_size}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=4, help="items of the corpus")
    parser.add_argument("--shard-size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (= local CPUs)")
    parser.add_argument("--json", type=Path, default=None, help="also write a result file")
    args = parser.parse_args()

    import ray

    from safescale.experiments.config import parse_config
    from safescale.experiments.ray_backend import run_experiment_ray
    from safescale.experiments.runner import run_experiment

    config = parse_config(SWEEP.format(limit=args.limit, shard_size=args.shard_size))
    with tempfile.TemporaryDirectory() as tmp:
        local_config = config.with_overrides(output_dir=Path(tmp) / "local")
        local = run_experiment(local_config, progress=False)

        start = time.perf_counter()
        ray.init(
            num_cpus=args.workers,
            include_dashboard=False,
            object_store_memory=200 * 1024 * 1024,
            log_to_driver=False,
        )
        ray_start = time.perf_counter() - start
        try:
            on_ray = run_experiment_ray(
                config.with_overrides(output_dir=Path(tmp) / "ray"),
                num_workers=args.workers,
                progress=False,
            )
        finally:
            ray.shutdown()

    shards = on_ray.shards
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at the end")
    print(
        f"sweep: {local.answered} items in {shards} shards of <= {args.shard_size} "
        f"(3 conditions x {args.limit} items, smollm2-135m-instruct)"
    )
    print(f"in-process:          {local.seconds:7.1f} s")
    print(
        f"ray, {args.workers} workers:      {on_ray.seconds:7.1f} s "
        f"(+ {ray_start:.1f} s to start the local Ray instance)"
    )
    print(f"ratio ray / in-process: {on_ray.seconds / local.seconds:.2f}")
    print(
        f"in-actor compute:    {on_ray.compute_seconds:7.1f} s summed over shards "
        f"({on_ray.workers_started} workers started)"
    )
    print(
        "scheduling overhead per shard: "
        f"(wall - compute) / shards = {(on_ray.seconds - on_ray.compute_seconds) / shards:.2f} s; "
        f"(workers x wall - compute) / shards = "
        f"{(args.workers * on_ray.seconds - on_ray.compute_seconds) / shards:.2f} s"
    )
    if args.json is not None:
        per_shard = (on_ray.seconds - on_ray.compute_seconds) / shards
        rows = [
            figure(
                f"same sweep on local Ray ({args.workers} workers) vs in-process "
                f"({local.answered} items, {shards} shards)",
                f"{on_ray.seconds / local.seconds:.2f}x wall time; {per_shard:.1f} s "
                "scheduling overhead per shard",
                "",
                ray_s=on_ray.seconds,
                local_s=local.seconds,
                ray_start_s=ray_start,
                compute_s=on_ray.compute_seconds,
            )
        ]
        write_result(args.json, "bench_ray", "The same sweep on Ray", rows)


if __name__ == "__main__":
    main()
