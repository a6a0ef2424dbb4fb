"""An HTTP proxy in front of the store that can hold writes, so a test knows work is in flight.

`StoreGate(store_url)` forwards every request to the store. `hold_after(n)` lets the next `n`
write requests through and holds every later one (the caller sees no answer) until `release()`;
`wait_held(k)` blocks until `k` writes are being held. A gateway whose write is held has taken
those messages from the broker and cannot have acknowledged them: that is the precondition a
kill or restart test needs, reached by an event instead of by timing.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

WRITE_PATHS = ("/api/v2/write", "/write")
#: Headers that describe one hop of the connection, not the request.
_HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "host", "content-length"})


class StoreGate:
    """A forwarding proxy on a free loopback port whose write requests can be held and released."""

    def __init__(self, store_url: str, *, timeout_s: float = 30.0) -> None:
        upstream = urllib.parse.urlsplit(store_url)
        self._upstream = (upstream.hostname or "127.0.0.1", upstream.port or 80)
        self._timeout_s = timeout_s
        self._changed = threading.Condition()
        self._allowance: int | None = None  # None: let everything through
        self.held = 0
        self.passed = 0
        gate = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                gate._forward(self)

            def do_POST(self) -> None:  # noqa: N802
                gate._forward(self)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # the test's output stays readable

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def hold_after(self, writes: int) -> None:
        """Let the next `writes` write requests through, then hold every later one."""
        with self._changed:
            self._allowance = writes
            self._changed.notify_all()

    def release(self) -> None:
        """Forward the held writes and every later one."""
        with self._changed:
            self._allowance = None
            self._changed.notify_all()

    def wait_held(self, writes: int = 1, timeout_s: float = 60.0) -> bool:
        """Block until at least `writes` write requests are being held."""
        with self._changed:
            return self._changed.wait_for(lambda: self.held >= writes, timeout_s)

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _admit(self, path: str) -> None:
        """Wait at the gate if this is a write and the allowance is spent."""
        if not path.startswith(WRITE_PATHS):
            return
        with self._changed:
            if self._allowance is not None and self._allowance <= 0:
                self.held += 1
                self._changed.notify_all()
                self._changed.wait_for(lambda: self._allowance is None or self._allowance > 0)
                self.held -= 1
            if self._allowance is not None:
                self._allowance -= 1
            self.passed += 1
            self._changed.notify_all()

    def _forward(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        self._admit(request.path)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        upstream = http.client.HTTPConnection(*self._upstream, timeout=self._timeout_s)
        try:
            upstream.request(request.command, request.path, body=body, headers=headers)
            answer = upstream.getresponse()
            payload = answer.read()
            request.send_response(answer.status, answer.reason)
            for key, value in answer.getheaders():
                if key.lower() not in _HOP_HEADERS:
                    request.send_header(key, value)
            request.send_header("Content-Length", str(len(payload)))
            request.end_headers()
            request.wfile.write(payload)
        except OSError:
            pass  # the client went away while its write was held (it was killed): nothing to answer
        finally:
            upstream.close()
