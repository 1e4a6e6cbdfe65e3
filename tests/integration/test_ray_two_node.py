"""The bundled ``demo`` study (detection and reliance on) on a real two-node Ray cluster
without a shared filesystem, started the way a user starts one: a head node that offers
no CPUs (``ray start --head --num-cpus 0``) and a worker node (``ray start --address``)
whose view of the run directory's parent is an empty read-only tmpfs, so a worker that
read or wrote anything under the run directory would fail.

Both nodes and the driver run in a network namespace that holds only the loopback
interface (every Ray server, the GCS and the object store are on 127.0.0.x; the head
advertises 127.0.0.2 and the worker 127.0.0.3, token authentication on with one token).
The driver is ``safescale run demo --backend ray --address 127.0.0.2:6379``; mid-study
the worker node's raylet is killed with SIGKILL and a new worker node started, then the
driver is killed with SIGKILL and the same command run again. The records must equal the
in-process run's: no lost and no duplicated record, the same answers and chosen options,
option scores and reliance shifts within 1e-5 (absolute or relative), the same
detection inputs, the same
LM-cache keys.

Needs root (``unshare -n`` / ``unshare -m``); skipped with the reason when the
namespaces cannot be made.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from safescale.rundir import RunDir

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

BIN = Path(sys.executable).parent
HEAD, WORKER, PORT = "127.0.0.2", "127.0.0.3", 6379
ADDRESS = f"{HEAD}:{PORT}"
LIMIT = 1  # items per corpus: 2 corpora x 6 conditions = 12 responses
RESPONSES = 2 * 6 * LIMIT
TOLERANCE = 1e-5  # absolute, and 1e-5 relative: a worker runs torch on one thread, the
# in-process run on two (logits near 35 differ in the last float32 bits)


def _demo_config(run_dir: Path) -> Path:
    """The bundled demo config with reliance on, written next to (not in) the run dir."""
    import yaml

    from safescale.experiments.config import CONFIGS_DIR

    data = yaml.safe_load((CONFIGS_DIR / "demo.yaml").read_text())
    # the demo at one item per corpus, answers read one fixed way (no calibration: that
    # is the first worker's start-up, covered by the local Ray tests), reliance on
    data.update(
        limit=LIMIT,
        output_dir=str(run_dir),
        reliance={"enabled": True},
        answer={"formulation": "cloze_pmi"},
    )
    path = run_dir.parent.parent / "demo-two-node.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _can_make_namespaces() -> str | None:
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "unshare/nsenter not found"
    probe = subprocess.run(
        ["unshare", "-n", "-m", "sh", "-c", "ip link set lo up && mount -t tmpfs tmpfs /mnt"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"cannot create network and mount namespaces: {probe.stderr.strip()[:200]}"
    return None


class LoopbackCluster:
    """A head and a worker node in a loopback-only network namespace."""

    def __init__(self, masked: Path) -> None:
        self.masked = masked
        self.tmp = Path(tempfile.mkdtemp(prefix="ssr-"))  # short: Ray's socket paths
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(16),
            "RAY_USAGE_STATS_ENABLED": "0",
            # a killed node is declared dead after about 3 s instead of 15-30 s
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            # another test module may have set it to 0 (a private instance on 127.0.0.1),
            # which makes `ray start --address` refuse to add a worker node
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.holder = subprocess.Popen(
            ["unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep infinity"],
            start_new_session=True,
        )
        self.processes: list[subprocess.Popen] = [self.holder]
        self.workers = 0
        deadline = time.monotonic() + 10
        while not self._lo_up() and time.monotonic() < deadline:
            time.sleep(0.1)

    def _lo_up(self) -> bool:
        out = subprocess.run(self.netns(["ip", "-o", "link", "show", "lo"]),
                             capture_output=True, text=True)  # fmt: skip
        return "UP" in out.stdout or "UNKNOWN" in out.stdout

    def netns(self, argv: list[str]) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-n", *argv]

    def _start(self, argv: list[str], log: str) -> subprocess.Popen:
        handle = open(self.tmp / log, "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv, env=self.env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(proc)
        return proc

    def start_head(self) -> None:
        self._start(
            self.netns(
                [
                    str(BIN / "ray"),
                    "start",
                    "--head",
                    "--num-cpus",
                    "0",
                    "--node-ip-address",
                    HEAD,
                    "--port",
                    str(PORT),
                    "--temp-dir",
                    str(self.tmp / "head"),
                    "--include-dashboard",
                    "false",
                    "--object-store-memory",
                    str(100 * 1024 * 1024),
                    "--disable-usage-stats",
                    "--block",
                ]
            ),
            "head.log",
        )
        self.wait_cpus(0)

    def start_worker(self) -> subprocess.Popen:
        """A worker node with 1 CPU that sees an empty read-only tmpfs over ``masked``."""
        self.workers += 1
        ray_start = " ".join([
            str(BIN / "ray"), "start", "--address", ADDRESS, "--node-ip-address", WORKER,
            "--num-cpus", "1", "--temp-dir", str(self.tmp / f"worker{self.workers}"),
            "--object-store-memory", str(100 * 1024 * 1024), "--disable-usage-stats", "--block",
        ])  # fmt: skip
        script = f"mount -t tmpfs -o ro tmpfs {self.masked} && exec {ray_start}"
        proc = self._start(
            self.netns(["unshare", "-m", "sh", "-c", script]), f"worker{self.workers}.log"
        )
        self.wait_cpus(1)
        return proc

    def wait_cpus(self, cpus: int, timeout: float = 90) -> None:
        """Until the cluster is up and offers ``cpus`` CPUs in all."""
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            result = subprocess.run(
                self.netns([str(BIN / "ray"), "status", "--address", ADDRESS]),
                env=self.env, capture_output=True, text=True,
            )  # fmt: skip
            out = result.stdout
            if result.returncode == 0 and (
                f"/{cpus}.0 CPU" in out or (cpus == 0 and "CPU" not in out.split("Usage:")[-1])
            ):
                return  # fmt: skip
            time.sleep(1)
        logs = "".join(self.log(p.name)[-1500:] for p in sorted(self.tmp.glob("worker*.log")))
        raise AssertionError(f"the cluster never offered {cpus} CPUs: {out[-800:]}\n{logs}")

    def raylet(self, proc: subprocess.Popen) -> psutil.Process:
        for child in psutil.Process(proc.pid).children(recursive=True):
            if child.name() == "raylet":
                return child
        raise AssertionError("no raylet under the worker node's process")

    def driver(self, config: Path, log: str) -> subprocess.Popen:
        return self._start(
            self.netns(
                [
                    str(BIN / "safescale"),
                    "run",
                    str(config),
                    "--backend",
                    "ray",
                    "--address",
                    ADDRESS,
                    "--no-report",
                ]
            ),
            log,
        )

    def log(self, name: str) -> str:
        return (self.tmp / name).read_text(errors="replace")

    def close(self) -> None:
        for proc in reversed(self.processes):
            try:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
            except psutil.NoSuchProcess:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        # node processes that outlived their parents (all ran under self.tmp)
        for p in psutil.process_iter(["cmdline"]):
            if any(str(self.tmp) in part for part in (p.info["cmdline"] or [])):
                p.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _wait_lines(path: Path, n: int, proc: subprocess.Popen, cluster, log: str, timeout=900):
    deadline = time.monotonic() + timeout
    while _lines(path) < n:
        assert proc.poll() is None, f"the driver ended early: {cluster.log(log)[-3000:]}"
        assert time.monotonic() < deadline, f"no progress: {cluster.log(log)[-3000:]}"
        time.sleep(0.5)


def _records(run_dir: Path) -> dict:
    reader = RunDir(run_dir)
    responses = {r.key: r for r in reader.responses()}
    reliance = {r.key: r for r in reader.reliance()}
    inputs = {
        p.relative_to(run_dir / "detection_inputs").as_posix(): json.loads(p.read_text())
        for p in (run_dir / "detection_inputs").glob("*/*.json")
    }
    db = sqlite3.connect(run_dir / "lm_cache.sqlite")
    keys = {k for (k,) in db.execute("SELECT key FROM calls")}
    db.close()
    return {"responses": responses, "reliance": reliance, "inputs": inputs, "lm_keys": keys}


def _numbers(value, path="") -> dict[str, float]:
    """Every number of a JSON-like value by its path (for comparison within a tolerance)."""
    out: dict[str, float] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(_numbers(v, f"{path}.{k}"))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.update(_numbers(v, f"{path}[{i}]"))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[path] = float(value)
    return out


def _assert_close(a, b, what: str, tolerance: float = TOLERANCE) -> None:
    na, nb = _numbers(a), _numbers(b)
    assert na.keys() == nb.keys(), what
    for key in na:
        x, y = na[key], nb[key]
        assert x == pytest.approx(y, abs=tolerance, rel=tolerance, nan_ok=True), f"{what}{key}"


def test_two_node_study_without_shared_filesystem_survives_node_and_driver_kills(tmp_path):
    reason = _can_make_namespaces()
    if reason is not None:
        pytest.skip(reason)
    from typer.testing import CliRunner

    from safescale.cli import app

    runs = tmp_path / "runs"
    runs.mkdir()
    # the reference: the same study in this process
    reference_dir = tmp_path / "reference" / "demo"
    reference_dir.parent.mkdir()
    reference_config = _demo_config(reference_dir)
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["run", str(reference_config), "--no-report"])
    in_process_s = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    reference = _records(reference_dir)
    assert len(reference["responses"]) == RESPONSES and reference["reliance"]

    run_dir = runs / "demo"
    config = _demo_config(run_dir)
    cluster = LoopbackCluster(masked=runs)
    try:
        cluster.start_head()
        worker = cluster.start_worker()
        # the worker node sees nothing of the run directory's parent
        raylet = cluster.raylet(worker)
        seen = subprocess.run(["nsenter", "-t", str(raylet.pid), "-m", "ls", "-A", str(runs)],
                              capture_output=True, text=True)  # fmt: skip
        assert seen.returncode == 0 and seen.stdout == "", seen
        started = time.perf_counter()
        driver = cluster.driver(config, "driver1.log")
        responses = run_dir / "responses.jsonl"
        _wait_lines(responses, 2, driver, cluster, "driver1.log")
        cluster.raylet(worker).kill()  # kill -9 of the worker node's raylet mid-study
        worker.wait(timeout=60)
        worker = cluster.start_worker()
        _wait_lines(responses, 6, driver, cluster, "driver1.log")
        driver.send_signal(signal.SIGKILL)  # kill -9 of the driver
        driver.wait(timeout=30)
        assert _lines(responses) < RESPONSES
        assert (cluster.tmp / "driver2.log").exists() is False
        again = cluster.driver(config, "driver2.log")
        assert again.wait(timeout=1800) == 0, cluster.log("driver2.log")[-3000:]
        two_node_s = time.perf_counter() - started
        log1, log2 = cluster.log("driver1.log"), cluster.log("driver2.log")
    finally:
        cluster.close()

    print(f"\nin-process {in_process_s:.0f} s; two-node with both kills {two_node_s:.0f} s")
    print("\n".join(line for line in log2.splitlines() if "ray" in line[:12]))
    assert "Raylet is terminated" in log1, log1[-2000:]  # the first driver saw the node die
    assert "stages on the workers" in log2, log2[-2000:]  # the resumed one ran the stages
    assert "reliance: 0 measured" in log2, log2[-2000:]  # ... so the driver measured none
    got = _records(run_dir)
    lines = (run_dir / "responses.jsonl").read_text().splitlines()
    assert len(lines) == RESPONSES, "no response lost or committed twice"
    assert got["responses"].keys() == reference["responses"].keys()
    for key, ref in reference["responses"].items():
        mine = got["responses"][key]
        assert (mine.chosen, mine.response) == (ref.chosen, ref.response), key
        assert mine.option_logits == pytest.approx(ref.option_logits, abs=TOLERANCE, rel=1e-5), key
    reliance_lines = (run_dir / "reliance.jsonl").read_text().splitlines()
    assert len(reliance_lines) == len(reference["reliance"]), "no reliance record twice"
    assert got["reliance"].keys() == reference["reliance"].keys()
    for key, ref in reference["reliance"].items():
        mine = got["reliance"][key]
        assert mine.status == ref.status, key  # max_abs_diff is rounding noise itself (~5e-5)
        _assert_close(
            mine.model_dump(exclude={"wall_ms", "max_abs_diff"}),
            ref.model_dump(exclude={"wall_ms", "max_abs_diff"}),
            f"reliance {key}",
            1e-4,  # KL shifts derived from logits each off by ~1e-5
        )
    assert got["inputs"].keys() == reference["inputs"].keys()
    for name, ref in reference["inputs"].items():
        # features derived from logits and hidden states each off by ~1e-5 (one vs two
        # torch threads sum in a different order): differences and minima of them drift more
        _assert_close(got["inputs"][name], ref, f"detection input {name}", 1e-4)
    assert got["lm_keys"] == reference["lm_keys"], "every LM call came back to the run's cache"
    assert not (run_dir / "checkpoints.sqlite").exists(), "checkpoints stay on the workers"
