"""The benchmarks' figures in one place: the result files they write and the page made
from them.

Every ``benchmarks/bench_*.py`` takes ``--json OUT`` and then writes, next to what it
prints, one result file (:func:`write_result`): the figures as it formatted them, the
raw numbers behind them, the command line, and when and where it ran. The committed
files live in ``benchmarks/results/<benchmark>.json``. This script renders them, with
the hand-kept study findings in ``benchmarks/results/studies.md``, into
``docs/results.md``; a unit test checks that the committed page is exactly what this
script makes from the committed files, so a figure retyped into the page fails.

Run::

    .venv/bin/python benchmarks/bench_models.py --json benchmarks/results/bench_models.json
    .venv/bin/python benchmarks/render_results.py   # rewrites docs/results.md (make results)
    .venv/bin/python benchmarks/render_results.py --check   # exit 1 if it is stale

A result file, format 1 (one JSON object)::

    {"format": 1, "benchmark": "bench_models", "title": "...", "command": "...",
     "provenance": {"kind": "measured" | "seed", "date": "YYYY-MM-DD", "machine": "...",
                    "revision": "...", "note": "..."},
     "rows": [{"what": "...", "measured": "0.82x", "goal": "<= 1.10x", "values": {...}}],
     "notes": ["a markdown paragraph", ...]}

``kind: seed`` marks figures carried over from an earlier document (``note`` says
which and when); ``measured`` ones were written by the script itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
STUDIES_FILE = "studies.md"
PAGE = ROOT / "docs" / "results.md"
FORMAT = 1
_KINDS = ("measured", "seed")

#: Order of the sections on the page (benchmarks not listed follow by name).
ORDER = (
    "bench_models",
    "bench_retrieval",
    "bench_index_ondisk",
    "bench_agents",
    "bench_detection",
    "bench_study",
    "bench_prefix",
    "bench_batching",
    "bench_experiments",
    "bench_ray",
    "bench_viewer",
)


class ResultError(ValueError):
    """A result file that does not follow the format (names the file and field)."""


def figure(what: str, measured: str, goal: str = "", **values: float | int | str | None) -> dict:
    """One figure of a benchmark: what was measured, the value as printed, its goal, and
    the raw numbers behind it (``values``, kept for whoever compares runs)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in values.items()}  # fmt: skip
    return {"what": what, "measured": measured, "goal": goal, "values": clean}


