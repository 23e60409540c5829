"""A loopback HTTP proxy that forwards to one upstream server and misbehaves on purpose.

Put it in front of moto's S3 server to get what object storage does on a bad day: 500/503
answers, connections closed before an answer, requests that took effect but whose answer
was lost, and slow answers. Standard library only; one thread per connection.
"""
from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

# "500"/"503": an S3 error answer, the request never reaches the server.
# "reset": the connection closes with no answer, the request never reaches the server.
# "lost": the server does the request (a PUT lands), then the connection closes with no answer.
# "delay": the answer comes, late.
FAULTS = ("500", "503", "reset", "lost", "delay")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authenticate", "proxy-authorization", "server", "date"}
ERROR_CODES = {500: "InternalError", 503: "ServiceUnavailable"}


class FaultProxy:
    """`FaultProxy(upstream_port, rate=0.2).start()`; `.url` is the endpoint to give clients.

    `rate` and `kinds` may be changed while it runs (e.g. an outage in the middle of a job).
    `counts` tells how many requests passed, how many faults of each kind were injected and how
    many body bytes went back to clients (`bytes_out`).
    """

    def __init__(self, upstream_port: int, rate: float = 0.0, kinds: tuple[str, ...] = FAULTS,
                 delay_seconds: float = 0.3, seed: int = 0, upstream_host: str = "127.0.0.1"):
        unknown = set(kinds) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        self.upstream = (upstream_host, upstream_port)
        self.rate, self.kinds, self.delay_seconds = rate, tuple(kinds), delay_seconds
        self.counts: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the proxy first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FaultProxy":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def draw(self) -> Optional[str]:
        """The fault for the next request, or None to pass it through untouched."""
        with self._lock:
            self.counts["requests"] += 1
            if not self.kinds or self._random.random() >= self.rate:
                return None
            fault = self._random.choice(self.kinds)
            self.counts[fault] += 1
            return fault

    @property
    def faults(self) -> int:
        return sum(n for kind, n in self.counts.items() if kind in FAULTS)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._handle()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _handle(self) -> None:
        body = self._read_body()
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        fault = proxy.draw()
        if fault in ("500", "503"):
            return self._send_error(int(fault))
        if fault == "reset":
            self.close_connection = True
            return None
        if fault == "delay":
            time.sleep(proxy.delay_seconds)
        status, headers, data = self._forward(proxy.upstream, body)
        if fault == "lost":
            self.close_connection = True
            return None
        self._reply(status, headers, data)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _forward(self, upstream: tuple[str, int], body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(*upstream, timeout=120)
        try:
            conn.request(self.command, self.path, body=body or None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, response.getheaders(), data
        finally:
            conn.close()

    def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        upstream_length = next((v for k, v in headers if k.lower() == "content-length"), None)
        length = upstream_length if self.command == "HEAD" and upstream_length else str(len(data))
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
            proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
            with proxy._lock:
                proxy.counts["bytes_out"] += len(data)  # what clients downloaded (a header read's range)

    def _send_error(self, status: int) -> None:
        code = ERROR_CODES.get(status, "InternalError")
        data = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>injected fault</Message><RequestId>faultproxy</RequestId></Error>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
