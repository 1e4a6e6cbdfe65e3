"""``safescale run`` / ``demo`` / ``trace`` / ``replay``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from safescale.experiments.config import ExperimentConfig
    from safescale.experiments.ray_backend import RaySummary

__all__ = ["register"]

console = Console()
err = Console(stderr=True)


class Backend(StrEnum):
    """Where the sweep's cells run."""

    local = "local"
    ray = "ray"


def _fail(message: str) -> None:
    """Stop with a user error (printed as ``error: ...``, exit code 2)."""
    from safescale.cli import UserError

    raise UserError(message)


def run(
    config: str = typer.Argument(..., help="bundled config name or YAML path"),
    out: Path | None = typer.Option(None, "--out", help="run directory (default runs/<name>)"),
    limit: int | None = typer.Option(None, "--limit", help="items per corpus"),
    fresh: bool = typer.Option(
        False, "--fresh", help="move an existing run of another config aside"
    ),
    detect: bool = typer.Option(True, "--detect/--no-detect", help="run detection if configured"),
    report: bool = typer.Option(True, "--report/--no-report", help="write metrics and report"),
    backend: Backend = typer.Option(
        Backend.local, "--backend", help="local: in this process; ray: on Ray actors"
    ),
    address: str | None = typer.Option(
        None, "--address", help="Ray cluster address (default: start a local Ray instance)"
    ),
    conflict_dose: str | None = typer.Option(
        None,
        "--conflict-dose",
        help="conflict-dose sweep, comma-separated (e.g. 0,1,2,4); overrides the config",
    ),
    context_budget: str | None = typer.Option(
        None,
        "--context-budget",
        help="context-budget sweep, comma-separated token counts or max (e.g. max,512,2048); "
        "overrides the config",
    ),
    k: str | None = typer.Option(
        None,
        "--k",
        help="retrieval-depth sweep, comma-separated (e.g. 4,1,2,8); overrides the config",
    ),
    import_path: list[Path] = typer.Option(
        [],
        "--import-path",
        help="directory searched first for the config's import-path conditions "
        "(repeatable; default: the config's own directory)",
    ),
) -> None:
    """Run (or resume) an experiment, then detection, metrics and the report."""
    run_and_report(
        config,
        out=out,
        limit=limit,
        conflict_dose=conflict_dose,
        context_budget=context_budget,
        k=k,
        fresh=fresh,
        detect=detect,
        report=report,
        backend=backend.value,
        address=address,
        import_path=import_path,
    )


def run_and_report(
    config_ref: str,
    *,
    out: Path | None = None,
    limit: int | None = None,
    fresh: bool = False,
    detect: bool = True,
    report: bool = True,
    backend: str = "local",
    address: str | None = None,
    conflict_dose: str | None = None,
    context_budget: str | None = None,
    k: str | None = None,
    import_path: list[Path] | None = None,
) -> None:
    from safescale.experiments.config import MAX_CONFLICT_DOSE, ConfigError, load_config
    from safescale.experiments.runner import (
        RunConflictError,
        run_detection_stage,
        run_experiment,
    )

    doses = None
    if conflict_dose is not None:
        try:
            doses = [int(d) for d in conflict_dose.split(",") if d.strip()]
        except ValueError:
            _fail(f"--conflict-dose: expected integers like 0,1,2,4, got {conflict_dose!r}")
        bad = [d for d in doses or [] if not 0 <= d <= MAX_CONFLICT_DOSE]
        if bad:
            _fail(
                f"--conflict-dose: {bad[0]} is not a dose in 0..{MAX_CONFLICT_DOSE} "
                "(contradicting passages added to one item)"
            )
    for directory in import_path or []:
        if not directory.is_dir():
            _fail(f"--import-path: {directory}: no such directory")
    try:
        config = load_config(config_ref, import_path=import_path or ())
        overrides = {}
        if out is not None:
            overrides["output_dir"] = out
        if limit is not None:
            overrides["limit"] = limit
        if doses is not None:
            overrides["conflict_dose"] = doses
        if context_budget is not None:
            values = [v.strip() for v in context_budget.split(",") if v.strip()]
            try:
                overrides["context_budget"] = [
                    None if v in ("max", "null") else int(v) for v in values
                ]
            except ValueError:
                _fail(
                    f"--context-budget: expected token counts or max like max,512,2048, "
                    f"got {context_budget!r}"
                )
        if k is not None:
            try:
                depths = [int(v) for v in k.split(",") if v.strip()]
            except ValueError:
                _fail(f"--k: expected integers like 4,1,2,8, got {k!r}")
            overrides["retrieval"] = {**config.retrieval.model_dump(), "k": depths}
        if overrides:
            config = config.with_overrides(**overrides)
    except ConfigError as exc:
        _fail(str(exc))
    if address is not None and backend != "ray":
        _fail("--address needs --backend ray")
    try:
        if backend == "ray":
            summary = _run_on_ray(config, fresh=fresh, address=address)
        else:
            summary = run_experiment(config, fresh=fresh, console=err)
    except RunConflictError as exc:
        _fail(str(exc))
    err.print(
        f"[green]responses[/]: {summary.answered} answered, {summary.skipped} already done "
        f"({summary.seconds:.1f} s; LM cache {summary.lm_cache_hits} hits / "
        f"{summary.lm_cache_misses} misses) -> {summary.run_dir}"
    )
    if config.reliance.enabled:
        from safescale.experiments.reliance import run_reliance_stage

        run_reliance_stage(config, console=err)
    if detect:
        run_detection_stage(config, console=err)
    if report:
        from safescale.cli.report import print_report

        print_report(summary.run_dir, reuse=summary.answered == 0)
        if config.tracking is not None:  # after detection and the report: all of it
            from safescale.experiments.tracking import track_run

            for line in track_run(summary.run_dir):
                err.print(f"[green]tracking[/]: {line}")