def _revision() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def write_result(
    path: Path | str,
    benchmark: str,
    title: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    notes: Sequence[str] = (),
) -> Path:
    """Write one benchmark's result file (atomically), stamped with today's date, this
    machine, the git revision and the command line that produced it."""
    path = Path(path)
    result = {
        "format": FORMAT,
        "benchmark": benchmark,
        "title": title,
        "command": " ".join(["python", *[_relative(a) for a in sys.argv]]),
        "provenance": {
            "kind": "measured",
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, {platform.system()}, "
            f"load average {os.getloadavg()[0]:.1f} at the end",
            "revision": _revision(),
            "note": "",
        },
        "rows": [dict(r) for r in rows],
        "notes": list(notes),
    }
    validate(result, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    print(f"wrote {path}", file=sys.stderr)
    return path


def _relative(arg: str) -> str:
    """A path argument as seen from the repository root (so the recorded command runs
    from there whatever directory the script ran in); any other argument unchanged."""
    if "/" not in arg and Path(arg).suffix not in _PATH_SUFFIXES:
        return arg  # a value such as `6`, `A,C` or `none`, not a path
    try:
        return str(Path(arg).resolve().relative_to(ROOT))
    except (ValueError, OSError):
        return arg


_PATH_SUFFIXES = (".py", ".json", ".jsonl", ".yaml", ".yml", ".md")


def validate(result: Any, where: str) -> dict:
    """Check a result object; raise :class:`ResultError` naming ``where`` and the field."""

    def fail(field: str, message: str) -> ResultError:
        return ResultError(f"error: {where}: {field}: {message}")

    if not isinstance(result, dict):
        raise fail("-", "not a JSON object")
    if result.get("format") != FORMAT:
        raise fail("format", f"expected {FORMAT}, got {result.get('format')!r}")
    for key in ("benchmark", "title", "command"):
        if not isinstance(result.get(key), str) or not result[key].strip():
            raise fail(key, "a non-empty string is required")
    prov = result.get("provenance")
    if not isinstance(prov, dict):
        raise fail("provenance", "an object is required")
    if prov.get("kind") not in _KINDS:
        raise fail("provenance.kind", f"one of {', '.join(_KINDS)}")
    for key in ("date", "machine", "revision"):
        if not isinstance(prov.get(key), str) or not prov[key].strip():
            raise fail(f"provenance.{key}", "a non-empty string is required")
    if prov["kind"] == "seed" and not str(prov.get("note", "")).strip():
        raise fail("provenance.note", "a seeded result says where its figures came from")
    rows = result.get("rows")
    if not isinstance(rows, list) or not rows:
        raise fail("rows", "a non-empty list is required")
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise fail(f"rows[{i}]", "an object is required")
        for key in ("what", "measured"):
            if not isinstance(r.get(key), str) or not r[key].strip():
                raise fail(f"rows[{i}].{key}", "a non-empty string is required")
        if not isinstance(r.get("goal", ""), str):
            raise fail(f"rows[{i}].goal", "a string is required")
        if "|" in r["what"] + r["measured"] + r.get("goal", ""):
            raise fail(f"rows[{i}]", "'|' would break the table")
    notes = result.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise fail("notes", "a list of strings is required")
    return result


def load_results(directory: Path = RESULTS_DIR) -> list[dict]:
    """Every ``*.json`` result file of ``directory``, validated, in page order."""
    results = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ResultError(f"error: {path}:{exc.lineno}: -: {exc.msg}") from None
        validate(data, str(path))
        if data["benchmark"] != path.stem:
            raise ResultError(
                f"error: {path}: benchmark: {data['benchmark']!r} does not match the file name"
            )
        results.append(data)
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(results, key=lambda r: (rank.get(r["benchmark"], len(ORDER)), r["benchmark"]))


def _provenance(result: dict) -> str:
    prov = result["provenance"]
    note = str(prov.get("note", "")).strip().rstrip(".")
    if prov["kind"] == "seed":
        text = f"Seeded, not re-measured since: {note}."
    else:
        text = (
            f"Measured {prov['date']} on {prov['machine']}, revision `{prov['revision']}`"
            + (f"; {note}" if note else "")
            + "."
        )
    return text + f" Command: `{result['command']}`."


def render(directory: Path = RESULTS_DIR) -> str:
    """The text of ``docs/results.md`` made from ``directory``."""
    results = load_results(directory)
    out = [
        "<!-- Generated by benchmarks/render_results.py from benchmarks/results/*.json and",
        "benchmarks/results/studies.md. Do not edit: change those files and run",
        "`python benchmarks/render_results.py`. -->",
        "",
        "# Results: benchmarks and measured studies",
        "",
        "Every figure on this page comes from a file in `benchmarks/results/`: a benchmark",
        "script run with `--json benchmarks/results/<benchmark>.json` writes its own, with the",
        "date, machine and revision it ran on; the study findings are kept in",
        "`benchmarks/results/studies.md`. Timing benchmarks are measured on a machine doing",
        "nothing else: ratios against a baseline timed in the same run are the figures to",
        "read, absolute times move with the machine.",
        "",
        "## Benchmarks",
        "",
    ]
    for result in results:
        out.append(f"- [`{result['benchmark']}`](#{result['benchmark']}): {result['title']}")
    out.append("")
    for result in results:
        heading = f"### `{result['benchmark']}`"
        out += [heading, "", f"**{result['title']}.** {_provenance(result)}", ""]
        out += ["| what | measured | goal |", "|---|---|---|"]
        for r in result["rows"]:
            out.append(f"| {r['what']} | {r['measured']} | {r.get('goal') or '—'} |")
        out.append("")
        for note in result.get("notes", []):
            out += [note.strip(), ""]
    studies = directory / STUDIES_FILE
    if studies.is_file():
        out += ["## Studies", "", studies.read_text(encoding="utf-8").strip(), ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument("--out", type=Path, default=PAGE)
    parser.add_argument("--check", action="store_true", help="exit 1 if --out is stale")
    args = parser.parse_args(argv)
    try:
        text = render(args.results)
    except ResultError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            print(f"error: {args.out}: stale: run python benchmarks/render_results.py",
                  file=sys.stderr)  # fmt: skip
            return 1
        return 0
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
