"""``safescale plan``: how many items (and evidence clusters) a paired comparison needs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["pilot_plans", "register"]


def pilot_plans(
    run_dir: Path,
    a: str,
    b: str,
    *,
    metric: str = "accuracy",
    effect: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    icc: float | None = None,
) -> list[dict[str, Any]]:
    """Sample-size plans from a pilot run's paired comparisons of ``a`` and ``b``.

    The discordance, the mean evidence-cluster size and the ICC come from the run's
    comparison (``metrics.json``, recomputed when absent); the effect is ``effect`` or
    else the observed difference.

    Returns:
        One dict per model × corpus × budget × dose comparing ``a`` and ``b``: the
        comparison's keys, ``observed``, ``discordance`` and ``plan`` (a
        :class:`~safescale.statistics.power.SampleSizePlan` dict) or ``problem``.

    Raises:
        UserError: the run compares neither ``a - b`` nor ``b - a``, or ``metric`` is
            not one with a power analysis.
    """
    from safescale.cli import UserError
    from safescale.rundir import METRICS_FILE
    from safescale.statistics.metrics import read_metrics, write_metrics
    from safescale.statistics.power import POWER_METRICS, plan_sample_size

    if metric not in POWER_METRICS:
        raise UserError(f"--metric: {metric!r} is not one of {sorted(POWER_METRICS)}")
    metrics = (
        read_metrics(run_dir) if (run_dir / METRICS_FILE).is_file() else write_metrics(run_dir)
    )
    found = [
        c
        for c in metrics["comparisons"]
        if c["kind"] == "condition" and {c["a"], c["b"]} == {a, b} and c.get("power")
    ]
    if not found:
        pairs = sorted({f"{c['a']} - {c['b']}" for c in metrics["comparisons"]
                        if c["kind"] == "condition"})  # fmt: skip
        raise UserError(
            f"{run_dir / METRICS_FILE}: comparisons: no paired comparison of {a} and {b} "
            f"(the run compares: {', '.join(pairs) or 'nothing'}; add the pair to "
            "metrics.comparisons and run `safescale report`)"
        )
    out = []
    for c in found:
        entry = c["power"][metric]
        sign = 1.0 if c["a"] == a else -1.0
        observed = sign * float(entry["observed"])
        target = abs(effect) if effect is not None else abs(observed)
        row: dict[str, Any] = {
            "model": c.get("model"),
            "corpus": c.get("corpus"),
            "samples_budget": c.get("samples_budget"),
            "conflict_dose": c.get("conflict_dose", 0),
            "context_budget": c.get("context_budget"),
            "retrieval_k": c.get("retrieval_k"),
            "observed": observed,
            "discordance": entry["discordance"],
            "n": entry["n"],
        }
        cluster_size = entry["n"] / max(entry["n_clusters"], 1)
        try:
            row["plan"] = plan_sample_size(
                target,
                entry["discordance"],
                alpha=alpha,
                power=power,
                cluster_size=max(cluster_size, 1.0),
                icc=float(entry["icc"]) if icc is None else icc,
            ).to_dict()
        except ValueError as error:
            row["problem"] = str(error)
        out.append(row)
    return out


def _render(plans: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="Items needed per comparison", caption_justify="left")
    for col in ("comparison", "observed Δ", "discordance", "pilot n", "effect", "items",
                "deff", "items (clustered)", "evidence clusters"):  # fmt: skip
        table.add_column(col, justify="right" if col != "comparison" else "left")
    several_budgets = len({r.get("context_budget") for r in plans}) > 1
    several_k = len({r.get("retrieval_k") for r in plans}) > 1
    for row in plans:
        name = f"{row['model']} · {row['corpus']} · {row['samples_budget']}x"
        name += f" · dose {row['conflict_dose']}"
        if several_budgets:
            name += f" · context {row.get('context_budget') or 'max'}"
        if several_k:
            name += f" · k {row.get('retrieval_k')}"
        head = [name, f"{100 * row['observed']:+.1f} pp", f"{100 * row['discordance']:.1f}%",
                str(row["n"])]  # fmt: skip
        if "plan" not in row:
            table.add_row(*head, row["problem"], "–", "–", "–", "–")
            continue
        p = row["plan"]
        table.add_row(
            *head,
            f"{100 * p['effect']:.1f} pp",
            str(p["items"]),
            f"{p['design_effect']:.2f}",
            str(p["items_clustered"]),
            str(p["clusters"]),
        )
    console.print(table)


def _finite(name: str, value: float | None) -> None:
    from safescale.cli import UserError

    if value is not None and not math.isfinite(value):
        raise UserError(f"plan: {name}: must be a finite number, got {value}")


def _plan_triage(
    console: Console,
    run_dir: Path | None,
    *,
    safe_share: float | None,
    target_recall: float,
    ba0: float,
    ba1: float | None,
    half_width: float | None,
    difference: float | None,
    discordance_safe: float,
    discordance_unsafe: float,
    alpha: float,
    power: float,
    cluster_size: float,
    icc: float | None,
) -> None:
    """``plan --triage``: from the options, or from a run's detection (its class mix,
    evidence-group size and flag ICC; its ECRT BA as the effect)."""
    from safescale.cli import UserError
    from safescale.detection.power import triage_plan

    for name, value in (("--safe-share", safe_share), ("--ba1", ba1), ("--half-width",
                        half_width), ("--difference", difference), ("--cluster-size",
                        cluster_size), ("--icc", icc)):  # fmt: skip
        _finite(name, value)
    if run_dir is not None:
        from safescale.rundir import RunDir

        reports = RunDir(run_dir).triage()
        if not reports:
            raise UserError(f"{run_dir}: no detection results (run `safescale detect train`)")
        for report in reports:
            p = report.power
            if not p:
                console.print(f"{report.backbone} · {report.corpus}: no power figures (one class)")
                continue
            console.print(f"{report.backbone} · {report.corpus}: {p['sentence']}", soft_wrap=True)
            ecrt = next((r for r in report.rows if r.get("method") == "ecrt"), None)
            observed = ((ecrt or {}).get("stage1_ci") or {}).get("s1_ba", {}).get("estimate")
            goal = {"half_width": half_width} if half_width else {"ba1": ba1 or observed}
            if difference:
                goal = {"difference": difference}
            if not any(v for v in goal.values()):
                continue
            try:
                plan = triage_plan(
                    safe_share=p["safe_share"],
                    target_recall=report.target_recall,
                    ba0=ba0,
                    discordance_safe=discordance_safe,
                    discordance_unsafe=discordance_unsafe,
                    alpha=alpha,
                    power=power,
                    cluster_size=max(float(p["cluster_size"]), 1.0),
                    icc=float(p["icc"]) if icc is None else icc,
                    **goal,
                )
            except ValueError as error:
                console.print(f"  {error}")
                continue
            console.print("  " + plan.sentence(), soft_wrap=True)
        return
    if safe_share is None:
        raise UserError("plan --triage: give --safe-share (or a RUN_DIR with detection)")
    if ba1 is None and half_width is None and difference is None:
        half_width = 0.05
    try:
        plan = triage_plan(
            safe_share=safe_share,
            target_recall=target_recall,
            ba0=ba0,
            ba1=ba1,
            half_width=half_width,
            difference=difference,
            discordance_safe=discordance_safe,
            discordance_unsafe=discordance_unsafe,
            alpha=alpha,
            power=power,
            cluster_size=cluster_size,
            icc=0.0 if icc is None else icc,
        )
    except ValueError as error:
        raise UserError(f"plan --triage: {error}") from None
    console.print(plan.sentence(), soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``plan`` command to the CLI."""

    @app.command("plan")
    def plan(
        run_dir: Annotated[
            Path | None,
            typer.Argument(help="pilot run directory to read the effect and discordance from"),
        ] = None,
        effect: Annotated[
            float | None, typer.Option(help="paired difference to detect (e.g. 0.05)")
        ] = None,
        discordance: Annotated[
            float | None,
            typer.Option(help="expected share of items whose outcome differs (e.g. 0.2)"),
        ] = None,
        power: Annotated[float, typer.Option(help="power 1 - beta")] = 0.8,
        alpha: Annotated[float, typer.Option(help="two-sided significance level")] = 0.05,
        cluster_size: Annotated[
            float, typer.Option(help="mean items per evidence cluster", min=1.0)
        ] = 1.0,
        icc: Annotated[
            float | None,
            typer.Option(help="intra-cluster correlation (default 0, or the pilot's)"),
        ] = None,
        a: Annotated[str, typer.Option("--a", help="condition A (pilot run)")] = ("clean_evidence"),
        b: Annotated[str, typer.Option("--b", help="condition B (pilot run)")] = "closed_book",
        metric: Annotated[str, typer.Option(help="metric of the comparison (pilot run)")] = (
            "accuracy"
        ),
        triage: Annotated[
            bool, typer.Option("--triage", help="size a triage (detection) study instead")
        ] = False,
        safe_share: Annotated[
            float | None, typer.Option(help="triage: share of safe responses (e.g. 0.092)")
        ] = None,
        target_recall: Annotated[float, typer.Option(help="triage: target unsafe recall")] = 0.95,
        ba0: Annotated[float, typer.Option(help="triage: the BA to tell apart from")] = 0.5,
        ba1: Annotated[float | None, typer.Option(help="triage: the BA to detect")] = None,
        half_width: Annotated[
            float | None, typer.Option(help="triage: wanted half-width of the BA interval")
        ] = None,
        difference: Annotated[
            float | None, typer.Option(help="triage: BA difference between two detectors")
        ] = None,
        discordance_safe: Annotated[
            float, typer.Option(help="triage: share of safe responses two detectors flag apart")
        ] = 0.3,
        discordance_unsafe: Annotated[
            float, typer.Option(help="triage: the same among unsafe responses")
        ] = 0.05,
    ) -> None:
        """Items (and evidence clusters) a paired comparison needs to detect an effect
        (McNemar test, Connor 1987 sample size; design effect 1 + (m - 1) icc); with
        --triage, the responses a triage study needs (Stage-1 BA)."""
        from safescale.cli import UserError

        console = Console()
        if triage:
            _plan_triage(
                console,
                run_dir,
                safe_share=safe_share,
                target_recall=target_recall,
                ba0=ba0,
                ba1=ba1,
                half_width=half_width,
                difference=difference,
                discordance_safe=discordance_safe,
                discordance_unsafe=discordance_unsafe,
                alpha=alpha,
                power=power,
                cluster_size=cluster_size,
                icc=icc,
            )
            return
        if run_dir is None:
            if effect is None or discordance is None:
                raise UserError("plan: give --effect and --discordance, or a pilot RUN_DIR")
            from safescale.statistics.power import plan_sample_size

            try:
                p = plan_sample_size(
                    effect,
                    discordance,
                    alpha=alpha,
                    power=power,
                    cluster_size=cluster_size,
                    icc=0.0 if icc is None else icc,
                )
            except ValueError as error:
                raise UserError(f"plan: {error}") from None
            console.print(
                f"To detect a paired difference of {100 * p.effect:.1f} pp with "
                f"{100 * p.discordance:.0f}% discordant items at {p.power:.0%} power "
                f"(two-sided alpha {p.alpha}): {p.items} items",
                soft_wrap=True,
            )
            if cluster_size > 1 or p.icc > 0:
                console.print(
                    f"With evidence clusters of {p.cluster_size:g} items and ICC {p.icc:g} "
                    f"(design effect {p.design_effect:.2f}): {p.items_clustered} items in "
                    f"{p.clusters} evidence clusters",
                    soft_wrap=True,
                )
            return
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: not a run directory")
        if discordance is not None:
            raise UserError("plan: --discordance comes from the pilot run; omit it with RUN_DIR")
        plans = pilot_plans(
            run_dir, a, b, metric=metric, effect=effect, alpha=alpha, power=power, icc=icc
        )
        _render(plans, console)
