"""The service's HTTP face: /metrics for Prometheus, /healthz and /readyz for orchestrators, and the live
status page (/ and /status, with its data at /api/status?q=&limit=&offset=, one page of stations) so the main
job is watchable without Grafana."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

STATUS_PAGE = Path(__file__).resolve().parent / "static" / "status.html"


class HttpServer:
    """Runs in a daemon thread; the callables are read per request so they always see the live service."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, healthy: Callable[[], bool],
                 ready: Callable[[], bool], status: Callable[[dict[str, str]], dict]):
        handler = _handler(registry, healthy, ready, status)
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        host = self.server.server_address[0]
        return f"http://{host}:{self.port}"

    def start(self) -> HttpServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(registry, healthy, ready, status) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path, _, query = self.path.partition("?")
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = healthy()
                self._send(200 if ok else 503, b"ok\n" if ok else b"service loop stalled\n", "text/plain")
            elif path == "/readyz":
                ok = ready()
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain")
            elif path == "/api/status":
                params = {k: v[-1] for k, v in parse_qs(query).items()}
                try:
                    body = orjson.dumps(status(params), option=orjson.OPT_SERIALIZE_NUMPY)
                except ValueError as exc:  # a bad ?limit= or ?offset=
                    self._send(400, f"{exc}\n".encode(), "text/plain")
                    return
                self._send(200, body, "application/json")
            elif path in ("/", "/status"):
                if STATUS_PAGE.exists():
                    self._send(200, STATUS_PAGE.read_bytes(), "text/html; charset=utf-8")
                else:
                    self._send(500, b"status page missing from the installation\n", "text/plain")
            else:
                self._send(404, b"not found: try /status, /metrics, /healthz, /readyz\n", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # keep the terminal for the live line
            pass

    return Handler
