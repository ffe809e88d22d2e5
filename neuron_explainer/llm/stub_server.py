"""A loopback stub of an OpenAI-compatible server: chat completions after a fixed latency, nothing else.

For measuring the HTTP path's concurrency (benchmarks/http_load.py) and testing replica pools without a
model: every POST to `.../chat/completions` sleeps `latency` seconds in its own thread, then answers one
short choice per requested sample (or the configured error status). Standard library only. Run it as a
separate process so it does not compete with the client for the interpreter:

    python -m neuron_explainer.llm.stub_server --latency 0.1 [--port 0]

prints `http://127.0.0.1:<port>/v1` once it listens.
"""

from __future__ import annotations

import argparse
import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class StubServer(http.server.ThreadingHTTPServer):
    """Chat completions after `latency` seconds; `fail_status` (when set) answers every request with that error."""

    daemon_threads = True
    request_queue_size = 1024
    """Listen backlog: a burst of new connections must not be dropped (the default is 5)."""

    def __init__(self, latency: float, port: int = 0, fail_status: int | None = None) -> None:
        self.latency, self.fail_status = latency, fail_status
        self.posts = 0
        """Requests received."""
        self.connections = 0
        """TCP connections accepted (a client that reuses its connections opens few)."""
        self.active = 0
        self.peak = 0
        """Most requests outstanding at once since the last `stats()`."""
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", port), StubHandler)

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>/v1`."""
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def enter(self, delta: int) -> None:
        """Count a request starting (+1) or finished (-1); handler threads run at once."""
        with self._lock:
            if delta > 0:
                self.posts += 1
            self.active += delta
            self.peak = max(self.peak, self.active)

    def connected(self) -> None:
        """Count one connection accepted."""
        with self._lock:
            self.connections += 1

    def stats(self) -> dict[str, int]:
        """Requests received and the most outstanding at once; starts counting the peak anew."""
        with self._lock:
            out = {"posts": self.posts, "peak": self.peak}
            self.peak = self.active
        return out


class StubHandler(http.server.BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive, as the openai client reuses connections."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    """Headers and body go out in two writes; with Nagle's algorithm the body would wait for the client's
    delayed acknowledgement (about 40 ms on Linux)."""
    server: StubServer

    def setup(self) -> None:
        """Count the connection."""
        super().setup()
        self.server.connected()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """Stay quiet: thousands of requests."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        """Answer a chat completion after the latency; anything else is a 404."""
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.server.enter(+1)
        try:
            time.sleep(self.server.latency)
        finally:
            self.server.enter(-1)
        if self.server.fail_status is not None:
            self.reply(self.server.fail_status, {"error": {"message": "stub failure", "type": "stub"}})
        elif not self.path.endswith("/chat/completions"):
            self.reply(404, {"error": {"message": f"no {self.path} here", "type": "stub"}})
        else:
            self.reply(200, chat_answer(body))

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        """`.../stats`: the server's counts (see StubServer.stats), for a benchmark in another process."""
        if self.path.endswith("/stats"):
            self.reply(200, self.server.stats())
        else:
            self.reply(404, {"error": {"message": f"no {self.path} here", "type": "stub"}})

    def reply(self, status: int, payload: dict) -> None:
        """Send `payload` as JSON with a length, so the connection stays open."""
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def chat_answer(body: dict) -> dict:
    """A well-formed chat completion: `n` choices, each echoing the last message's length."""
    messages = body.get("messages") or [{"content": ""}]
    text = f"stub answer to {len(messages[-1].get('content', ''))} characters"
    choices = [
        {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        for i in range(int(body.get("n", 1)))
    ]
    return {
        "id": "stub",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "stub"),
        "choices": choices,
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@contextmanager
def serve_stub(latency: float, fail_status: int | None = None) -> Iterator[StubServer]:
    """Run a StubServer in a background thread of this process (for tests); stopped on exit."""
    server = StubServer(latency, fail_status=fail_status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    """Serve until killed; print the base URL once listening."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.1, help="seconds each request takes")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    args = parser.parse_args()
    server = StubServer(args.latency, args.port)
    print(server.base_url, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
