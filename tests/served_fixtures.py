"""A real llama-cpp-python OpenAI-compatible server on loopback, started by the tests.

It serves the bundled SmolLM2-135M-Instruct GGUF (the very file the in-process backend
converts), with ``--logits_all true`` so that it returns log-probs. Installed by
``make test`` through the ``served`` extra; without it the served tests are skipped with
that reason.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

SERVED_NAME = "smollm2-135m-instruct"
SKIP_REASON = (
    "llama-cpp-python's server is not installed (pip install 'safescale[served]'; "
    "make test installs it)"
)


def have_llama_server() -> bool:
    return (
        importlib.util.find_spec("llama_cpp") is not None
        and importlib.util.find_spec("uvicorn") is not None
        and importlib.util.find_spec("sse_starlette") is not None
    )


def bundled_gguf() -> Path:
    from safescale.models.registry import get_registered, gguf_parts

    return gguf_parts(get_registered(SERVED_NAME))[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """``python -m llama_cpp.server`` on a loopback port (2048-token context)."""

    def __init__(
        self, port: int | None = None, log: Path | None = None, api_key: str | None = None
    ) -> None:
        self.port = port or free_port()
        self.log = log
        self.api_key = api_key
        # the tests wait while the server computes: it may use both cores of a CI
        # runner, and only one where OMP_NUM_THREADS says so (a shared machine)
        self.threads = int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1))
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 180.0) -> LlamaServer:
        cmd = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(bundled_gguf()),
            "--model_alias",
            SERVED_NAME,
            "--logits_all",
            "true",
            "--n_ctx",
            "2048",
            "--n_threads",
            str(self.threads),
            "--n_threads_batch",
            str(self.threads),
            "--verbose",
            "false",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if self.api_key:
            cmd += ["--api_key", self.api_key]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.process.returncode}")
            try:
                headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
                answer = httpx.get(f"{self.base_url}/models", headers=headers, timeout=2.0)
                if answer.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not answer on port {self.port}")

    def kill(self) -> None:
        """Kill the server at once (SIGKILL): a server that goes away mid-run."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
