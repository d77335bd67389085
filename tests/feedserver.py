"""A loopback HTTP server for feeds, with routes that misbehave on purpose."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Route:
    """What one path answers."""

    body: bytes = b""
    content_type: str = "application/rss+xml; charset=utf-8"
    status: int = 200
    etag: str | None = None
    last_modified: str | None = None
    delay: float = 0.0            # seconds before answering
    drip: float = 0.0             # seconds between chunks of 1 byte…
    redirect_to: str | None = None
    endless: bool = False         # stream without end (a huge body)
    headers: dict[str, str] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops SYNs under 10 concurrent fetches, and the
    # client's retransmit a second later would show up as a slow feed.
    request_queue_size = 128
    daemon_threads = True


class FeedServer:
    """Serve routes on 127.0.0.1:0 (or another loopback ``host``); records every
    request's headers. Over HTTPS when given a certificate and its key (PEM files)."""

    def __init__(self, tls: tuple[Path, Path] | None = None, host: str = "127.0.0.1") -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []  # GETs: path, headers
        self.seen: list[tuple[str, str]] = []  # every request: method, path
        self.httpd = _Server((host, 0), self._handler())
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.port: int = self.httpd.server_address[1]
        self.base = f"{scheme}://{host}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path: str, route: Route | None = None, **kwargs: object) -> str:
        """Serve ``route`` at ``path``; return the full URL."""
        self.routes[path] = route or Route(**kwargs)  # type: ignore[arg-type]
        return self.base + path

    def url(self, path: str) -> str:
        return self.base + path

    def hits(self, path: str) -> list[dict[str, str]]:
        return [h for p, h in self.requests if p == path]

    def close(self) -> None:
        # shutdown() waits for serve_forever to notice; bounded, so a wedged server
        # thread (seen once under heavy load) cannot hang the whole run.
        stopper = threading.Thread(target=self.httpd.shutdown, daemon=True)
        stopper.start()
        stopper.join(timeout=10)
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self) -> None:
                server.seen.append(("HEAD", self.path))
                self.send_error(501)  # as without this method: checkers fall back to GET

            def do_GET(self) -> None:  # noqa: PLR0912 - one branch per way a test feed answers
                server.seen.append(("GET", self.path))
                server.requests.append((self.path, dict(self.headers)))
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                if route.delay:
                    time.sleep(route.delay)
                if route.redirect_to:
                    self.send_response(302)
                    self.send_header("Location", route.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if route.etag and self.headers.get("If-None-Match") == route.etag:
                    self.send_response(304)
                    self.send_header("ETag", route.etag)
                    self.end_headers()
                    return
                if (route.last_modified
                        and self.headers.get("If-Modified-Since") == route.last_modified):
                    self.send_response(304)
                    self.end_headers()
                    return
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                if route.etag:
                    self.send_header("ETag", route.etag)
                if route.last_modified:
                    self.send_header("Last-Modified", route.last_modified)
                for k, v in route.headers.items():
                    self.send_header(k, v)
                try:
                    if route.endless:
                        self.send_header("Transfer-Encoding", "chunked")
                        self.end_headers()
                        chunk = b"<rss>" + b"x" * 65536
                        for _ in range(100_000):
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        return
                    if route.drip:
                        self.send_header("Content-Length", str(len(route.body)))
                        self.end_headers()
                        for byte in route.body:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(route.drip)
                        return
                    self.send_header("Content-Length", str(len(route.body)))
                    self.end_headers()
                    self.wfile.write(route.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


def rss(items: list[dict[str, object]], *, title: str = "Test feed",
        link: str = "http://127.0.0.1/", encoding: str = "utf-8") -> bytes:
    """A small RSS 2.0 document; items take title, link, guid, date, tags, summary."""
    parts = [f'<?xml version="1.0" encoding="{encoding}"?>',
             '<rss version="2.0"><channel>', f"<title>{title}</title>",
             f"<link>{link}</link><description>d</description>"]
    for item in items:
        parts.append("<item>")
        for key in ("title", "link", "guid"):
            if key in item:
                parts.append(f"<{key}>{item[key]}</{key}>")
        if "date" in item:
            parts.append(f"<pubDate>{item['date']}</pubDate>")
        for tag in item.get("tags", []):  # type: ignore[attr-defined]
            parts.append(f"<category>{tag}</category>")
        if "summary" in item:
            parts.append(f"<description><![CDATA[{item['summary']}]]></description>")
        parts.append("</item>")
    parts.append("</channel></rss>")
    return "\n".join(parts).encode(encoding)


Handler = Callable[..., None]
