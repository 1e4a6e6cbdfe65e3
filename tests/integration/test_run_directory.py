"""The run directory as the runner writes it, read by every consumer: detection on a
real run (CLI ``detect train`` / ``detect eval``), the writer lock, failed starts
that leave nothing behind, and one-line user errors. A tiny random Llama saved to a
directory is the run's model (the runner loads it like any local model)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safescale.cli import app
from safescale.experiments.config import parse_config
from safescale.rundir import RunDir, RunLock, RunLockedError

pytestmark = pytest.mark.integration

CONFIG = """
name: tinyrun
models:
  - name: tiny
    spec: {model}
corpora: [retina-rules]
conditions: [closed_book, clean_evidence]
limit: 15
shard_size: 8
bootstrap: {{replicates: 50}}
"""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from safescale.models.tiny import build_tiny_model

    lm = build_tiny_model(seed=0, context_length=8192)  # a character tokenizer: long prompts
    directory = tmp_path_factory.mktemp("tiny-model") / "tiny"
    lm.model.save_pretrained(directory)
    lm.tokenizer.save_pretrained(directory)
    return directory


def _config(model: Path, out: Path, **changes):
    return parse_config(CONFIG.format(model=model)).with_overrides(output_dir=out, **changes)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_dir):
    from safescale.experiments.runner import run_experiment

    out = tmp_path_factory.mktemp("run") / "run"
    summary = run_experiment(_config(tiny_dir, out), progress=False)
    assert summary.answered == 2 * 15
    return out


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_runner_writes_the_contract(tiny_run):
    reader = RunDir(tiny_run)
    manifest = reader.manifest()
    from safescale.rundir import MANIFEST_SCHEMA_VERSION

    assert manifest.schema_version == MANIFEST_SCHEMA_VERSION == 3
    assert set(manifest.corpora) == {"retina-rules"}
    assert manifest.models["tiny"].hash and manifest.models["tiny"].parameters > 0
    responses = reader.responses()
    chosen = manifest.formulations["tiny"]["retina-rules"]["chosen"]
    assert len(responses) == 30 and all(r.formulation == chosen for r in responses)
    assert {r.condition for r in responses} == {"closed_book", "clean_evidence"}
    assert reader.steps() and not (tiny_run / ".lock").read_text()  # released


@pytest.fixture(scope="module")
def trained_run(tiny_run):
    result = _invoke("detect", "train", str(tiny_run), "-d", "ecrt,perplexity,length")
    assert result.exit_code == 0, result.output
    return tiny_run


def test_detect_train_and_eval_on_a_runner_directory(trained_run):
    tiny_run = trained_run
    out = tiny_run / "detection" / "tiny__retina-rules"
    assert (out / "models" / "ecrt" / "stage1.json").is_file()
    table = (tiny_run / "detection" / "triage.md").read_text()
    assert "| ecrt |" in table and "| perplexity |" in table
    triage = RunDir(tiny_run).triage()
    assert triage is not None and triage[0].backbone == "tiny"
    assert triage[0].corpus == "retina-rules"
    (tiny_run / "detection" / "triage.md").unlink()
    result = _invoke("detect", "eval", str(tiny_run))
    assert result.exit_code == 0, result.output
    assert (tiny_run / "detection" / "triage.md").read_text() == table


READ_A_RUN = """
import json, sys, traceback

first = {}


class Watch:  # records who imports torch or langgraph first (for the failure message)
    def find_spec(self, name, path, target=None):
        if name in ("torch", "langgraph") and name not in first:
            first[name] = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack()]
        return None


sys.meta_path.insert(0, Watch())
from typer.testing import CliRunner
from safescale.cli import app

