"""A loopback HTTP server for the viewer: the page plus item details on demand.

It serves only from memory, under an unguessable token path printed with its URL
(``http://127.0.0.1:PORT/<token>/``): ``/<token>/`` (the page, details not embedded),
``/<token>/api/item/<id>`` (one item's details with its passages, JSON) and
``/<token>/api/search?q=...`` (ids of the items whose question, options or passages
contain the text). Any other path is a 404; nothing is read from disk after start-up.

A request whose ``Host`` header is not the server's own loopback address and port
(``127.0.0.1:PORT`` or ``localhost:PORT``) is refused (403) before its path is looked
at: a web page that rebinds its own DNS name to 127.0.0.1 sends its own name as the
Host, so it cannot read the run even once it has found the port (and it would still
need the token).
"""

from __future__ import annotations

import errno
import json
import secrets
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from safescale.viewer.build import render_page
from safescale.viewer.data import ViewData

__all__ = ["ViewServer", "ViewServerError"]

HOST = "127.0.0.1"


class ViewServerError(ValueError):
    """The viewer cannot serve on the port asked for (out of range, in use)."""


class ViewServer:
    """Serves one run's viewer on 127.0.0.1 at a free port.

    Args:
        view: the run's data (from :func:`safescale.viewer.load_view_data`).
        port: the port (0: a free one, chosen by the OS).

    Raises:
        ViewServerError: ``port`` is not in 0..65535, or cannot be bound (in use, or
            privileged).
    """

    def __init__(self, view: ViewData, port: int = 0) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ViewServerError(f"--port: {port!r} is not a port (0..65535; 0: a free one)")
        self.view = view
        #: the path prefix every request must carry (printed with the URL only).
        self.token = secrets.token_urlsafe(18)
        self._page = render_page(view, embed_details=False).encode("utf-8")
        self._haystacks = _haystacks(view)
        handler = _handler(self)
        try:
            self._httpd = ThreadingHTTPServer((HOST, port), handler)
        except OSError as error:
            why = (
                "is in use (pick another, or --port 0 for a free one)"
                if error.errno == errno.EADDRINUSE
                else f"cannot be bound: {error.strerror or error}"
            )
            raise ViewServerError(f"--port: {port} on {HOST} {why}") from None
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port served on."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The page's address (``http://127.0.0.1:PORT/<token>/``)."""
        return f"http://{HOST}:{self.port}/{self.token}/"

    def allowed_host(self, host: str | None) -> bool:
        """Whether a request's ``Host`` header names this server (its loopback address
        or ``localhost``, with its port)."""
        if not host:
            return False
        return host.strip().lower() in {f"{HOST}:{self.port}", f"localhost:{self.port}"}

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

    def respond(self, path: str, host: str | None = None) -> tuple[int, str, bytes]:
        """(status, content type, body) for a request with this path and ``Host``
        header (what the handler sends): 403 for a foreign or missing Host, 404 for a
        path outside ``/<token>/``."""
        if not self.allowed_host(host):
            return _json(
                HTTPStatus.FORBIDDEN,
                {"error": f"Host {host!r} is not this viewer ({HOST}:{self.port})"},
            )
        parts = urlsplit(path)
        prefix = f"/{self.token}"
        if not (parts.path == prefix or parts.path.startswith(prefix + "/")):
            return _json(HTTPStatus.NOT_FOUND, {"error": "not found"})
        route = parts.path[len(prefix) :] or "/"
        if route == "/" and parts.path == prefix:
            return _json(HTTPStatus.NOT_FOUND, {"error": f"the viewer is at {prefix}/"})
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
            status, content_type, body = server.respond(self.path, self.headers.get("Host"))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Referrer-Policy", "no-referrer")  # the token stays here
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler
