"""The scaling section of a report: tables, verdict sentences and the per-axis figure,
all rendered from ``metrics.json["scaling"]`` (:mod:`safescale.experiments.scaling`).

* :func:`scaling_tables` — one table per axis the run varies: per curve its values,
  items, the slopes per doubling of accuracy, high-risk error and unsafe answers with
  95 % CIs, the disentanglement difference (accuracy vs the high-risk-free rate) with
  its minimum detectable difference, the verdict, the items that turn unsafe as the
  axis grows and the concentration of high-risk errors on the worst items;
* :func:`scaling_verdicts` — the verdict sentences, one per curve, and why an axis (or
  a condition on it) has no slope;
* :func:`scaling_figure` / :func:`plot_scaling_axes` — one panel per axis (× model and
  corpus): accuracy and high-risk error with their CI bands against the axis, on a log2
  axis where the slope is per doubling (``plots/scaling_axes.png``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safescale.experiments.report import TextTable, format_interval, rich_table
from safescale.experiments.scaling import AXIS_NAMES

__all__ = [
    "plot_scaling_axes",
    "print_scaling",
    "scaling_figure",
    "scaling_markdown",
    "scaling_tables",
    "scaling_verdicts",
]

_VERDICT_WORDS = {
    "differ": "scale differently",
    "together": "scale together",
    "indistinguishable": "not distinguishable",
    "no_change": "no change",
    "too_few": "too few to measure",
}
_MAX_ITEMS = 8


def _section(metrics: Mapping[str, Any]) -> Mapping[str, Any]:
    return metrics.get("scaling") or {}


def curve_label(curve: Mapping[str, Any]) -> str:
    """A curve's identity in words: model (except on the model-size axis), corpus,
    condition and the other settings the run varies."""
    parts = [] if curve["axis"] == "model_size" else [str(curve.get("model"))]
    parts += [str(curve["corpus"]), str(curve["condition"])]
    if curve.get("fixed"):
        parts.append(str(curve["fixed"]))
    return " · ".join(parts)


def _listed(ids: Sequence[str]) -> str:
    more = f" … (+{len(ids) - _MAX_ITEMS})" if len(ids) > _MAX_ITEMS else ""
    return ", ".join(ids[:_MAX_ITEMS]) + more if ids else "–"


def _share(value: Any) -> str:
    return "–" if value is None or not math.isfinite(float(value)) else f"{100 * value:.0f}%"


def scaling_tables(metrics: Mapping[str, Any]) -> list[TextTable]:
    """One table per varied axis with two or more values on some curve."""
    section = _section(metrics)
    curves = section.get("curves") or []
    tables = []
    for info in section.get("axes") or []:
        mine = [c for c in curves if c["axis"] == info["axis"]]
        if not mine:
            continue
        rows = []
        for c in mine:
            slopes = c.get("slopes") or {}
            diff = (c.get("differences") or {}).get("high_risk_error") or {}
            flips = c.get("flips") or {}
            conc = c.get("concentration") or {}
            mde = diff.get("mde")
            rows.append(
                [
                    curve_label(c),
                    " / ".join(p["value"] for p in c["points"]),
                    str(c.get("n_items", 0)),
                    format_interval(slopes.get("accuracy"), signed=True),
                    format_interval(slopes.get("high_risk_error"), signed=True),
                    format_interval(slopes.get("unsafe_answer"), signed=True),
                    format_interval(diff.get("difference"), signed=True),
                    "–"
                    if mde is None
                    or not math.isfinite(mde)
                    or diff.get("verdict_code") in ("no_change", "too_few")
                    else f"{100 * mde:.1f} pp",
                    _VERDICT_WORDS.get(diff.get("verdict_code"), c.get("reason", "–")),
                    str(len(flips.get("safe_to_unsafe") or [])),
                    _share(conc.get("share_in_worst")),
                ]
            )
        per = "per doubling" if info.get("scale") == "log2" else "per added passage"
        fraction = next(
            (c["concentration"]["worst_fraction"] for c in mine if c.get("concentration")), 0.2
        )
        tables.append(
            TextTable(
                f"Scaling — {info['name']} ({per})",
                (
                    "curve" if info["axis"] != "model_size" else "corpus · condition",
                    "values",
                    "items",
                    f"Δ accuracy {per}",
                    f"Δ high-risk {per}",
                    f"Δ unsafe {per}",
                    "D = Δacc − Δ(1 − high-risk)",
                    "MDE of D",
                    "verdict",
                    "safe → unsafe",
                    f"high-risk on worst {100 * fraction:.0f}%",
                ),
                rows,
                note=None
                if tables
                else (
                    "Slopes: least-squares change of each rate (pp) per doubling of the axis "
                    "value (log2; the conflict dose per added passage) over the items "
                    "answered at every value, 95 % percentile bootstrap CI resampling "
                    f"{_unit_text(section)}. D: the accuracy slope minus the slope of the "
                    "high-risk-free rate on the same replicates (D > 0: accuracy gains more "
                    "than safety); 'scale differently' when its CI excludes 0, else the MDE "
                    "is the smallest D detectable at 80 % power. safe → unsafe: items safe "
                    "at the smallest value and unsafe or high-risk at the largest."
                ),
            )
        )
    return tables


def _unit_text(section: Mapping[str, Any]) -> str:
    return "evidence_id groups" if section.get("unit") == "evidence_id" else "items"


def scaling_verdicts(metrics: Mapping[str, Any]) -> list[str]:
    """The plain sentences: per axis why it has no slope (when it has none), which
    conditions it did not vary, and per curve the verdict for high-risk error, then
    the items that turned unsafe and the items with a high-risk error at every value."""
    section = _section(metrics)
    curves = section.get("curves") or []
    out = []
    for info in section.get("axes") or []:
        name = info["name"]
        if info.get("reason"):
            out.append(f"{name[0].upper()}{name[1:]}: {info['reason']}.")
            continue
        for note in info.get("not_varied") or []:
            out.append(f"{name[0].upper()}{name[1:]}: {note['reason']}.")
        for c in (c for c in curves if c["axis"] == info["axis"]):
            label = curve_label(c)
            diff = (c.get("differences") or {}).get("high_risk_error")
            if diff is None:
                out.append(f"{name} · {label}: no slope ({c.get('reason', 'not measured')}).")
                continue
            text = f"{name} · {label}: {diff['verdict']}."
            flips = c.get("flips") or {}
            turned = [f["item"] for f in flips.get("safe_to_unsafe") or []]
            if turned:
                text += f" Safe at {flips['from']} but unsafe at {flips['to']}: {_listed(turned)}."
            persistent = (c.get("concentration") or {}).get("persistent") or []
            if persistent:
                text += f" High-risk at every value: {_listed(persistent)}."
            out.append(text)
    return out


def scaling_markdown(metrics: Mapping[str, Any]) -> list[str]:
    """The ``## Scaling`` part of ``report.md`` (nothing for a run without the section)."""
    section = _section(metrics)
    if not section.get("axes"):
        return []
    varied = [a["name"] for a in section["axes"] if a.get("varied")]
    parts = [
        "## Scaling: do safety and accuracy scale differently?",
        "",
        f"Axes the run varies: {', '.join(varied) or 'none'}.",
        "",
    ]
    parts += [t.to_markdown() for t in scaling_tables(metrics)]
    verdicts = scaling_verdicts(metrics)
    if verdicts:
        parts += ["### Verdicts", ""] + [f"- {v}" for v in verdicts] + [""]
    return parts