run = sys.argv[1]
for args in (["report", run], ["view", run], ["detect", "eval", run]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
print(first, file=sys.stderr)
print(json.dumps(sorted(m for m in ("torch", "langgraph") if m in sys.modules)))
"""


def test_report_view_and_detect_eval_of_a_run_never_import_torch(trained_run):
    """Reading a finished run (the report with its metrics and plots, the viewer's page
    and ``detect eval``) loads neither torch nor langgraph, in a fresh interpreter."""
    metrics = trained_run / "metrics.json"
    metrics.unlink(missing_ok=True)
    out = subprocess.run(
        [sys.executable, "-c", READ_A_RUN, str(trained_run)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], out.stderr[-4000:]
    assert metrics.is_file() and (trained_run / "report.md").is_file()
    assert (trained_run / "view" / "index.html").is_file()
    assert RunDir(trained_run).metrics().cells


def test_second_writer_is_refused_naming_the_holder(tiny_run, tiny_dir):
    from safescale.experiments.runner import run_experiment

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from safescale.rundir import RunLock
                lock = RunLock({str(tiny_run)!r}).acquire()
                print("locked", flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"pid {holder.pid} on host"):
            run_experiment(_config(tiny_dir, tiny_run), progress=False)
        result = _invoke("run", str(tiny_run / "config.yaml"), "--out", str(tiny_run))
        assert result.exit_code == 2
        assert result.output.startswith(f"error: {tiny_run}: locked: pid {holder.pid}")
        # readers never need the lock
        assert _invoke("trace", str(tiny_run), RunDir(tiny_run).responses()[0].item).exit_code == 0
    finally:
        holder.kill()
        holder.wait()
    lines = (tiny_run / "responses.jsonl").read_text().count("\n")
    assert lines == 30  # nothing written twice
    with RunLock(tiny_run):  # the kernel released the dead holder's lock
        pass


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"spec": "/no/such/model/dir"}, "no/such/model"),
        ({"spec": "not-a-registered-model"}, "not-a-registered-model"),
    ],
)
def test_a_failed_start_leaves_nothing_and_the_corrected_run_works(
    tmp_path, tiny_dir, change, message
):
    from safescale.experiments.config import ModelConfig
    from safescale.experiments.runner import run_experiment

    out = tmp_path / "run"
    good = _config(tiny_dir, out, limit=2, conditions=("closed_book",))
    bad = good.with_overrides(models=(ModelConfig(name="tiny", **change),))
    with pytest.raises(Exception, match=message):
        run_experiment(bad, progress=False)
    assert not out.exists()
    summary = run_experiment(good, progress=False)
    assert summary.answered == 2


def test_a_failed_start_in_an_existing_directory_removes_only_its_files(tmp_path, tiny_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    config_path = tmp_path / "bad.yaml"
    config_path.write_text(CONFIG.format(model="/no/such/model") + f"output_dir: {out}\n")
    result = _invoke("run", str(config_path), "--no-detect", "--no-report")
    assert result.exit_code == 2, result.output
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_out_pointing_at_a_file_is_one_line(tmp_path, tiny_dir):
    target = tmp_path / "file"
    target.write_text("x")
    config_path = tmp_path / "c.yaml"
    config_path.write_text(CONFIG.format(model=tiny_dir))
    result = _invoke("run", str(config_path), "--out", str(target), "--no-detect")
    assert result.exit_code == 2
    assert result.output == f"error: {target}: --out: is a file, not a directory\n"


def test_corrupt_run_files_are_one_line_errors(tmp_path, tiny_dir):
    from safescale.experiments.runner import run_experiment

    out = tmp_path / "run"
    config = _config(tiny_dir, out, limit=2, conditions=("closed_book",))
    run_experiment(config, progress=False)
    config_path = out / "config.yaml"

    cache = out / "lm_cache.sqlite"
    saved = cache.read_bytes()
    cache.write_text("not a database")
    result = _invoke("run", str(config_path), "--out", str(out))
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {cache}: not an SQLite database")
    cache.write_bytes(saved)

    responses = out / "responses.jsonl"
    rows = responses.read_text().splitlines()
    broken = json.loads(rows[0])
    del broken["model"]
    responses.write_text(json.dumps(broken) + "\n" + rows[1] + "\n")
    result = _invoke("run", str(config_path), "--out", str(out))
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {responses}:1: model: Field required")
    responses.write_text("\n".join(rows) + "\n")

    manifest = out / "manifest.json"
    text = manifest.read_text()
    manifest.write_text("{not json")
    for args in (("run", str(config_path), "--out", str(out)), ("report", str(out))):
        result = _invoke(*args)
        assert result.exit_code == 2, args
        assert result.output.startswith(f"error: {manifest}:1: not valid JSON")
    manifest.write_text(text)
    assert _invoke("report", str(out), "--no-plots").exit_code == 0


def test_detect_user_errors_are_one_line(tmp_path, tiny_run):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (("detect", "train", str(tmp_path / "missing")), "no such directory"),
        (("detect", "train", str(empty)), "manifest.json: no such file"),
        (("detect", "eval", str(empty)), "manifest.json: no such file"),
        (("detect", "train", str(tiny_run), "-d", "nope"), "--detectors: unknown detector"),
        (("detect", "train", str(tiny_run), "--label-source", "x"), "--label-source: "),
    ]
    for args, message in cases:
        result = _invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith("error: ") and message in result.output, result.output
        assert "Traceback" not in result.output

    fresh = tmp_path / "untrained"
    (fresh / "detection").mkdir(parents=True)
    for name in ("manifest.json", "responses.jsonl"):
        (fresh / name).write_bytes((tiny_run / name).read_bytes())
    result = _invoke("detect", "eval", str(fresh))
    assert result.exit_code == 2 and "run `safescale detect train" in result.output

    manifest = json.loads((fresh / "manifest.json").read_text())
    manifest["models"]["tiny"]["hash"] = "0" * 64
    (fresh / "manifest.json").write_text(json.dumps(manifest))
    result = _invoke("detect", "train", str(fresh), "-d", "length")
    assert result.exit_code == 2 and "models.tiny.hash: model 'tiny'" in result.output

    (fresh / "responses.jsonl").write_text("")
    result = _invoke("detect", "train", str(fresh))
    assert result.exit_code == 2 and "holds no responses" in result.output


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    result = _invoke("--debug", "detect", "eval", str(tmp_path))
    assert result.exit_code == 2
    assert "Traceback" in result.output and "error: " in result.output


def test_tampered_checkpoint_types_are_not_revived(tmp_path):
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    from safescale.experiments.runner import open_checkpointer
    from safescale.rundir import ModelEntry

    conn, saver = open_checkpointer(tmp_path / "checkpoints.sqlite")
    try:
        permissive = JsonPlusSerializer(allowed_msgpack_modules=True)
        stored = {"entry": ModelEntry(spec="x", hash="h")}
        blob = permissive.dumps_typed(stored)
        assert isinstance(permissive.loads_typed(blob)["entry"], ModelEntry)
        value = saver.serde.loads_typed(blob)
        assert not isinstance(value["entry"], ModelEntry)  # a foreign type is not imported
        assert saver.serde.loads_typed(permissive.dumps_typed({"a": [1, "x"]})) == {"a": [1, "x"]}
    finally:
        conn.close()
    assert sqlite3.connect(tmp_path / "checkpoints.sqlite").execute("select 1").fetchone()


@pytest.mark.parametrize("bad_name", ["../escape", "a/b"])
def test_a_corpus_name_that_is_not_a_slug_is_refused_before_anything_is_written(
    tmp_path, tiny_dir, bad_name
):
    import shutil

    import yaml

    from safescale.corpora import load_corpus

    source = load_corpus("radiology-guidelines").path
    corpus_dir = tmp_path / "corpus"
    shutil.copytree(source, corpus_dir)
    meta = yaml.safe_load((corpus_dir / "corpus.yaml").read_text())
    meta["name"] = bad_name
    (corpus_dir / "corpus.yaml").write_text(yaml.safe_dump(meta))
    config = tmp_path / "bad.yaml"
    config.write_text(
        f"name: bad\nmodels: [{{name: tiny, spec: {tiny_dir}}}]\ncorpora: [{corpus_dir}]\n"
        "conditions: [closed_book]\nlimit: 1\n"
    )
    out = tmp_path / "runs" / "bad"
    result = _invoke("run", str(config), "--out", str(out))
    assert result.exit_code == 2, result.output
    assert "corpus" in result.output and "name" in result.output
    assert not out.exists()
    assert not (tmp_path / "escape").exists() and not (tmp_path / "runs" / "escape").exists()


def test_a_run_hashed_under_an_earlier_rule_resumes(tmp_path, tiny_run, tiny_dir):
    """A run whose manifest holds the hash of an earlier hashing rule (or of a config
    written before fields were added) resumes when its own config.yaml, read now, is
    the same config; a real change is still refused."""
    import shutil

    from safescale.experiments.runner import RunConflictError, run_experiment

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    manifest_path = run / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["config_hash"] = "0" * 64  # as written by an earlier hashing rule
    manifest_path.write_text(json.dumps(data))
    before = (run / "responses.jsonl").read_bytes()
    summary = run_experiment(_config(tiny_dir, run), progress=False)
    assert summary.answered == 0  # nothing recomputed
    assert (run / "responses.jsonl").read_bytes() == before
    assert RunDir(run).manifest().config_hash == _config(tiny_dir, run).config_hash()
    with pytest.raises(RunConflictError, match="different config"):
        run_experiment(_config(tiny_dir, run, seed=5), progress=False)
