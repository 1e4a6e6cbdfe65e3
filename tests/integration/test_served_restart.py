"""A server that goes away mid-run: the run stops with one clear line, and after the
server is started again — on another port — the same command finishes the study with
no record twice. The model's identity (and so the LM cache and the config hash) does
not depend on the server's address."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from conftest import SERVED_KEY_ENV
from served_fixtures import SKIP_REASON, LlamaServer, have_llama_server

pytestmark = pytest.mark.slow


def _write_config(path, base_url: str, out) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "name": "served-restart",
                "models": [
                    {
                        "name": "smollm2-served",
                        "kind": "openai",
                        "base_url": base_url,
                        "model": "smollm2-135m-instruct",
                        "api_key_env": SERVED_KEY_ENV,
                        "tokenizer": "smollm2-135m-instruct",
                        "max_concurrency": 2,
                        "timeout_s": 10,
                        "retries": 1,
                        "context_length": 2048,
                    }
                ],
                "corpus": "radiology-guidelines",
                "conditions": ["closed_book", "clean_evidence"],
                "limit": 6,
                "shard_size": 6,
                "answer": {"formulation": "letter"},
                "output_dir": str(out),
            }
        )
    )


def _run(config, env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "safescale.cli", "run", str(config), "--no-report"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )


def _lines(path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_server_killed_mid_run_then_restarted_elsewhere(tmp_path):
    if not have_llama_server():
        pytest.skip(SKIP_REASON)
    key = "sk-restart-" + os.urandom(6).hex()
    env = {**os.environ, SERVED_KEY_ENV: key, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    config = tmp_path / "study.yaml"
    responses = out / "responses.jsonl"
    first = LlamaServer(log=tmp_path / "first.log", api_key=key).start()
    try:
        _write_config(config, first.base_url, out)
        proc = _run(config, env)
        deadline = time.monotonic() + 600
        while len(_lines(responses)) < 3 and proc.poll() is None:
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.2)
        first.kill()
        _, stderr = proc.communicate(timeout=300)
    finally:
        first.stop()
    assert proc.returncode == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert f"127.0.0.1:{first.port}/v1/completions" in errors[0]
    assert "'smollm2-135m-instruct'" in errors[0] and "run the same command" in errors[0]
    committed = _lines(responses)
    assert 3 <= len(committed) < 12
    hash_before = json.loads((out / "manifest.json").read_text())["models"]["smollm2-served"][
        "hash"
    ]

    second = LlamaServer(log=tmp_path / "second.log", api_key=key).start()
    try:
        assert second.port != first.port
        _write_config(config, second.base_url, out)  # the address is not part of the run
        proc = _run(config, env)
        _, stderr = proc.communicate(timeout=900)
    finally:
        second.stop()
    assert proc.returncode == 0, stderr
    assert f"{len(committed)} already done" in stderr
    rows = _lines(responses)
    keys = [(r["model"], r["condition"], r["item"]) for r in rows]
    assert len(rows) == 12 and len(set(keys)) == 12
    assert rows[: len(committed)] == committed  # the first run's records are untouched
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["smollm2-served"]["hash"] == hash_before
