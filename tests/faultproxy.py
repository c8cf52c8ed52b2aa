"""A loopback reverse proxy in front of moto that answers some requests with S3 faults.

A ``fraction`` of requests get ``500 InternalError`` or ``503 SlowDown`` instead of
being forwarded. Which ones is deterministic under ``seed``: the n-th request with a
given method and path fails or not by a hash of (seed, method, path, n), whatever
the threads' timing; random suffixes of temporary names are ignored. Writes
(PUT, POST, DELETE) to paths matching ``fail_writes`` always fail, to stop a run
at a chosen step.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
               "expect", "host", "content-length"}
RANDOM_SUFFIX = re.compile(r"\.(tmp|probe)-[0-9a-f]{8}")
FAULTS = {500: ("InternalError", "We encountered an internal error. Please try again."),
          503: ("SlowDown", "Please reduce your request rate.")}


class FaultProxy:
    """``with FaultProxy(upstream, fraction, seed) as proxy:`` then point clients at ``proxy.url``."""

    def __init__(self, upstream: str, fraction: float = 0.0, seed: int = 0, fail_writes: str | None = None):
        self.upstream = urlsplit(upstream)
        self.fraction, self.seed = fraction, seed
        self.fail_writes = re.compile(fail_writes) if fail_writes else None
        self.requests, self.faults = 0, Counter()
        self._seen: Counter = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fault(self, method: str, path: str) -> int | None:
        """The status to answer instead of forwarding, or None to forward."""
        key = f"{method} {RANDOM_SUFFIX.sub('', path)}"
        with self._lock:
            n = self._seen[key]
            self._seen[key] += 1
            self.requests += 1
        if self.fail_writes and method in ("PUT", "POST", "DELETE") and self.fail_writes.search(path):
            status = 500
        else:
            digest = hashlib.sha256(f"{self.seed}\0{key}\0{n}".encode()).digest()
            if int.from_bytes(digest[:8], "big") >= self.fraction * 2**64:
                return None
            status = 503 if digest[8] & 1 else 500
        with self._lock:
            self.faults[status] += 1
        return status


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - http.server's naming
        try:
            self._relay()
        except ConnectionError:  # the client gave up on this request (e.g. a sibling upload failed)
            self.close_connection = True

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def log_message(self, *args) -> None:
        """Quiet: the tests count requests instead."""

    def _relay(self) -> None:
        body = self._body()
        proxy: FaultProxy = self.server.proxy
        status = proxy.fault(self.command, self.path)
        if status is not None:
            code, message = FAULTS[status]
            xml = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
            self._answer(status, [("Content-Type", "application/xml")], xml.encode())
            return
        upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_HEADERS]
            length = response.getheader("Content-Length") if self.command == "HEAD" else None
            self._answer(response.status, kept, data, length)
        finally:
            upstream.close()

    def _answer(self, status: int, headers: list, data: bytes, length: str | None = None) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", length if length is not None else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))
