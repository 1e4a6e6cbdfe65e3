"""A loopback HTTP server for the viewer: the page plus item details on demand.

It serves only from memory: ``/`` (the page, details not embedded),
``/api/item/<id>`` (one item's details with its passages, JSON) and
``/api/search?q=...`` (ids of the items whose question, options or passages contain
the text). Any other path is a 404; nothing is read from disk after start-up.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from safescale.viewer.build import render_page
from safescale.viewer.data import ViewData

__all__ = ["ViewServer"]

HOST = "127.0.0.1"


class ViewServer:
    """Serves one run's viewer on 127.0.0.1 at a free port.

    Args:
        view: the run's data (from :func:`safescale.viewer.load_view_data`).
        port: the port (0: a free one, chosen by the OS).
    """

    def __init__(self, view: ViewData, port: int = 0) -> None:
        self.view = view
        self._page = render_page(view, embed_details=False).encode("utf-8")
        self._haystacks = _haystacks(view)
        handler = _handler(self)
        self._httpd = ThreadingHTTPServer((HOST, port), handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address (``http://127.0.0.1:PORT/``)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def search(self, text: str) -> list[str]:
        """Ids of the items whose question, options or passages contain ``text``
        (case-insensitive)."""
        needle = text.lower()
        return [item_id for item_id, hay in self._haystacks.items() if needle in hay]

    def start(self) -> ViewServer:
        """Serve in a background thread; returns self."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted."""
        self._httpd.serve_forever()

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a request path (what the handler sends)."""
        parts = urlsplit(path)
        route = parts.path
        if route in ("/", "/index.html"):
            return HTTPStatus.OK, "text/html; charset=utf-8", self._page
        if route.startswith("/api/item/"):
            item_id = unquote(route[len("/api/item/") :])
            detail = self.view.item_detail(item_id, with_passages=True)
            if detail is None:
                return _json(HTTPStatus.NOT_FOUND, {"error": f"no item {item_id!r} in this run"})
            return _json(HTTPStatus.OK, detail)
        if route == "/api/search":
            query = parse_qs(parts.query).get("q", [""])[0]
            return _json(HTTPStatus.OK, {"items": self.search(query) if query else []})
        return _json(HTTPStatus.NOT_FOUND, {"error": "not found"})


def _json(status: int, data: object) -> tuple[int, str, bytes]:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return status, "application/json; charset=utf-8", body


def _haystacks(view: ViewData) -> dict[str, str]:
    out = {}
    for item in view.index["items"]:
        parts = [item["id"], item["question"], item.get("context") or "", *item["options"].values()]
        for pid in view.item_passages.get(item["id"], []):
            passage = view.passages.get(pid)
            if passage is not None:
                parts += [pid, passage["text"]]
        out[item["id"]] = "\n".join(parts).lower()
    return out


def _handler(server: ViewServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, content_type, body = server.respond(self.path)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler
