"""The Ray backend on the real bundled SmolLM2, on a local 2-CPU Ray instance bound to
loopback: the same metrics as in-process (through ``safescale run --backend ray``),
a finished run re-run without Ray, and a worker killed mid-sweep."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safescale.experiments.config import parse_config
from safescale.rundir import load_responses

pytestmark = pytest.mark.slow

# Read by Ray when it is imported: a single-machine instance binds every server to
# loopback instead of the machine's address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray")

SWEEP = """
name: ray-sweep
models: [smollm2-135m-instruct]
corpora: [radiology-guidelines]
conditions: [closed_book, clean_evidence, conflict_evidence]
answer: {formulation: cloze_pmi}
bootstrap: {replicates: 200}
limit: 4
shard_size: 2
"""
ITEMS = 3 * 4
SHARDS = 3 * 2


def _config(out: Path):
    return parse_config(SWEEP).with_overrides(output_dir=out)


def _strip_timing(metrics: dict) -> list[dict]:
    """The cells without timing (wall time differs between any two runs) and without the
    mean confidence, compared within a tolerance by :func:`_confidences` (a Ray worker
    runs torch on one thread, the in-process run on every core: the summation order of
    the same forward differs in the last bits; the chosen answers must not)."""
    cells = []
    for cell in metrics["cells"]:
        cell = {k: v for k, v in cell.items() if k != "mean_confidence"}
        m = {
            k: v
            for k, v in cell["metrics"].items()
            if k not in ("latency_ms", "ms_per_generated_token")
        }
        counts = {k: v for k, v in cell["counts"].items() if k != "wall_ms"}
        cells.append({**cell, "metrics": m, "counts": counts})
    return cells


def _confidences(metrics: dict) -> list[float | None]:
    return [cell.get("mean_confidence") for cell in metrics["cells"]]


def _workers() -> list[str]:
    return sorted(n for n in ray.util.list_named_actors() if n.startswith("safescale-"))


def _keys(run_dir: Path) -> list[tuple]:
    responses, _ = load_responses(run_dir)
    return sorted((r.model, r.condition, r.item, r.samples_budget) for r in responses)


@pytest.fixture(scope="module")
def local_ray():
    """A private Ray instance: 2 CPUs, loopback only, no dashboard, no usage stats."""
    from ray._private import ray_constants

    if ray_constants.ENABLE_RAY_CLUSTER:
        pytest.skip("ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 could be set")
    if ray.is_initialized():
        pytest.skip("another Ray connection is open in this process")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024 * 1024,
        log_to_driver=False,
    )
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def in_process(tmp_path_factory, bundled_lm):
    """The reference: the same sweep in this process."""
    from safescale.experiments import compute_metrics, run_experiment

    out = tmp_path_factory.mktemp("ray") / "in-process"
    run_experiment(_config(out), progress=False)
    return out, compute_metrics(out)


def test_importing_the_runner_does_not_import_ray():
    code = (
        "import sys, safescale.experiments.runner, safescale.cli.run; "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_cli_address_needs_the_ray_backend(tmp_path):
    from typer.testing import CliRunner

    from safescale.cli import app

    config_path = tmp_path / "sweep.yaml"
    config_path.write_text(SWEEP + f"output_dir: {tmp_path / 'run'}\n")
    result = CliRunner().invoke(app, ["run", str(config_path), "--address", "head:6379"])
    assert result.exit_code == 2  # a user error: one line, exit code 2
    assert "--address needs --backend ray" in result.output
    assert not (tmp_path / "run").exists()


def test_cli_ray_backend_gives_the_same_metrics(tmp_path, local_ray, in_process):
    from typer.testing import CliRunner

    from safescale.cli import app
    from safescale.experiments import compute_metrics

    reference_dir, reference = in_process
    out = tmp_path / "ray"
    config_path = tmp_path / "sweep.yaml"
    config_path.write_text(SWEEP + f"output_dir: {out}\n")
    result = CliRunner().invoke(
        app, ["run", str(config_path), "--backend", "ray", "--no-detect", "--no-report"]
    )
    assert result.exit_code == 0, result.output
    assert f"{SHARDS} shards on 2 workers" in result.output
    assert _keys(out) == _keys(reference_dir)
    assert _strip_timing(compute_metrics(out)) == _strip_timing(reference)
    assert _confidences(compute_metrics(out)) == pytest.approx(_confidences(reference), abs=1e-5)
    for name in ("steps.jsonl", "attribution.jsonl", "manifest.json", "config.yaml"):
        assert (out / name).exists() == (reference_dir / name).exists(), name
    assert (out / "lm_cache.sqlite").exists()  # the rows the workers computed, shipped back
    assert not (out / "checkpoints.sqlite").exists()  # graph checkpoints stay on the workers
    deadline = time.monotonic() + 30
    while _workers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _workers(), "every worker is retired at the end"

    from safescale.experiments.ray_backend import run_experiment_ray

    again = run_experiment_ray(_config(out), progress=False)
    assert again.answered == 0 and again.skipped == ITEMS and again.workers_started == 0


def test_a_killed_worker_loses_only_its_shard(tmp_path, local_ray, in_process):
    from safescale.experiments import compute_metrics
    from safescale.experiments.ray_backend import run_experiment_ray

    _, reference = in_process
    killed: list[str] = []

    def kill_one_worker(answered: int) -> None:
        # Called after each commit; the driver hands out the next shard before
        # committing, so at this point every worker is busy with a shard.
        if killed:
            return
        name = _workers()[0]
        ray.kill(ray.get_actor(name), no_restart=True)
        killed.append(name)

    out = tmp_path / "killed"
    summary = run_experiment_ray(_config(out), progress=False, on_item=kill_one_worker)
    assert killed
    assert summary.workers_lost == 1
    assert summary.shards_retried == 1
    assert summary.workers_started == 3
    assert summary.answered == ITEMS and summary.shards == SHARDS
    responses, _ = load_responses(out)
    assert len(responses) == ITEMS, "no item is committed twice"
    assert _strip_timing(compute_metrics(out)) == _strip_timing(reference)
    assert _confidences(compute_metrics(out)) == pytest.approx(_confidences(reference), abs=1e-5)