def _run_on_ray(config: ExperimentConfig, *, fresh: bool, address: str | None) -> RaySummary:
    """The sweep on Ray (a local instance unless ``address`` names a cluster)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        _fail("--backend ray needs Ray: pip install 'safescale[ray]'")
    from safescale.experiments.ray_backend import WorkerLostError, run_experiment_ray

    try:
        summary = run_experiment_ray(config, fresh=fresh, address=address, console=err)
    except WorkerLostError as exc:
        _fail(str(exc))
    if summary.workers_started:
        err.print(
            f"[green]ray[/]: {summary.shards} shards on {summary.workers_started} workers "
            f"({summary.workers_lost} lost, {summary.shards_retried} shards retried)"
        )
    if summary.stage_shards:
        records = summary.stage_records
        done = ", ".join(
            f"{stage.replace('_', ' ')} {records.get(stage, 0)} records in {n} shards"
            for stage, n in summary.stage_shards.items()
        )
        err.print(f"[green]ray[/]: stages on the workers: {done}")
    if summary.commit_rate is not None:
        err.print(
            f"[green]ray[/]: the driver committed {summary.records_committed} records in "
            f"{summary.commit_seconds:.2f} s ({summary.commit_rate:.0f} records/s); shard "
            f"results {summary.bytes_received / 1e6:.2f} MB"
        )
    return summary


def demo() -> None:
    """The main job on the embedded defaults: `run demo` then the report."""
    run_and_report("demo")


def trace(
    run_dir: Path = typer.Argument(..., help="run directory"),
    item: str = typer.Argument(..., help="item id"),
    condition: str | None = typer.Option(None, "--condition", "-c"),
    model: str | None = typer.Option(None, "--model", "-m"),
) -> None:
    """Print the step timeline of an item (every matching condition), with the
    attributed failure step highlighted."""
    from safescale.rundir import RunDir

    reader = RunDir(run_dir)
    manifest = reader.manifest()
    responses = reader.responses()
    steps = reader.steps()
    attributions = reader.attribution()
    corpora = reader.corpora(manifest)
    from safescale.agents import render_trace

    chosen = [
        r
        for r in responses
        if r.item == item
        and (condition is None or r.condition == condition)
        and (model is None or r.model == model)
    ]
    if not chosen:
        _fail(
            f"no response for item {item!r}"
            + (f" under {condition!r}" if condition else "")
            + f" in {run_dir}"
        )
    corpus = next(c for c in corpora.values() if item in c.items_by_id)
    for r in chosen:
        key = r.key
        own = [s for s in steps if s.key == key]
        att = next((a for a in attributions if a.key == key), None)
        console.print(render_trace(corpus.item(item), r, own, att))


def replay(
    run_dir: Path = typer.Argument(..., help="run directory"),
    item: str = typer.Argument(..., help="item id"),
    condition: str = typer.Option(..., "--condition", "-c"),
    drop_passage: list[str] = typer.Option(..., "--drop-passage", help="passage id (repeatable)"),
    model: str | None = typer.Option(None, "--model", "-m"),
    import_path: list[Path] = typer.Option(
        [],
        "--import-path",
        help="directory searched first for import-path conditions (repeatable; default: "
        "the run config's import_path)",
    ),
) -> None:
    """Fork the item's thread after its evidence step without the given passage(s),
    re-run only the downstream nodes, and print old vs new answer."""
    from safescale.experiments.replay import replay_item

    try:
        result = replay_item(
            run_dir, item, condition, drop_passage, model=model, import_path=import_path
        )
    except (ValueError, RuntimeError, KeyError) as exc:
        _fail(str(exc))
    from safescale.agents import render_trace

    console.print(render_trace(result.item, result.new, result.new_steps))
    console.print(
        f"forked after step {result.fork_step}; dropped {', '.join(drop_passage)}\n"
        f"old answer: [bold]{result.old.chosen}[/] {result.item.options[result.old.chosen]}\n"
        f"new answer: [bold]{result.new.chosen}[/] {result.item.options[result.new.chosen]}"
        + ("  [yellow](changed)[/]" if result.old.chosen != result.new.chosen else "  (same)")
        + f"\nrecorded in {Path(run_dir) / 'replays.jsonl'} (`safescale view` shows it next "
        "to the original)"
    )


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)
    app.command("trace")(trace)
    app.command("replay")(replay)
