"""Hardening of a real run directory (the runner on a tiny random Llama): derived output
directories are never written through a symlink, a read-only run directory, a ``.lock``
that is a directory and a dangling ``--out`` are one-line errors that change nothing,
and the served viewer answers only its own loopback Host under its token path."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safescale.cli import app
from safescale.experiments.config import parse_config

pytestmark = pytest.mark.integration

CONFIG = """
name: hardened
models:
  - name: tiny
    spec: {model}
corpora: [radiology-guidelines]
conditions: [closed_book, clean_evidence]
answer: {{formulation: cloze_pmi}}
bootstrap: {{replicates: 50}}
limit: 4
"""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from safescale.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def made_run(tmp_path_factory, tiny_dir) -> Path:
    from safescale.experiments import run_experiment, write_report

    out = tmp_path_factory.mktemp("made") / "run"
    config = parse_config(CONFIG.format(model=tiny_dir)).with_overrides(output_dir=out)
    run_experiment(config, progress=False)
    write_report(out)
    return out


@pytest.fixture
def run_dir(made_run, tmp_path) -> Path:
    """A private copy of the run (each test may break it)."""
    copy = tmp_path / "run"
    shutil.copytree(made_run, copy, symlinks=True)
    return copy


def _invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (symlinks as their target text) -> its sha256."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            out[key] = "-> " + os.readlink(path)
        elif path.is_file():
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# ------------------------------------------------------------ symlinked outputs
def test_view_and_report_refuse_a_symlink_out_of_the_run(run_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "index.html").write_text("someone else's page")
    (elsewhere / "accuracy_vs_high_risk.png").write_bytes(b"someone else's picture")
    before = _tree_digest(elsewhere)
    shutil.rmtree(run_dir / "view", ignore_errors=True)
    (run_dir / "view").symlink_to(elsewhere)
    _one_line_error(_invoke("view", run_dir), f"{run_dir / 'view'}: is a symlink", "outside")
    shutil.rmtree(run_dir / "plots")
    (run_dir / "plots").symlink_to(elsewhere)
    _one_line_error(_invoke("report", run_dir), f"{run_dir / 'plots'}: is a symlink", "outside")
    assert _tree_digest(elsewhere) == before  # nothing written there


def test_a_symlink_inside_the_run_is_replaced_not_followed(run_dir, tmp_path):
    inner = run_dir / "inner"
    inner.mkdir()
    (run_dir / "view").symlink_to("inner")
    outside_file = tmp_path / "precious.png"
    outside_file.write_bytes(b"precious")
    (run_dir / "plots" / "accuracy_vs_high_risk.png").unlink()
    (run_dir / "plots" / "accuracy_vs_high_risk.png").symlink_to(outside_file)
    assert _invoke("view", run_dir).exit_code == 0
    assert (run_dir / "view").is_dir() and not (run_dir / "view").is_symlink()
    assert (run_dir / "view" / "index.html").is_file() and not list(inner.iterdir())
    assert _invoke("report", run_dir).exit_code == 0
    written = run_dir / "plots" / "accuracy_vs_high_risk.png"
    assert not written.is_symlink() and written.read_bytes().startswith(b"\x89PNG")
    assert outside_file.read_bytes() == b"precious"
    # the viewer embeds only real plot files
    from safescale.viewer.data import load_view_data

    (run_dir / "plots" / "stray.png").symlink_to(outside_file)
    assert "stray" not in load_view_data(run_dir).index["plots"]


# ------------------------------------------------------------ read-only and odd paths
@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` read-only for this process: permissions for a normal user, a read-only
    bind mount for root (who ignores permissions)."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")] if not p.is_symlink()}
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    mounted = subprocess.run(
        f"mount --bind '{path}' '{path}' && mount -o remount,bind,ro '{path}'",
        shell=True,
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        subprocess.run(["umount", str(path)], capture_output=True)
        pytest.skip(f"root without mount permission cannot make {path} read-only: "
                    f"{mounted.stderr.strip()}")  # fmt: skip
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_read_only_run_directory_is_one_line_and_left_as_it_was(run_dir):
    from safescale.rundir import RunDir

    reader = RunDir(run_dir)
    response = next(r for r in reader.responses() if r.evidence_ids)
    shutil.rmtree(run_dir / "view", ignore_errors=True)
    before = _tree_digest(run_dir)
    config = run_dir / "config.yaml"
    with read_only(run_dir):
        cases = [
            (("run", config, "--out", run_dir), "cannot take the writer lock"),
            (("run", config, "--out", run_dir, "--fresh"), "cannot take the writer lock"),
            (("detect", "train", run_dir, "-d", "length"), "cannot take the writer lock"),
            (("replay", run_dir, response.item, "-c", response.condition, "--drop-passage",
              response.evidence_ids[0]), "cannot take the writer lock"),
            (("report", run_dir), "cannot"),
            (("report", run_dir, "--no-plots"), "cannot write"),
            (("view", run_dir), "cannot create view/"),
        ]  # fmt: skip
        for args, needle in cases:
            _one_line_error(_invoke(*args), str(run_dir), needle)
        # reading still works
        assert _invoke("trace", run_dir, response.item).exit_code == 0
    assert _tree_digest(run_dir) == before


def test_a_lock_that_is_a_directory_and_a_dangling_out_are_one_line(run_dir, tmp_path):
    config = run_dir / "config.yaml"
    (run_dir / ".lock").unlink(missing_ok=True)
    (run_dir / ".lock").mkdir()
    _one_line_error(_invoke("run", config, "--out", run_dir), ".lock: is a directory")
    (run_dir / ".lock").rmdir()
    elsewhere = tmp_path / "victim"
    elsewhere.write_text("not a lock")
    (run_dir / ".lock").symlink_to(elsewhere)
    _one_line_error(_invoke("run", config, "--out", run_dir), ".lock: is a symlink")
    assert elsewhere.read_text() == "not a lock"  # the lock never writes through it
    dangling = tmp_path / "out"
    dangling.symlink_to(tmp_path / "does-not-exist")
    _one_line_error(_invoke("run", config, "--out", dangling), "--out: is a symlink to")
    assert not (tmp_path / "does-not-exist").exists()


# ------------------------------------------------------------ the served viewer
def _get(port: int, path: str, host: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("GET", path, skip_host=True)
        connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_served_viewer_checks_host_and_token(made_run):
    from safescale.viewer import ViewServer, load_view_data

    data = load_view_data(made_run)
    item = data.index["items"][0]["id"]
    question = data.index["items"][0]["question"].encode()
    server = ViewServer(data).start()
    try:
        port, token = server.port, server.token
        assert server.url == f"http://127.0.0.1:{port}/{token}/" and len(token) >= 20
        own = f"127.0.0.1:{port}"
        status, body = _get(port, f"/{token}/", own)
        assert status == 200 and b"<html" in body.lower()
        status, body = _get(port, f"/{token}/api/item/{item}", f"localhost:{port}")
        assert status == 200 and question in body
        for host in ("evil.example.com", f"evil.example.com:{port}", "127.0.0.1:1", ""):
            status, body = _get(port, f"/{token}/api/item/{item}", host)
            assert status == 403 and question not in body, host
        for path in ("/", "/index.html", f"/api/item/{item}", f"/{token[:-1]}/"):
            status, body = _get(port, path, own)
            assert status == 404 and question not in body, path
    finally:
        server.close()


def test_a_port_in_use_is_one_line(made_run):
    from safescale.viewer import ViewServer, load_view_data

    server = ViewServer(load_view_data(made_run))
    try:
        result = _invoke("view", made_run, "--serve", "--port", str(server.port))
        _one_line_error(result, f"--port: {server.port} on 127.0.0.1 is in use")
    finally:
        server.close()


BARE_CONDITION = """
from safescale.agents.blocks import END, START, AgentContext, AgentState, StateGraph, answer_node


def build_graph(checkpointer=None):
    graph = StateGraph(AgentState, context_schema=AgentContext)
    graph.add_node("answer", answer_node)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer, name="bare_answer")
"""


def test_reliance_on_responses_without_evidence_is_refused(tmp_path, tiny_dir):
    """An external condition that never puts evidence in the prompt: the stage says so
    instead of "0 measured" and no reliance.jsonl."""
    from safescale.experiments import run_experiment
    from safescale.experiments.reliance import RelianceError, run_reliance_stage

    code = tmp_path / "code"
    code.mkdir()
    (code / "bare_condition_mod.py").write_text(BARE_CONDITION)
    text = CONFIG.format(model=tiny_dir).replace(
        "conditions: [closed_book, clean_evidence]",
        f"import_path: [{code}]\nconditions: [closed_book, bare_condition_mod:build_graph]\n"
        "reliance: {enabled: true}",
    )
    config = parse_config(text).with_overrides(output_dir=tmp_path / "run", limit=2)
    run_experiment(config, progress=False)
    with pytest.raises(RelianceError, match=r"no response of .*bare_answer.* carries evidence"):
        run_reliance_stage(config)
    assert not (tmp_path / "run" / "reliance.jsonl").exists()
