"""An HTTP proxy in front of the store that injects the faults of an operator's bad day.

`FaultProxy(upstream_url)` listens on a free loopback port and forwards every request to the
upstream store (VictoriaMetrics in tests and benchmarks) unchanged, except for the faults it is
told to inject, each switchable while traffic flows:

- `latency_s`: every request waits this long before it is forwarded (a slow store; requests wait
  side by side, up to `concurrency` at once if set, as an overloaded server serves them);
- `reject`: a regular expression (bytes); a write whose body holds a line matching it is refused
  whole with HTTP 400 and an InfluxDB-style message naming the first such line, and nothing of
  it is stored (the worst case: InfluxDB itself writes the good rows of a partial write);
- `hold()` / `release()`: requests wait (unanswered) until released: a store that hangs;
- `refuse(status)` / `accept()`: requests are answered with that status (e.g. 503) at once.

`stats` counts requests, rows forwarded and rows of refused bodies. Used by the gateway's fault
tests (tests/test_gateway_faults.py) and benchmarks (benchmarks/faults_gateway.py).
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

from simulators.servers import free_port

#: Longest a held request waits for `release()` before it is answered 503 anyway.
HOLD_LIMIT_S = 600.0
#: Headers passed on to the store (the rest are the proxy's business).
_FORWARDED = ("Content-Type", "Content-Encoding", "Authorization", "Accept", "User-Agent")


@dataclass
class ProxyStats:
    """What passed through the proxy so far."""

    requests: int = 0
    forwarded: int = 0
    rejected: int = 0
    refused: int = 0
    rows_forwarded: int = 0
    rows_rejected: int = 0


class FaultProxy:
    """A threaded HTTP proxy to `upstream` with switchable faults (see the module doc)."""

    def __init__(
        self,
        upstream: str,
        *,
        latency_s: float = 0.0,
        reject: bytes | None = None,
        concurrency: int | None = None,
        port: int | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.latency_s = latency_s
        self._reject = re.compile(reject, re.MULTILINE) if reject else None
        self._refuse_status: int | None = None
        self._released = threading.Event()
        self._released.set()
        self._stopping = threading.Event()
        self._slots = threading.Semaphore(concurrency) if concurrency else None
        self._lock = threading.Lock()
        self.stats = ProxyStats()
        self.port = port or free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ faults

    def set_reject(self, pattern: bytes | None) -> None:
        """Refuse (HTTP 400) every body with a line matching `pattern`; None: stop refusing."""
        self._reject = re.compile(pattern, re.MULTILINE) if pattern else None

    def hold(self) -> None:
        """Let requests wait unanswered until `release()`."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def refuse(self, status: int = 503) -> None:
        """Answer every request with `status` at once (the store is up but refuses)."""
        self._refuse_status = status

    def accept(self) -> None:
        self._refuse_status = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fault-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ serving

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    def _answer(self, body: bytes, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """Apply the faults to one request and forward it if none ends it."""
        self._count(requests=1)
        if not self._released.is_set():
            self._released.wait(HOLD_LIMIT_S)
        if self._stopping.is_set():
            return 503, {}, b""
        if self._refuse_status is not None:
            self._count(refused=1)
            return self._refuse_status, {"Content-Type": "application/json"}, json.dumps(
                {"code": "unavailable", "message": "injected fault: store refuses"}
            ).encode()
        if self.latency_s > 0:
            self._stopping.wait(self.latency_s)
        reject = self._reject
        if reject is not None and method == "POST" and (found := reject.search(body)):
            start = body.rfind(b"\n", 0, found.start()) + 1
            end = body.find(b"\n", found.end())
            line = body[start : end if end >= 0 else len(body)].decode(errors="replace")
            self._count(rejected=1, rows_rejected=body.count(b"\n"))
            message = f"unable to parse '{line}': injected fault (rows matching {reject.pattern!r})"
            return 400, {"Content-Type": "application/json"}, json.dumps(
                {"code": "invalid", "message": message}
            ).encode()
        conn = http.client.HTTPConnection(*self._upstream, timeout=60)
        try:
            conn.request(method, path, body=body if method in ("POST", "PUT") else None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            status = resp.status
            ctype = resp.getheader("Content-Type")
        finally:
            conn.close()
        self._count(forwarded=1, rows_forwarded=body.count(b"\n") if method == "POST" else 0)
        return status, ({"Content-Type": ctype} if ctype else {}), data

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the store's clients expect

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k in _FORWARDED if (v := self.headers.get(k)) is not None}
                if proxy._slots is not None:
                    proxy._slots.acquire()
                try:
                    status, extra, data = proxy._answer(body, method, self.path, headers)
                except OSError as exc:
                    status, extra, data = 502, {}, f"upstream: {exc}".encode()
                finally:
                    if proxy._slots is not None:
                        proxy._slots.release()
                self.send_response(status)
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if data:
                    self.wfile.write(data)

            def do_POST(self) -> None:
                self._serve("POST")

            def do_GET(self) -> None:
                self._serve("GET")

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
