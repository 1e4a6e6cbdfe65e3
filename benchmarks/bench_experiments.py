"""Experiment runner costs, measured in one run.

1. The `demo` config run from scratch in a subprocess (wall time and peak RSS of the
   process tree; goal <= 10 min and < 4 GB), as `make demo` runs it.
2. The same command again on the finished run directory (goal: <= 5% of the first).

Run: ``.venv/bin/python benchmarks/bench_experiments.py [--config demo]
[--json benchmarks/results/bench_experiments.json]``
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from render_results import figure, write_result


def _run(config: str, out: Path) -> tuple[float, float]:
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(
        [sys.executable, "-m", "safescale.cli", "run", config, "--out", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    peak_kb = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)
    return time.perf_counter() - start, peak_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="demo")
    parser.add_argument("--json", type=Path, default=None, help="also write a result file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        first, peak = _run(args.config, out)
        again, _ = _run(args.config, out)
    print(
        f"config {args.config}: first run {first:.1f} s (goal <= 600 s), "
        f"peak RSS {peak:.0f} MB (goal < 4096 MB)"
    )
    print(
        f"re-run of the finished run: {again:.1f} s = {again / first:.1%} of the first (goal <= 5%)"
    )
    if args.json is not None:
        minutes, seconds = divmod(round(first), 60)
        rows = [
            figure(
                f"`safescale run {args.config}` wall time / peak memory",
                f"{minutes} min {seconds} s / {peak / 1024:.1f} GB",
                "<= 10 min, < 4 GB",
                first_s=first,
                peak_rss_mb=peak,
            ),
            figure(
                "re-run of a finished run vs first run",
                f"{again:.1f} s (about {again / first:.0%})",
                "<= 5 %",
                again_s=again,
            ),
        ]
        write_result(args.json, "bench_experiments", "A whole study: wall time, memory", rows)


if __name__ == "__main__":
    main()