def print_scaling(console: Any, metrics: Mapping[str, Any]) -> None:
    """Print the scaling tables and verdict sentences (``safescale report``)."""
    for table in scaling_tables(metrics):
        console.print(rich_table(table))
    for verdict in scaling_verdicts(metrics):
        console.print(verdict)


# ---------------------------------------------------------------------------- figure


def _panels(section: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], list[Mapping[str, Any]]]]:
    """Per axis × model (not on the model-size axis) × corpus: the curves of the
    settings most conditions share (the base of the other axes)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for c in section.get("curves") or []:
        if not c.get("slopes"):
            continue
        model = None if c["axis"] == "model_size" else c.get("model")
        groups.setdefault((c["axis"], model, c["corpus"]), []).append(c)
    axes = {a["axis"]: a for a in section.get("axes") or []}
    out = []
    for (axis, _, _), mine in groups.items():
        by_fixed: dict[str, list[Mapping[str, Any]]] = {}
        for c in mine:
            by_fixed.setdefault(c.get("fixed") or "", []).append(c)
        fixed = max(by_fixed, key=lambda f: (len(by_fixed[f]), -list(by_fixed).index(f)))
        out.append((axes[axis], by_fixed[fixed]))
    return out


def scaling_figure(metrics: Mapping[str, Any]) -> Any | None:
    """The per-axis scaling figure (not saved); None when no curve has a slope."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from safescale.experiments.plots import RATE_LIMITS

    panels = _panels(_section(metrics))
    if not panels:
        return None
    cols = min(len(panels), 2)
    rows = math.ceil(len(panels) / cols)
    fig, grid = plt.subplots(rows, cols, figsize=(6.0 * cols, 4.4 * rows), squeeze=False)
    flat = list(grid.ravel())
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (info, curves) in zip(flat, panels, strict=False):
        log2 = info.get("scale") == "log2"
        for k, c in enumerate(curves):
            color = plt.cm.tab10(k % 10)
            xs = np.array([p["amount"] for p in c["points"]], dtype=float)
            for metric, style in (("accuracy", "-"), ("high_risk_error", "--")):
                ests = [p["metrics"][metric] for p in c["points"]]
                y = np.array([100 * _num(e.get("value")) for e in ests])
                lo = np.array([100 * _num(e.get("lo")) for e in ests])
                hi = np.array([100 * _num(e.get("hi")) for e in ests])
                slope = (c.get("slopes") or {}).get(metric) or {}
                label = (
                    f"{c['condition']} {'accuracy' if metric == 'accuracy' else 'high-risk'}"
                    f" ({format_interval(slope, signed=True)})"
                )
                ax.plot(xs, y, style, marker="o", color=color, label=label)
                ax.fill_between(xs, lo, hi, color=color, alpha=0.12, linewidth=0)
        first = curves[0]
        if log2:
            ax.set_xscale("log", base=2)
        ticks = [p["amount"] for p in first["points"]]
        labels = [
            f"max\n({p['amount']:g})" if p["value"] == "max" else p["value"]
            for p in first["points"]
        ]
        if info["axis"] == "model_size":
            labels = [f"{m}\n{_params(a)}" for m, a in (info.get("amounts") or {}).items()]
            ticks = list((info.get("amounts") or {}).values())
        ax.set_xticks(ticks, labels, fontsize=7)
        ax.minorticks_off()
        ax.set_ylim(*RATE_LIMITS)
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("rate (%)")
        ax.set_xlabel(f"{AXIS_NAMES[info['axis']]}" + (" (log2 scale)" if log2 else ""))
        where = [] if info["axis"] == "model_size" else [str(first.get("model"))]
        where += [str(first["corpus"])] + ([str(first["fixed"])] if first.get("fixed") else [])
        n = max(int(c.get("n_items", 0)) for c in curves)
        ax.set_title(
            f"{AXIS_NAMES[info['axis']]} — {' · '.join(where)}\n"
            f"(n = {n} item{'' if n == 1 else 's'})",
            fontsize=8,
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    fig.suptitle(
        "Scaling per axis: accuracy (solid) and high-risk error (dashed), 95% bootstrap "
        "CI bands; slope per doubling in the legend",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (4.4 * rows)))
    return fig


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _params(amount: float) -> str:
    if amount >= 1e9:
        return f"{amount / 1e9:.1f}B"
    return f"{amount / 1e6:.0f}M"


def plot_scaling_axes(metrics: Mapping[str, Any], path: Path) -> Path | None:
    """Save :func:`scaling_figure` to ``path`` (None when there is nothing to draw)."""
    import matplotlib.pyplot as plt

    fig = scaling_figure(metrics)
    if fig is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
