"""Run viewer: a self-contained HTML page (or a loopback server) over a run directory.

Reads the run directory only through :func:`load_view_data`; never calls a model.
"""

from __future__ import annotations

from safescale.viewer.build import VIEW_DIR, render_page, write_view
from safescale.viewer.data import ViewData, load_view_data, option_probabilities
from safescale.viewer.server import ViewServer, ViewServerError

__all__ = [
    "VIEW_DIR",
    "ViewData",
    "ViewServer",
    "ViewServerError",
    "load_view_data",
    "option_probabilities",
    "render_page",
    "write_view",
]
