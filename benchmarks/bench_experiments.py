"""Experiment runner costs, measured in one run.

1. The `demo` config run from scratch in a subprocess (wall time and peak RSS of the
   process tree; goal <= 10 min and < 4 GB), as `make demo` runs it.
2. The same command again on the finished run directory (goal: <= 5% of the first).

Run: ``.venv/bin/python benchmarks/bench_experiments.py [--config demo]``
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


if __name__ == "__main__":
    main()
