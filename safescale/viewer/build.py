"""The viewer page: HTML, CSS and JS package assets with the run's data inlined."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from safescale.rundir import atomic_write_text, output_dir
from safescale.viewer.data import ViewData, load_view_data

__all__ = ["VIEW_DIR", "render_page", "script_json", "write_view"]

VIEW_DIR = "view"
_ASSETS = ("viewer.css", "viewer.js")


def _asset(name: str) -> str:
    return resources.files("safescale.viewer").joinpath("assets", name).read_text(encoding="utf-8")


def script_json(data: Any) -> str:
    """JSON safe inside a ``<script>`` element (no ``</``, no ``<!--``)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def render_page(view: ViewData, *, embed_details: bool = True) -> str:
    """The self-contained page of a run (no network access, works from file://).

    Args:
        view: the run's data.
        embed_details: embed every item's details and passages (the static page); when
            False the page fetches them from the server (``/api/item/<id>``).
    """
    payload = {
        "mode": "static" if embed_details else "serve",
        "index": view.index,
        "details": view.details if embed_details else None,
        "passages": view.passages if embed_details else None,
        "item_passages": view.item_passages if embed_details else None,
    }
    template = _asset("index.html")
    title = f"safescale · {view.index['run']['name']}"
    return (
        template.replace("{{TITLE}}", _html_escape(title))
        .replace("{{CSS}}", _asset("viewer.css"))
        .replace("{{DATA}}", script_json(payload))
        .replace("{{JS}}", _asset("viewer.js"))
    )


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_view(run_dir: str | Path, view: ViewData | None = None) -> Path:
    """Write ``RUN_DIR/view/index.html`` (static, everything embedded); return its path."""
    run_dir = Path(run_dir)
    view = view or load_view_data(run_dir)
    path = output_dir(run_dir, VIEW_DIR) / "index.html"  # never through a symlink
    atomic_write_text(path, render_page(view, embed_details=True))
    path.chmod(0o644)  # a file to share: readable like any other output of the run
    return path
